"""Hand a stored submission to the storer daemon (used by the CLI and the web).

A submission is durable before the daemon hears of it, so a daemon that is down loses
nothing: the submission stays ``saved`` and the daemon queues every saved submission
when it starts. This is the one place that turns "daemon not answering" into that
message, and the one place every path to the daemon (``vmchecker-submit``,
``vmchecker-resubmit``, the web) passes: a ``submit_only`` assignment is stored and
graded by hand, so its submissions never reach the daemon at all.
"""

from __future__ import annotations

import logging

from vmchecker import rpc
from vmchecker.config import CourseConfig
from vmchecker.errors import RpcError
from vmchecker.repo import Submission

log = logging.getLogger(__name__)

NOT_QUEUED = ("the storer daemon did not answer ({reason}); the submission is saved and will be"
              " tested when the daemon is back")
SUBMIT_ONLY = "{assignment} is submit-only: it is never tested, a grader grades it by hand"


def never_tested(course: CourseConfig, assignment: str) -> bool:
    """Whether ``assignment`` is stored only (``submit_only``): never queued nor tested."""
    task = course.assignments.get(assignment)
    return task is not None and task.submit_only


def queue_submission(course: CourseConfig, sub: Submission, timeout: float = 10.0) -> tuple[str | None, str]:
    """Ask the daemon to test ``sub``: ``(job id, "")`` or ``(None, why it was not queued)``."""
    if never_tested(course, sub.assignment):
        return None, SUBMIT_ONLY.format(assignment=sub.assignment)
    try:
        job_id = rpc.Client(course.storer.daemon, timeout).queue_task(course.id, sub.assignment, sub.account,
                                                                      sub.name)
    except RpcError as exc:
        message = NOT_QUEUED.format(reason=exc.message)
        log.warning("%s/%s/%s: %s", sub.assignment, sub.account, sub.name, message)
        return None, message
    return str(job_id), ""
