"""What the daemon writes into a submission as its job moves: status, results, errors.

The submission folder is the source of truth (docs/ARCHITECTURE.md, "On disk"): its
``results/grade.vmr`` says queued, running or error, results pulled from a tester land
in ``results/``, and a job given up writes every reason into
``results/vmchecker-stderr.vmr``. When results land, the final ``grade.vmr`` is
written here and nowhere else, by :func:`vmchecker.evidence.judge` from the tester's
``result.json`` and the tests' grade lines: no points without evidence. Every write
holds the assignment's repository lock, so a recheck moving ``results/`` aside never
races a result landing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vmchecker import evidence, fsutil, grades
from vmchecker.contract import GRADE_VMR, RESULT_JSON, VMCHECKER_STDERR, SubmissionStatus
from vmchecker.repo import Repository, Submission
from vmchecker.storer.courses import Course
from vmchecker.storer.journal import Job

log = logging.getLogger(__name__)

MAX_RESULT_JSON = 1024 * 1024   # a larger result.json is no account of a run, it is an attack


def submission_of(course: Course, job: Job) -> Submission:
    """The submission a job grades (NotFound if it vanished from the repository)."""
    return Repository(course.config).submission(job.assignment, job.account, job.submission)


@contextlib.contextmanager
def _waiting(course: Course, job: Job, claim: bool = False) -> Iterator[Submission | None]:
    """The job's submission under the assignment's lock, or None when it no longer waits
    for this job (a recheck since has cleared or replaced its job id). ``claim``: the
    job is about to become the one it waits for, so no check."""
    repo = Repository(course.config)
    with repo.lock(job.assignment):
        sub = repo.submission(job.assignment, job.account, job.submission)
        if not claim and sub.info.job_id != job.id:
            log.info("job %s: %s waits for job %r now; left alone", job.id, sub.path.name, sub.info.job_id)
            yield None
        else:
            yield sub


def set_status(course: Course, job: Job, status: SubmissionStatus, expect: tuple[SubmissionStatus, ...], *,
               claim: bool = False, **info: str) -> bool:
    """Move the submission to ``status`` (recording job facts such as the tester), only
    from one of the ``expect`` states and only while it waits for this job, so a late
    writer never undoes a newer state (a fast tester's grade, a recheck). ``claim``
    makes this job the one the submission waits for. Returns whether it moved."""
    with _waiting(course, job, claim) as sub:
        if sub is None:
            return False
        if sub.status() not in expect:
            log.info("job %s: %s stays %s (not moved to %s)", job.id, sub.path.name, sub.status(), status)
            return False
        if claim:
            info["job_id"] = job.id
        if info:
            sub = sub.update_info(**info)
        sub.set_status(status)
    return True


def land_results(course: Course, job: Job, fetch: Callable[[Path], object],
                 on_graded: Callable[[], object] | None = None) -> Submission | None:
    """Pull a job's result files into the submission's ``results/``, write its final
    ``grade.vmr`` and update grades.

    ``fetch(folder)`` downloads into a private folder next to ``results/``, outside the
    repository lock (it may take a while); the files move into ``results/`` under the
    lock, and only if the submission still waits for this job (a recheck since the
    job was sent has cleared its job id: then the results are dropped and None returned).
    The tester's ``grade.vmr`` holds only the tests' lines: it is weighed with its
    ``result.json``, never moved in as the grade. ``on_graded`` is called as soon as the
    final ``grade.vmr`` is durable (the job's timeline: graded)."""
    assignment = course.config.assignment(job.assignment)
    machine = course.config.machines.get(assignment.machine)
    incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{job.id}-", dir=submission_of(course, job).path))
    try:
        fetch(incoming)
        with _waiting(course, job) as sub:
            if sub is None:
                return None
            verdict = evidence.judge(read_result(incoming / RESULT_JSON), _read_text(incoming / GRADE_VMR),
                                     assignment, check=bool(machine and machine.check_script))
            (incoming / GRADE_VMR).unlink(missing_ok=True)
            sub.results_dir.mkdir(exist_ok=True)
            for path in incoming.iterdir():
                os.replace(path, sub.results_dir / path.name)
            fsutil.write_atomic(sub.results_dir / GRADE_VMR, verdict.text)
            fsutil.fsync_dir(sub.results_dir)
            if on_graded is not None:
                on_graded()
        if verdict.reason:
            log.info("job %s: %s scores points_on_failure: %s", job.id, sub.path.name, verdict.reason)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    _update_grades(course, sub)
    return sub


def record_error(course: Course, job: Job, reasons: list[str] | tuple[str, ...]) -> Submission | None:
    """The job was given up: status error, every reason in vmchecker-stderr.vmr."""
    with _waiting(course, job) as sub:
        if sub is None:
            return None
        sub.results_dir.mkdir(exist_ok=True)
        stderr = sub.results_dir / VMCHECKER_STDERR
        previous = stderr.read_text(errors="replace") if stderr.exists() else ""
        text = "The submission could not be tested:\n" + "".join(f"- {r}\n" for r in reasons)
        fsutil.write_atomic(stderr, (previous + "\n" if previous.strip() else "") + text)
        sub.set_status(SubmissionStatus.ERROR)
    _update_grades(course, sub)
    log.warning("job %s (%s/%s/%s) ended in error", job.id, job.assignment, job.account, job.submission)
    return sub


def read_result(path: Path) -> Any:
    """The tester's ``result.json`` as parsed JSON; None when it is missing, a link, too
    large or not JSON (which :func:`vmchecker.evidence.judge` takes as no evidence)."""
    try:
        if path.is_symlink() or path.stat().st_size > MAX_RESULT_JSON:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    """A result file as text (undecodable bytes replaced), None if it is absent."""
    try:
        return None if path.is_symlink() else path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _update_grades(course: Course, sub: Submission) -> None:
    try:
        grades.update(course.config, sub)
    except Exception:  # the grades table is derived and rebuilt on demand: never fatal
        log.exception("could not update the grades database of %s", course.id)
