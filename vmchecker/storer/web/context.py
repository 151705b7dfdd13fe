"""Per-request helpers shared by the pages and the API: the app's settings, the
course and assignment named in the URL (404 otherwise), the clock and the queue."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from flask import abort, current_app, g

from vmchecker import config
from vmchecker.config import Assignment, CourseConfig
from vmchecker.errors import ConfigError, NotFound
from vmchecker.storer.web import jobs, model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebSettings:
    global_config: Path
    daemon_timeout: float = 2.0      # status() and queue_task(): a page never waits longer


def settings() -> WebSettings:
    return current_app.extensions["vmchecker_settings"]


def now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


def all_courses() -> list[CourseConfig]:
    """Every course of the global file that loads; a broken one is logged and left out."""
    found = []
    glob = config.load_global(settings().global_config)
    for course_id in sorted(glob.courses):
        try:
            found.append(config.find_course(course_id, glob.path))
        except (ConfigError, NotFound) as exc:
            log.error("course %s left out: %s", course_id, exc.message)
    return found


def course_or_404(course_id: str) -> CourseConfig:
    """The course, loaded fresh (an edited config shows at once); 404 if unknown."""
    try:
        return config.find_course(course_id, settings().global_config)
    except NotFound:
        abort(404, description=f"There is no course {course_id!r}.")


def assignment_or_404(course: CourseConfig, assignment_id: str) -> Assignment:
    task = model.find_assignment(course, g.user, assignment_id)
    if task is None:
        abort(404, description=f"Course {course.id} has no assignment {assignment_id!r}.")
    return task


def account_or_403(course: CourseConfig, account: str) -> str:
    if not model.can_see_account(course, g.user, account):
        abort(403, description="You may only see your own submissions.")
    return account


def admin_or_403(course: CourseConfig) -> None:
    if not model.is_admin(course, g.user):
        abort(403, description="Only the course's admins may do this.")


def queue_jobs(course: CourseConfig) -> dict[jobs.JobKey, jobs.QueueInfo] | None:
    return jobs.daemon_jobs(course, settings().daemon_timeout)
