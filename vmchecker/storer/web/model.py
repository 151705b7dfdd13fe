"""What the pages and the API show, computed once for both: plain dataclasses built
from the course config, the repository and the daemon's queue.

Access rules live here too, so the pages and the API cannot disagree:

* only the course's students and admins see a course at all (:func:`takes_part`,
  ``CourseConfig.admits``): it is not in their list of courses, and its pages say 403;
* a student sees the assignments that are not hidden, and only their own submissions
  (a team's member: the team's, :mod:`vmchecker.teams`);
* a course admin (``course.admins``) sees hidden assignments, everyone's submissions
  and grades, and may recheck;
* ``course.public_results`` lets every student of the course see the grades table
  (grades only: another student's results and sources stay private);
* a submission's timeline (when each stage of its job happened, on which machine's clock)
  is shown to the course's admins only: it names testers and tells how the service is
  doing, which is the staff's business; a student sees the status and the results.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vmchecker import grades, penalty
from vmchecker.assignments import Assignment
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime
from vmchecker.contract import GRADE_VMR, WAITING_STATUSES, SubmissionStatus
from vmchecker.course_access import GroupCheck
from vmchecker.repo import Repository, Submission
from vmchecker.storer.web.jobs import JobKey, QueueInfo, TimelineView

log = logging.getLogger(__name__)

VMR_CAP = 64 * 1024  # bytes of one .vmr shown; the rest is cut with a visible marker
Timelines = Callable[[list[str]], dict[str, TimelineView]]   # job ids -> their timelines (the daemon's)


# --------------------------------------------------------------------------- access


def takes_part(course: CourseConfig, user: str, in_group: GroupCheck | None) -> bool:
    """May ``user`` see the course at all (a student or an admin of it)? ``in_group``
    answers for an LDAP group of students (None: the web has no LDAP)."""
    return course.admits(user, in_group)


def is_admin(course: CourseConfig, user: str) -> bool:
    return course.is_admin(user)


def can_see_account(course: CourseConfig, user: str, account: str) -> bool:
    """``account`` is a repository folder's owner: a student's own, or a team's that
    ``user`` is a member of (``Teams.may_see``)."""
    return is_admin(course, user) or course.teams.may_see(user, account)


def can_see_grades(course: CourseConfig, user: str) -> bool:
    return is_admin(course, user) or course.course.public_results


def visible_assignments(course: CourseConfig, user: str) -> list[Assignment]:
    shown = [a for a in course.assignments.values() if not a.hidden or is_admin(course, user)]
    return sorted(shown, key=lambda a: (a.order, a.id))


def find_assignment(course: CourseConfig, user: str, assignment_id: str) -> Assignment | None:
    """The assignment if ``user`` may see it; a hidden one is as absent as a missing one."""
    task = course.assignments.get(assignment_id)
    if task is None or (task.hidden and not is_admin(course, user)):
        return None
    return task


def grades_visible(course: CourseConfig, task: Assignment, user: str, now: dt.datetime) -> bool:
    """Grades of an assignment are shown to students after its deadline unless the
    assignment has ``show_grades_before_deadline``; admins always see them."""
    return is_admin(course, user) or task.show_grades_before_deadline or now >= task.deadline


# --------------------------------------------------------------------------- assignments


@dataclass(frozen=True)
class AssignmentView:
    id: str
    title: str
    deadline: str
    time_left: str
    deadline_passed: bool
    statement: str                 # an http(s) URL or ""
    penalty_rules: str
    hidden: bool
    total_points: float
    max_submission_size: int


def safe_url(url: str) -> str:
    """Only http(s) links are shown: ``javascript:`` in a config must not become a link."""
    return url if urlsplit(url).scheme in ("http", "https") else ""


def penalty_rules(task: Assignment) -> str:
    if task.hard_deadline:
        return "Hard deadline: uploads after the deadline are refused."
    weights = [penalty.format_points(w) for w in task.penalty_weights]
    days = [f"day {i}: {w}" for i, w in enumerate(weights[:-1], 1)]
    days.append(f"day {len(weights)} and after: {weights[-1]} per day" if len(weights) > 1
                else f"{weights[-1]} per day late")
    return (f"{', '.join(days)}; at most {penalty.format_points(task.penalty_limit)} points in all."
            " Holidays do not count.")


def rough_duration(delta: dt.timedelta) -> str:
    """The two largest units: ``3 days 4 hours``, ``5 minutes 2 seconds``."""
    words = penalty.format_duration(delta).split()
    return " ".join(words[:4])


def time_left(deadline: dt.datetime, now: dt.datetime) -> str:
    if deadline > now:
        return f"{rough_duration(deadline - now)} left"
    return f"passed {rough_duration(now - deadline)} ago"


def assignment_view(task: Assignment, now: dt.datetime) -> AssignmentView:
    return AssignmentView(
        id=task.id, title=task.title or task.id, deadline=format_datetime(task.deadline),
        time_left=time_left(task.deadline, now), deadline_passed=now > task.deadline,
        statement=safe_url(task.statement), penalty_rules=penalty_rules(task), hidden=task.hidden,
        total_points=task.total_points, max_submission_size=task.max_submission_size)


# --------------------------------------------------------------------------- submissions


@dataclass(frozen=True)
class Vmr:
    name: str
    text: str
    size: int
    truncated: bool
    ignored: bool = False          # listed in ignored_vmrs: shown to admins only


@dataclass(frozen=True)
class SubmissionView:
    name: str
    account: str
    upload_time: str
    status: str
    waiting: bool
    queue: QueueInfo | None
    results: list[Vmr] = field(default_factory=list)
    grade: str | None = None       # "7.5 / 10"
    reason: str = ""               # beside the grade: why points were lost, or that a grader is awaited
    status_label: str = ""         # the status in words ("waiting for a grader" for a submit-only upload)
    grade_notes: str = ""          # grade.vmr: the lines of the tests, of vmchecker and of graders
    breakdown: list[tuple[str, str]] = field(default_factory=list)
    grade_hidden: bool = False     # graded, but not shown before the deadline
    current: bool = False
    submitted_by: str = ""         # a team's submission: the member who uploaded it
    timeline: TimelineView | None = None   # admins only: when each stage of its job happened


def read_vmr(path: Path, cap: int = VMR_CAP) -> tuple[str, int, bool]:
    """At most ``cap`` bytes of a result file as text, its size and whether it was cut."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(cap)
    return raw.decode("utf-8", errors="replace"), size, size > cap


