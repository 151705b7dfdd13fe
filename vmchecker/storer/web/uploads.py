"""An upload from the web: the same :func:`vmchecker.submit.submit` as
``vmchecker-submit``, then ``queue_task`` (never for a ``submit_only`` assignment, which
a grader grades by hand).

A refusal (:class:`SubmissionRefused`, :class:`ArchiveError`) carries a message meant
for the student and is shown as it is. Any other error is the server's problem and its
message may name server paths: the student reads a generic sentence, the log the detail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from werkzeug.datastructures import FileStorage

from vmchecker.config import CourseConfig
from vmchecker.errors import SubmissionRefused, VmcheckerError
from vmchecker.queueing import never_tested
from vmchecker.repo import Submission
from vmchecker.storer.web.jobs import Queuer
from vmchecker.submit import recheck, submit

log = logging.getLogger(__name__)

UPLOAD_FAILED = ("Upload failed: the server could not store your archive. Try again later,"
                 " and tell the course's staff if it keeps failing.")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    submission: Submission | None = None
    queued: bool = False


def _queued_message(queuer: Queuer, what: str) -> str:
    if queuer.queued:
        return f"{what} It is queued for testing."
    return (f"{what} The testing service is not answering right now; your submission is kept"
            " and will be tested when the service is back.")


def upload(course: CourseConfig, assignment: str, account: str, file: FileStorage | None,
           timeout: float) -> Outcome:
    """Store the uploaded file as ``account``'s submission and queue it."""
    if file is None or not file.filename:
        return Outcome(False, "Choose an archive (zip or tar.gz) to upload.")
    task = course.assignments.get(assignment)
    limit = task.max_submission_size if task else 0
    data = file.stream.read(limit + 1)   # never more than one byte over the limit in memory
    if task is not None and len(data) > limit:
        return Outcome(False, f"Upload refused: the archive is larger than {limit} bytes,"
                              f" the most {assignment} accepts.")
    queuer = Queuer(course, timeout)
    try:
        sub = submit(course, assignment, account, data, notify=queuer)
    except SubmissionRefused as exc:   # ArchiveError included: both are meant for the student
        return Outcome(False, f"Upload refused: {exc.message}")
    except VmcheckerError as exc:
        log.error("upload of %s/%s by %s failed: %s", course.id, assignment, account, exc.message)
        return Outcome(False, UPLOAD_FAILED)
    if never_tested(course, assignment):
        return Outcome(True, "Your archive was saved. This assignment is not tested automatically:"
                             " a grader will grade it.", sub)
    return Outcome(True, _queued_message(queuer, "Your archive was saved."), sub, bool(queuer.queued))


def recheck_submission(course: CourseConfig, sub: Submission, timeout: float) -> Outcome:
    if never_tested(course, sub.assignment):   # a recheck would only put the grader's grade aside
        return Outcome(False, f"{sub.assignment} is graded by hand, never tested: nothing to recheck.", sub)
    queuer = Queuer(course, timeout)
    sub = recheck(sub, notify=queuer)
    return Outcome(True, _queued_message(queuer, f"Submission {sub.name} of {sub.account} will be tested again."),
                   sub, bool(queuer.queued))
