"""What the daemon writes into a submission as its job moves: status, results, errors.

The submission folder is the source of truth (DESIGN.md section 5): its
``results/grade.vmr`` says queued, running, done or error, results pulled from a
tester land in ``results/``, and a job given up writes every reason into
``results/vmchecker-stderr.vmr``. Every write holds the assignment's repository lock,
so a recheck moving ``results/`` aside never races a result landing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vmchecker import fsutil, grades
from vmchecker.repo import Repository, Status, Submission
from vmchecker.storer.courses import Course
from vmchecker.storer.journal import Job

log = logging.getLogger(__name__)

VMCHECKER_STDERR = "vmchecker-stderr.vmr"


def submission_of(course: Course, job: Job) -> Submission:
    """The submission a job grades (NotFound if it vanished from the repository)."""
    return Repository(course.config).submission(job.assignment, job.account, job.submission)


def set_status(course: Course, job: Job, status: Status, **info: str) -> Submission:
    """Write the status word (and job facts such as the tester) into the submission."""
    repo = Repository(course.config)
    with repo.lock(job.assignment):
        sub = repo.submission(job.assignment, job.account, job.submission)
        sub.set_status(status)
        if info:
            sub = sub.update_info(**info)
    return sub


def land_results(course: Course, job: Job, fetch: Callable[[Path], object]) -> Submission:
    """Pull a job's result files into the submission's ``results/`` and update grades.

    ``fetch(results_dir)`` downloads into that folder (all or nothing)."""
    repo = Repository(course.config)
    with repo.lock(job.assignment):
        sub = repo.submission(job.assignment, job.account, job.submission)
        fetch(sub.results_dir)
        if sub.grade_text() is None or sub.status() in (Status.SAVED, Status.QUEUED, Status.RUNNING):
            sub.set_status(Status.DONE)
    _update_grades(course, sub)
    return sub


def record_error(course: Course, job: Job, reasons: list[str] | tuple[str, ...]) -> Submission:
    """The job was given up: status error, every reason in vmchecker-stderr.vmr."""
    repo = Repository(course.config)
    with repo.lock(job.assignment):
        sub = repo.submission(job.assignment, job.account, job.submission)
        sub.results_dir.mkdir(exist_ok=True)
        stderr = sub.results_dir / VMCHECKER_STDERR
        previous = stderr.read_text(errors="replace") if stderr.exists() else ""
        text = "The submission could not be tested:\n" + "".join(f"- {r}\n" for r in reasons)
        fsutil.write_atomic(stderr, (previous + "\n" if previous.strip() else "") + text)
        sub.set_status(Status.ERROR)
    _update_grades(course, sub)
    log.warning("job %s (%s/%s/%s) ended in error", job.id, job.assignment, job.account, job.submission)
    return sub


def _update_grades(course: Course, sub: Submission) -> None:
    try:
        grades.update(course.config, sub)
    except Exception:  # the grades table is derived and rebuilt on demand: never fatal
        log.exception("could not update the grades database of %s", course.id)