def results(sub: Submission, task: Assignment, admin: bool) -> list[Vmr]:
    """The submission's ``*.vmr`` files but grade.vmr, by name; ignored ones only for admins."""
    if not sub.results_dir.is_dir():
        return []
    shown = []
    for path in sorted(sub.results_dir.glob("*.vmr")):
        if path.name == GRADE_VMR or path.is_symlink() or not path.is_file():
            continue
        ignored = path.name in task.ignored_vmrs
        if ignored and not admin:
            continue
        text, size, cut = read_vmr(path)
        shown.append(Vmr(path.name, text, size, cut, ignored))
    return shown


def submission_view(course: CourseConfig, task: Assignment, sub: Submission, user: str,
                    jobs: dict[JobKey, QueueInfo] | None, now: dt.datetime, current: bool,
                    timeline: TimelineView | None = None) -> SubmissionView:
    status = sub.status()
    waiting = status in WAITING_STATUSES and not task.submit_only   # submit-only: graded by hand, no queue
    queue = (jobs or {}).get((sub.assignment, sub.account, sub.name)) if waiting else None
    by_hand = task.submit_only and status in WAITING_STATUSES
    view = dict(name=sub.name, account=sub.account, upload_time=format_datetime(sub.upload_time),
                submitted_by=sub.submitted_by if sub.submitted_by != sub.account else "",
                status=status.value, waiting=waiting, queue=queue, current=current,
                status_label=penalty.WAITING_FOR_GRADER if by_hand else status.value,
                results=[] if waiting else results(sub, task, is_admin(course, user)),
                timeline=timeline if is_admin(course, user) else None)
    if status is SubmissionStatus.DONE:
        if grades_visible(course, task, user, now):
            result = penalty.compute(task, course.course.holidays, sub.upload_time, sub.grade_text())
            text = sub.grade_text() or ""
            view.update(grade=f"{penalty.format_points(result.grade or 0)} / {penalty.format_points(task.total_points)}",
                        reason=result.reason or "",
                        grade_notes=text.strip() if text.strip() != SubmissionStatus.DONE.value else "",
                        breakdown=penalty.breakdown(result))
        else:
            view.update(grade_hidden=True)
    return SubmissionView(**view)


def submissions(course: CourseConfig, task: Assignment, account: str, user: str,
                jobs: dict[JobKey, QueueInfo] | None, now: dt.datetime,
                timelines: Timelines | None = None) -> list[SubmissionView]:
    """Every submission of ``account`` for ``task``, newest first. The caller checked access.
    ``timelines`` is asked (for an admin only) for the timelines of their jobs."""
    repo = Repository(course)
    history = repo.history(task.id, account)
    current = repo.current(task.id, account)
    found: dict[str, TimelineView] = {}
    if timelines is not None and is_admin(course, user):
        found = timelines([sub.info.job_id for sub in reversed(history) if sub.info.job_id])
    return [submission_view(course, task, sub, user, jobs, now, current is not None and sub.path == current.path,
                            found.get(sub.info.job_id) if sub.info.job_id else None)
            for sub in reversed(history)]


def find_submission(course: CourseConfig, task: Assignment, account: str, name: str) -> Submission:
    """One stored submission by folder name; NotFound otherwise."""
    return Repository(course).submission(task.id, account, name)


# --------------------------------------------------------------------------- grades table


@dataclass(frozen=True)
class GradesTable:
    assignments: list[AssignmentView]
    accounts: list[str]
    cells: dict[tuple[str, str], str]      # (account, assignment) -> grade or status
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # beside a grade: admins only


def grades_table(course: CourseConfig, user: str, now: dt.datetime) -> GradesTable:
    """Every account's current standing, computed from the repository (the source of truth)."""
    tasks = visible_assignments(course, user)
    ids = {t.id: t for t in tasks}
    cells: dict[tuple[str, str], str] = {}
    reasons: dict[tuple[str, str], str] = {}
    admin = is_admin(course, user)   # a reason tells of results, which stay private
    for row in grades.collect(course):
        task = ids.get(row.assignment)
        if task is None:
            continue
        key = (row.account, row.assignment)
        if row.grade is not None and grades_visible(course, task, user, now):
            cells[key] = penalty.format_points(row.grade)
            if admin and row.reason:
                reasons[key] = row.reason
        elif row.grade is not None:
            cells[key] = "graded"
        else:
            cells[key] = penalty.WAITING_FOR_GRADER if row.reason == penalty.WAITING_FOR_GRADER else row.status
    accounts = sorted({account for account, _ in cells})
    return GradesTable([assignment_view(t, now) for t in tasks], accounts, cells, reasons)
