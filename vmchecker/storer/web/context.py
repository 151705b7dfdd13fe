"""Per-request helpers shared by the pages and the API: the app's settings, the
course and assignment named in the URL (404 otherwise; 403 for a course the user
does not take part in), the clock and the queue."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from flask import abort, current_app, g

from vmchecker import config
from vmchecker.assignments import Assignment
from vmchecker.config import CourseConfig
from vmchecker.course_access import GroupCheck
from vmchecker.errors import ConfigError, NotFound
from vmchecker.storer.web import auth, jobs, model

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


def group_check() -> GroupCheck | None:
    """How this app asks whether an account is in an LDAP group (None: no LDAP)."""
    ldap = auth.authenticator().ldap
    return ldap.in_group if ldap is not None else None


def my_courses() -> list[CourseConfig]:
    """The courses the logged-in user takes part in, as a student or an admin."""
    return [c for c in all_courses() if model.takes_part(c, g.user, group_check())]


def course_or_404(course_id: str) -> CourseConfig:
    """The course, loaded fresh (an edited config shows at once); 404 if unknown, 403
    if the logged-in user is neither one of its students nor an admin. Every course
    page and API call starts here, so none can forget the check."""
    try:
        course = config.find_course(course_id, settings().global_config)
    except NotFound:
        abort(404, description=f"There is no course {course_id!r}.")
    if not model.takes_part(course, g.user, group_check()):
        log.info("%s is not a student of %s: refused", g.user, course.id)
        abort(403, description=f"You ({g.user}) are not a student of course {course.id}."
                               " If you should be, ask the course's staff to add your account.")
    return course


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


def timelines(course: CourseConfig) -> model.Timelines:
    """How the pages ask the daemon for the timelines of a course's jobs."""
    timeout = settings().daemon_timeout
    return lambda job_ids: jobs.daemon_timelines(course, job_ids, timeout)
