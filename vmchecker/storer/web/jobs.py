"""The web's two calls to the storer daemon, both allowed to fail.

``queue_task`` after an upload or a recheck: if the daemon is down the submission
stays saved (the daemon queues every ``saved`` submission when it starts) and the page
says so. ``status()`` for queue positions and estimated finish times: if the daemon
is down, or answers something unexpected, waiting submissions show their status
without an estimate, never an error page.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from vmchecker.config import CourseConfig
from vmchecker.errors import VmcheckerError
from vmchecker.queueing import queue_submission
from vmchecker.repo import Submission
from vmchecker.rpc import Client

log = logging.getLogger(__name__)

JobKey = tuple[str, str, str]  # (assignment, account, submission folder name)


@dataclass(frozen=True)
class QueueInfo:
    """What the daemon says about one waiting or running job."""

    state: str
    tester: str = ""
    position: int | None = None        # place in the queue, None once sent to a tester
    estimated_finish: dt.datetime | None = None


class Queuer:
    """The ``notify`` hook handed to :func:`vmchecker.submit.submit`; remembers the outcome."""

    def __init__(self, course: CourseConfig, timeout: float):
        self.course = course
        self.timeout = timeout
        self.queued: bool | None = None  # None: not called (nothing was saved)
        self.error = ""

    def __call__(self, sub: Submission) -> None:
        job_id, self.error = queue_submission(self.course, sub, self.timeout)
        self.queued = job_id is not None


def _position(value: Any) -> int | None:
    """1 is next; the daemon reports 0 for a job already sent to a tester."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _when(value: Any) -> dt.datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        try:
            return dt.datetime.fromtimestamp(value).replace(microsecond=0)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def parse_status(course_id: str, status: Any) -> dict[JobKey, QueueInfo]:
    """The jobs of one course from a ``status()`` answer; malformed entries are skipped."""
    jobs = status.get("jobs") if isinstance(status, dict) else None
    if not isinstance(jobs, list):
        return {}
    found: dict[JobKey, QueueInfo] = {}
    for job in jobs:
        if not isinstance(job, dict) or job.get("course") != course_id:
            continue
        key = (job.get("assignment"), job.get("account"), job.get("submission"))
        if not all(isinstance(k, str) for k in key):
            continue
        found[key] = QueueInfo(state=str(job.get("state", "")), tester=str(job.get("tester") or ""),
                               position=_position(job.get("position")),
                               estimated_finish=_when(job.get("estimated_finish")))
    return found


def daemon_jobs(course: CourseConfig, timeout: float) -> dict[JobKey, QueueInfo] | None:
    """The daemon's view of the course's jobs, or None when it cannot be asked."""
    try:
        answer = Client(course.storer.daemon, timeout).status()
    except VmcheckerError as exc:
        log.info("no queue information for %s: %s", course.id, exc.message)
        return None
    return parse_status(course.id, answer)
