"""The web's calls to the storer daemon, each allowed to fail.

``queue_task`` after an upload or a recheck: if the daemon is down the submission
stays saved (the daemon queues every ``saved`` submission when it starts) and the page
says so. ``status()`` for queue positions and estimated finish times: if the daemon
is down, or answers something unexpected, waiting submissions show their status
without an estimate, never an error page. ``timelines()`` for the graders' view of when
each stage of a submission's job happened: without an answer, no timeline is shown.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmchecker.config import CourseConfig
from vmchecker.contract import Stage
from vmchecker.errors import VmcheckerError
from vmchecker.queueing import queue_submission
from vmchecker.repo import Submission
from vmchecker.rpc import MAX_TIMELINES, Client

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


# --------------------------------------------------------------------------- timelines

STAGE_LABELS = {
    Stage.STORED: "upload stored", Stage.QUEUED: "queued", Stage.DISPATCHED: "tester chosen",
    Stage.SENDING: "bundle sending", Stage.ON_TESTER: "bundle on the tester", Stage.RECEIVED: "tester saw the bundle",
    Stage.SLOT_TAKEN: "tester slot taken", Stage.EXECUTOR_STARTED: "executor started", Stage.GUEST_READY: "guest ready",
    Stage.BUILD_STARTED: "build started", Stage.BUILD_ENDED: "build ended", Stage.RUN_STARTED: "run started",
    Stage.RUN_ENDED: "run ended", Stage.CHECK_STARTED: "check started", Stage.CHECK_ENDED: "check ended",
    Stage.EXECUTOR_ENDED: "executor ended", Stage.RESULTS_DURABLE: "results durable on the tester",
    Stage.NOTIFIED: "tester notified the storer", Stage.NOTIFY_RECEIVED: "notification received",
    Stage.RESULTS_FETCHED: "results fetched", Stage.GRADED: "grade written",
}
MAX_NOTES = 8


@dataclass(frozen=True)
class StageView:
    """One row of a job's timeline, as text ready to show."""

    stage: str            # the contract's name (vmchecker.contract.Stage)
    label: str            # in words
    clock: str            # "storer" or "tester": whose clock took it
    time: str             # on the storer's clock, to the millisecond
    since_previous: str   # "+0.012 s"; "~" first when it is an estimate across the two clocks
    since_stored: str


@dataclass(frozen=True)
class TimelineView:
    """When each stage of a submission's job happened (shown to the course's graders)."""

    job_id: str
    stages: list[StageView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _clock_time(epoch: float) -> str:
    try:
        seconds, ms = divmod(round(epoch * 1000), 1000)
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{ms:03d}"
    except (OverflowError, OSError, ValueError):
        return "?"


def _stage_view(row: Any, first: bool) -> StageView | None:
    """A row of the daemon's answer, or None if it is malformed or names no known stage."""
    if not isinstance(row, dict) or row.get("stage") not in STAGE_LABELS:
        return None
    at, previous, stored = (_number(row.get(k)) for k in ("at", "since_previous_s", "since_stored_s"))
    if at is None or previous is None or stored is None:
        return None
    stage = Stage(row["stage"])
    attempt = row.get("attempt")
    label = STAGE_LABELS[stage] + (f" (attempt {attempt + 1})" if isinstance(attempt, int) and attempt > 0 else "")
    step = "" if first else ("~" if row.get("estimated") is True else "") + f"{previous:+.3f} s"
    return StageView(stage=stage.value, label=label, clock="tester" if row.get("clock") == "tester" else "storer",
                     time=_clock_time(at), since_previous=step, since_stored=f"{stored:.3f} s")


def parse_timelines(answer: Any) -> dict[str, TimelineView]:
    """The timelines of a ``timelines()`` answer, by job id; malformed parts are skipped."""
    if not isinstance(answer, dict):
        return {}
    found = {}
    for job_id, value in answer.items():
        if not isinstance(job_id, str) or not isinstance(value, dict) or not isinstance(value.get("stages"), list):
            continue
        rows = [_stage_view(row, first=n == 0) for n, row in enumerate(value["stages"])]
        notes = value.get("notes") if isinstance(value.get("notes"), list) else []
        found[job_id] = TimelineView(job_id, [r for r in rows if r is not None],
                                     [n for n in notes if isinstance(n, str)][:MAX_NOTES])
    return found


def daemon_timelines(course: CourseConfig, job_ids: Sequence[str], timeout: float) -> dict[str, TimelineView]:
    """The daemon's timelines of ``job_ids`` (empty when it cannot be asked)."""
    ids = list(dict.fromkeys(job_ids))[:MAX_TIMELINES]
    if not ids:
        return {}
    try:
        answer = Client(course.storer.daemon, timeout).timelines(ids)
    except VmcheckerError as exc:
        log.info("no timelines for %s: %s", course.id, exc.message)
        return {}
    return parse_timelines(answer)
