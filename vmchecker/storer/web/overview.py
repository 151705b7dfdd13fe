"""The picture of a course's grades: per assignment, how its submissions stand (how many
were submitted, late, failed to build, still wait, ended in error) and the distribution
of their grades; per account, every submission's grade over time.

Computed from the repository, the source of truth, as the grades table is: each
current submission once (a submission, not an account, is what was graded: a team's
counts once), every submission of an account (for a team's member, the team's) for its
history. The same visibility rules as everywhere
(:mod:`.model`): an assignment hidden from the user is left out, and grades an
assignment does not show yet (before its deadline, to a student) are neither counted in
a histogram nor drawn; the counts of submissions say nothing about anyone's results.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

from markupsafe import Markup

from vmchecker import evidence, grades, penalty
from vmchecker.assignments import Assignment
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime
from vmchecker.contract import RESULT_JSON, SubmissionStatus
from vmchecker.errors import VmcheckerError
from vmchecker.repo import Repository, Submission
from vmchecker.storer.web import charts, model

log = logging.getLogger(__name__)

MAX_RESULT_JSON = 1024 * 1024


@dataclass(frozen=True)
class AssignmentStats:
    task: model.AssignmentView
    submitted: int = 0        # current submissions
    graded: int = 0
    late: int = 0             # uploaded after the deadline (late days > 0)
    failed_build: int = 0     # the tester's account says the build did not complete
    waiting: int = 0          # saved, queued, running, or waiting for a grader
    errors: int = 0           # the job was given up
    grades_shown: bool = False
    mean: str = ""
    median: str = ""
    histogram: Markup | None = None


def _current(course: CourseConfig, task: Assignment) -> Iterator[Submission]:
    """Every current submission of ``task``; a damaged folder is logged and skipped."""
    repository = Repository(course)
    for owner in repository.accounts(task.id):
        try:
            sub = repository.current(task.id, owner)
        except (VmcheckerError, OSError) as exc:
            log.warning("skipping %s/%s: %s", task.id, owner, exc)
            continue
        if sub is not None:
            yield sub


def build_failed(sub: Submission) -> bool:
    """Whether the tester's account of the run (``result.json``) says the build failed."""
    path = sub.results_dir / RESULT_JSON
    try:
        if path.is_symlink() or path.stat().st_size > MAX_RESULT_JSON:
            return False
        result = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    steps = result.get("steps") if isinstance(result, dict) else None
    return isinstance(steps, dict) and evidence.step_failure("build", steps.get("build")) is not None


def assignment_stats(course: CourseConfig, task: Assignment, user: str, now: dt.datetime) -> AssignmentStats:
    counts = dict(submitted=0, graded=0, late=0, failed_build=0, waiting=0, errors=0)
    found = []
    for sub in _current(course, task):
        rows = grades.rows_for(course, sub)   # none for a member's own upload the team's replaced
        if not rows:
            continue
        row = rows[0]                          # a team's submission counts once
        counts["submitted"] += 1
        counts["late"] += row.late_days > 0
        if row.grade is not None:
            counts["graded"] += 1
            found.append(row.grade)
        elif row.status == SubmissionStatus.ERROR:
            counts["errors"] += 1
        else:
            counts["waiting"] += 1
        counts["failed_build"] += build_failed(sub)
    shown = model.grades_visible(course, task, user, now)
    view = model.assignment_view(task, now)
    if not shown or not found:
        return AssignmentStats(view, **counts, grades_shown=shown)
    chart = charts.histogram(charts.grade_bins(found, task.ceiling),
                             f"Grades of {task.id}: {len(found)} graded, out of {penalty.format_points(task.ceiling)}")
    return AssignmentStats(view, **counts, grades_shown=True, mean=penalty.format_points(statistics.fmean(found)),
                           median=penalty.format_points(statistics.median(found)), histogram=chart)


def course_stats(course: CourseConfig, user: str, now: dt.datetime) -> list[AssignmentStats]:
    """The picture of every assignment ``user`` sees, in the course's order."""
    return [assignment_stats(course, task, user, now) for task in model.visible_assignments(course, user)]


# --------------------------------------------------------------------------- an account's history


@dataclass(frozen=True)
class Attempt:
    submission: str
    upload_time: str
    status: str
    grade: str = ""           # "7.5", or "" when not graded or not shown
    late_days: int = 0
    reason: str = ""


@dataclass(frozen=True)
class AssignmentHistory:
    task: model.AssignmentView
    attempts: list[Attempt] = field(default_factory=list)
    grades_shown: bool = False
    chart: Markup | None = None


def account_history(course: CourseConfig, account: str, user: str, now: dt.datetime) -> list[AssignmentHistory]:
    """Every submission of ``account`` per assignment ``user`` sees, oldest first, with
    its grade where the assignment shows grades to ``user``. The caller checked access."""
    repository = Repository(course)
    reasons = model.can_see_account(course, user, account)   # a reason tells of results: theirs and staff's
    found = []
    for task in model.visible_assignments(course, user):
        subs = repository.history(task.id, course.teams.owner(task.id, account))   # a member: the team's
        if not subs:
            continue
        shown = model.grades_visible(course, task, user, now)
        attempts, points = [], []
        for sub in subs:
            result = penalty.compute(task, course.course.holidays, sub.upload_time, sub.grade_text())
            when = format_datetime(sub.upload_time)
            graded = result.grade is not None and shown
            attempts.append(Attempt(sub.name, when, result.status.value,
                                    penalty.format_points(result.grade) if graded else "",
                                    result.late_days, (result.reason or "") if graded and reasons else ""))
            points.append(charts.Point(when, result.grade if graded else None))
        chart = None
        if shown and any(p.value is not None for p in points):
            chart = charts.grade_line(points, task.ceiling, f"Grades of {account} for {task.id}, in upload order")
        found.append(AssignmentHistory(model.assignment_view(task, now), attempts, shown, chart))
    return found
