"""A sent job's results pulled from its tester into the submission: once.

Two paths end a sent job with its tester's results: the tester's ``notify()``, and the
daemon finding them complete in the tester's ``done/<job>/`` when it looks there itself
(:mod:`vmchecker.storer.recheck`, after the tester said it is back or answered again).
Both may run at the same moment for one job (a restarted queue manager sends its pending
notification as the daemon looks), so both go through :meth:`Landing.accept`, which holds
a lock per job and reads the job's state again under it: the first pulls the results and
journals ``done``; the second finds it ``done`` and changes nothing. A job is graded once.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmchecker.contract import RESULT_JSON, TESTER_STAGES, VMCHECKER_STDERR, JobState, ResultStatus, Stage
from vmchecker.errors import JobStateError, NotFound, ResultRefused
from vmchecker.storer import metrics, outcomes, timeline
from vmchecker.storer.courses import Course, tester_done_dir
from vmchecker.storer.dispatcher import Dispatcher
from vmchecker.storer.journal import Journal
from vmchecker.storer.transport import TesterLink

log = logging.getLogger(__name__)

LANDED, ALREADY, FAILED = "landed", "already done", "failed"


@dataclass
class _JobLock:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class Landing:
    """Pulls results for sent jobs, one landing per job at a time (see the module docstring)."""

    def __init__(self, journal: Journal, dispatcher: Dispatcher):
        self.journal = journal
        self.dispatcher = dispatcher
        self._locks: dict[str, _JobLock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def _held(self, job_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(job_id, _JobLock())
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._locks[job_id]

    def accept(self, course: Course, job_id: str, tester: str, status: str, files: Sequence[str],
               seconds: float, stages: Mapping[Stage, float] | None = None) -> str:
        """Job ``job_id``, sent to ``tester``, ended with ``status``; its ``files`` are in the
        tester's ``done/<job_id>/``. ``landed``: pulled into the submission and journaled
        done; ``already done``: another landing did it; ``failed``: the tester reported an
        error (a failed attempt: sent again or given up).

        JobStateError when the job no longer waits for this tester's results; ResultRefused
        when the tester sent something it may not (a failed attempt too); another
        VmcheckerError (the files could not be pulled now) leaves the job as it was.

        ``stages``: the moments the tester's notification carried (and when it arrived),
        journaled with the landing's own (results fetched, graded) when the job is done;
        without them, the executor's come from the ``result.json`` pulled."""
        stages = dict(stages or {})
        with self._held(job_id):
            job = self.journal.get(job_id)
            if job.state is JobState.DONE and job.tester == tester:
                return ALREADY
            if job.state is not JobState.SENT or job.tester != tester:
                raise JobStateError(f"job {job_id} is {job.state.value} (tester {job.tester}), not waiting for"
                                    f" results from {tester}")
            settings = course.config.testers.get(tester)
            if settings is None:
                raise NotFound(f"job {job_id} was sent to tester {tester!r}, which the course no longer has")
            remote = posixpath.join(tester_done_dir(settings), job.id)
            link = course.link(tester)
            try:
                if status == ResultStatus.ERROR:
                    # The guest or the tester failed, not the student: resend elsewhere (or
                    # give up with every reason); the tester's partial output is not kept.
                    reason = _tester_reason(link, remote, files)
                    self.dispatcher.fail(job, f"the tester reported an error: {reason}", tester, kind="tester_error")
                    return FAILED
                def fetch(dest: Path) -> None:
                    link.fetch_results(remote, files, dest)
                    stages[Stage.RESULTS_FETCHED] = time.time()

                def graded() -> None:
                    stages[Stage.GRADED] = time.time()

                sub = outcomes.land_results(course, job, fetch, graded)
                if sub is not None:
                    if not any(stage in TESTER_STAGES for stage in stages):
                        stages.update(timeline.from_result(outcomes.read_result(sub.results_dir / RESULT_JSON)))
            except ResultRefused as exc:  # the tester misbehaved: a failure of it, not of the network
                self.dispatcher.fail(job, exc.message, tester, kind="bad_results")
                raise
            try:
                self.journal.mark_done(job.id, tester=tester, stages=stages)
            except JobStateError:
                return ALREADY   # the deadline's sweep gave it up meanwhile
            course.scheduler.on_finished(tester, job.id, job.assignment, seconds)
            metrics.job_done(course, job, seconds, stages)
            log.info("job %s done on %s in %.1f s", job.id, tester, seconds)   # bench/chaos.py counts this line
            return LANDED


def evaluation_seconds(stats: Any) -> float:
    """How long the tester took, from a notify's stats or a ``result.json`` (0 if neither says)."""
    if not isinstance(stats, dict):
        return 0.0
    for key in ("total_s", "tester_seconds", "executor_seconds"):
        value = stats.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return 0.0


def _tester_reason(link: TesterLink, remote: str, files: Sequence[str]) -> str:
    """The first line of the tester's own vmchecker-stderr.vmr for a job it failed."""
    if VMCHECKER_STDERR not in files:
        return "no reason given"
    with tempfile.TemporaryDirectory(prefix="vmchecker-reason-") as tmp:
        link.fetch_results(remote, [VMCHECKER_STDERR], tmp)
        text = (Path(tmp) / VMCHECKER_STDERR).read_text(errors="replace").strip()
    return text.splitlines()[0][:300] if text else "no reason given"
