"""Settle the sends a killed daemon left in doubt, at once, when the daemon starts.

The dispatcher journals the intent to send a job before the upload and the
confirmation after the rename on the tester (:mod:`vmchecker.storer.journal`). A job
sent but never confirmed may be on its tester or not: the daemon died in between. Its
notify deadline would settle it, but that is the last resort and may be a quarter of
an hour away. So at start-up each such job is looked for on its tester over SFTP:

* its bundle is in the tester's queue, or its results in ``done/<job>/``: the send
  went through; it is confirmed and its notify awaited as usual;
* neither: the bundle never arrived; the job is queued again at once, without
  counting a failed attempt or blaming the tester (the daemon died, not the tester);
* the tester cannot be reached: the job is left as it is, for the notify deadline.

A ``done/<job>/`` on a tester the job already failed on may be that earlier attempt's;
then it proves nothing and the job is sent again: the tester treats a bundle of a job
whose results still wait to be notified as the same job, never runs it twice.
"""

from __future__ import annotations

import logging

from vmchecker.contract import SubmissionStatus
from vmchecker.errors import JobStateError, VmcheckerError
from vmchecker.storer import outcomes
from vmchecker.storer.courses import Course, Courses, tester_done_dir
from vmchecker.storer.journal import Job, Journal

log = logging.getLogger(__name__)


def resolve_all(journal: Journal, courses: Courses) -> dict[str, int]:
    """Settle every job in doubt; how many were ``confirmed``, ``requeued`` and ``left``."""
    counts = {"confirmed": 0, "requeued": 0, "left": 0}
    for job in journal.in_doubt():
        try:
            outcome = resolve(journal, courses, job)
        except JobStateError:
            outcome = "left"   # moved on meanwhile (a notify arrived): nothing in doubt any more
        except VmcheckerError as exc:
            log.warning("job %s: cannot tell whether %s holds it (%s); its notify deadline will settle it",
                        job.id, job.tester, exc.message)
            outcome = "left"
        counts[outcome] += 1
    if counts["confirmed"] or counts["requeued"]:
        log.info("sends left in doubt: %(confirmed)d on their tester, %(requeued)d queued again,"
                 " %(left)d left to their deadline", counts)
    return counts


def resolve(journal: Journal, courses: Courses, job: Job) -> str:
    """Settle one job in doubt: ``confirmed``, ``requeued`` or ``left`` (its tester did not
    answer when the daemon started). VmcheckerError when its tester cannot be asked."""
    course = courses.get(job.course)
    tester = course.config.testers.get(job.tester or "")
    if tester is None:
        return "left"   # a tester the course no longer has: the deadline makes it a failure
    link = course.link(tester.name)
    if link.last_ok is None or link.last_error is not None:
        return "left"   # did not answer the start-up probe: not worth a connect timeout per job
    found = link.holds(job.id, tester_done_dir(tester))
    if found == "done" and tester.name in job.failed_on:
        found = None   # may be the results of an earlier attempt there
    if found:
        journal.confirm_sent(job.id)
        log.info("job %s: its bundle was already %s on %s", job.id, found, tester.name)
        return "confirmed"
    send_again(journal, course, job, f"neither in {tester.name}'s queue nor in its done folder")
    return "requeued"


def send_again(journal: Journal, course: Course, job: Job, why: str) -> None:
    """An unconfirmed send that never reached its tester: queued again at once, no attempt
    counted, the tester not blamed (JobStateError if it moved on meanwhile)."""
    journal.requeue_unsent(job.id, why)
    if job.tester:
        course.scheduler.forget(job.tester, job.id)
    try:
        outcomes.set_status(course, job, SubmissionStatus.QUEUED, (SubmissionStatus.RUNNING, SubmissionStatus.QUEUED))
    except VmcheckerError as exc:
        log.warning("job %s: could not set status queued: %s", job.id, exc.message)
