"""Look at once at the jobs sent to a tester that says it is back or answers again.

A job sent to a tester ends with the tester's ``notify()``; when none comes, its notify
deadline (which may be a quarter of an hour away or more) fails the attempt and sends the
job elsewhere. The deadline is the last resort. Two moments say that what the daemon
believes about a tester may be stale, and a recheck of it is asked for then:

* its queue manager restarted and says so: ``tester_back`` (the daemon checks the caller);
* it answers again after its SSH/SFTP failed (:attr:`TesterLink.on_recovered`): a send, a
  results fetch, or the ping the daemon sends every :data:`PING_EVERY` seconds to an
  unreachable tester that holds jobs in flight, succeeded after a failure.

A recheck is one look at the tester (its queue, then its ``done/``:
:meth:`TesterLink.holdings`), then for each job sent there and not final:

* its bundle is in the queue: it waits or runs there (an unconfirmed send is confirmed);
* its results are complete in ``done/<job>/``: pulled now, as its notify would pull them
  (:class:`~vmchecker.storer.landing.Landing`), unless the tester reported an error, which
  only its notify settles (a resend must never meet that stale error, which the tester
  would send again for it); results being committed are left to the notify;
* neither: an unconfirmed send never arrived and is queued again, no attempt counted (as
  :mod:`vmchecker.storer.in_doubt` does at start-up); a confirmed one is gone from the
  tester: a failed attempt, as its deadline would say, sent again.

``done/<job>/`` on a tester the job already failed on may hold that earlier attempt's
results: it settles nothing (an unconfirmed send is then sent again, as at start-up).

Harmless by construction: only ``sent`` jobs of that tester are looked at, a send the
dispatcher is making right now is skipped, each move is a guarded journal transition, and
results land under Landing's per-job lock, so a final job is never touched and a job is
never graded twice. A tester with no job in flight is not contacted. Requests for one tester
coalesce: at most one recheck per :data:`MIN_INTERVAL` seconds per tester, those asked for
meanwhile folded into the next; each runs in a thread of its own, one at a time per tester,
so a tester that stalls holds up no other.
"""

from __future__ import annotations

import collections
import logging
import math
import posixpath
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmchecker.contract import RESULT_JSON, ResultStatus
from vmchecker.errors import JobStateError, VmcheckerError
from vmchecker.storer import in_doubt, landing, outcomes
from vmchecker.storer.courses import Course, Courses, tester_done_dir
from vmchecker.storer.dispatcher import Dispatcher
from vmchecker.storer.holdings import Holdings
from vmchecker.storer.journal import Job, Journal
from vmchecker.storer.landing import Landing
from vmchecker.storer.transport import TesterLink

log = logging.getLogger(__name__)

MIN_INTERVAL = 5.0   # seconds between two rechecks of one tester
PING_EVERY = 5.0     # seconds between pings of an unreachable tester that holds jobs in flight


@dataclass
class TesterWatch:
    """What the rechecker knows of one tester of one course."""

    course: str
    tester: str
    asked: bool = False           # a recheck is wanted
    why: str = ""                 # what asked for it (for the log)
    busy: bool = False            # a recheck or a ping of it runs now
    last_recheck: float = -math.inf   # monotonic time the last recheck started
    next_ping: float = 0.0        # monotonic time the next ping is due, while unreachable
    rechecks: int = 0             # rechecks run so far


class Rechecker:
    """Asks for, schedules and runs rechecks (see the module docstring)."""

    def __init__(self, journal: Journal, courses: Courses, dispatcher: Dispatcher, lander: Landing, *,
                 min_interval: float = MIN_INTERVAL, ping_every: float = PING_EVERY):
        self.journal = journal
        self.courses = courses
        self.dispatcher = dispatcher
        self.lander = lander
        self.min_interval = min_interval
        self.ping_every = ping_every
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._watches: dict[tuple[str, str], TesterWatch] = {}
        self._workers: set[threading.Thread] = set()

    def request(self, course: str, tester: str, why: str) -> None:
        """Ask for a recheck of ``tester`` of ``course``: cheap and idempotent, from any thread."""
        with self._lock:
            watch = self._watch(course, tester)
            if not watch.asked:
                watch.asked, watch.why = True, why
        self.wake.set()

    def watches(self) -> list[TesterWatch]:
        """A copy of every tester's watch (for tests and status)."""
        with self._lock:
            return [TesterWatch(**vars(w)) for w in self._watches.values()]

    def _watch(self, course: str, tester: str) -> TesterWatch:
        return self._watches.setdefault((course, tester), TesterWatch(course, tester))

    # ------------------------------------------------------------------ the thread

    def loop(self, stop: threading.Event) -> None:
        """Start due rechecks and pings until ``stop`` is set."""
        while not stop.is_set():
            self.wake.clear()
            try:
                wait = self.run_due()
            except Exception:   # the loop must outlive any surprise
                log.exception("rechecker: unexpected error; going on")
                wait = self.min_interval
            self.wake.wait(min(wait, self.ping_every))

    def run_due(self, now: float | None = None) -> float:
        """Start every recheck and ping that is due; seconds until the next may be."""
        now = time.monotonic() if now is None else now
        wait = self.ping_every
        due_now = []
        with self._lock:
            for watch in self._watches.values():
                if not watch.asked or watch.busy:
                    continue
                due = watch.last_recheck + self.min_interval
                if now < due:
                    wait = min(wait, due - now)
                    continue
                watch.asked, watch.busy, watch.last_recheck = False, True, now
                watch.rechecks += 1
                due_now.append((watch, self._recheck_task(watch.course, watch.tester, watch.why)))
        for watch, task in due_now:
            self._start(watch, task)
        for course in self.courses.loaded():
            for link in course.known_links():
                if link.last_error is not None:
                    self._ping_if_due(course, link, now)
        return max(wait, 0.05)

    def _ping_if_due(self, course: Course, link: TesterLink, now: float) -> None:
        with self._lock:
            watch = self._watch(course.id, link.name)
            if watch.busy or now < watch.next_ping:
                return
            watch.next_ping = now + self.ping_every
        if not any(job.course == course.id for job in self.journal.in_flight(link.name)):
            return
        with self._lock:
            if watch.busy:
                return
            watch.busy = True
        self._start(watch, lambda: _ping(link))

    def _start(self, watch: TesterWatch, task: Callable[[], object]) -> None:
        def run() -> None:
            try:
                task()
            except Exception:
                log.exception("rechecking tester %s of %s failed", watch.tester, watch.course)
            finally:
                with self._lock:
                    watch.busy = False
                    self._workers.discard(threading.current_thread())
                self.wake.set()

        worker = threading.Thread(target=run, name=f"recheck:{watch.course}:{watch.tester}", daemon=True)
        with self._lock:
            self._workers.add(worker)
        worker.start()

    def join_workers(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds in all) for the rechecks and pings under way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0))

    def _recheck_task(self, course: str, tester: str, why: str) -> Callable[[], object]:
        def task() -> None:
            try:
                counts = self.recheck(course, tester)
            except VmcheckerError as exc:
                log.warning("cannot recheck tester %s of %s (%s): %s", tester, course, why, exc.message)
                return
            if counts:
                log.info("rechecked tester %s of %s (%s): %s", tester, course, why,
                         ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
        return task

    # ------------------------------------------------------------------ one recheck

    def recheck(self, course_id: str, tester: str) -> dict[str, int]:
        """Look at ``tester`` once and settle each job sent there that is not final; how
        many jobs ended each way. VmcheckerError when the tester cannot be looked at."""
        course = self.courses.get(course_id)
        settings = course.config.testers.get(tester)
        if settings is None:
            return {}
        jobs = [job for job in self.journal.in_flight(tester)
                if job.course == course_id and not self.dispatcher.sending(job.id)]
        if not jobs:
            return {}
        link = course.link(tester)
        done_dir = tester_done_dir(settings)
        seen = link.holdings(done_dir)
        counts: collections.Counter[str] = collections.Counter()
        for job in jobs:
            try:
                outcome = self._settle(course, link, seen, done_dir, job)
            except JobStateError:
                outcome = "moved on meanwhile"
            except VmcheckerError as exc:
                log.warning("job %s: recheck on %s left it as it was: %s", job.id, tester, exc.message)
                outcome = "left"
            counts[outcome] += 1
        return dict(counts)

    def _settle(self, course: Course, link: TesterLink, seen: Holdings, done_dir: str, job: Job) -> str:
        tester = link.name
        where = seen.where(job.id)
        if where == "done" and tester in job.failed_on:
            if job.confirmed is not None:
                return "left to its notify"   # maybe an earlier attempt's results
            where = None
        if where == "queued":
            if job.confirmed is None:
                self.journal.confirm_sent(job.id)
            return "waiting on the tester"
        if where == "done":
            if job.confirmed is None:
                self.journal.confirm_sent(job.id)
            return self._pull(course, link, posixpath.join(done_dir, job.id), job)
        if job.confirmed is None:
            in_doubt.send_again(self.journal, course, job, f"neither in {tester}'s queue nor in its done folder")
            return "sent again"
        self.dispatcher.fail(job, f"{tester} no longer holds the job: neither its bundle in its queue nor its"
                                  " results in its done folder", tester, kind="lost")
        return "lost on the tester"

    def _pull(self, course: Course, link: TesterLink, remote: str, job: Job) -> str:
        """Pull a job's complete results as its notify would; left alone while they are
        being committed, and when the tester reported an error (its notify settles that)."""
        files = link.finished_files(remote)
        if files is None:
            return "waiting on the tester"
        result = None
        if RESULT_JSON in files:
            with tempfile.TemporaryDirectory(prefix="vmchecker-recheck-") as tmp:
                link.fetch_results(remote, [RESULT_JSON], tmp)
                result = outcomes.read_result(Path(tmp) / RESULT_JSON)
        status = result.get("status") if isinstance(result, dict) else None
        if status != ResultStatus.DONE:
            return "left to its notify"
        outcome = self.lander.accept(course, job.id, link.name, ResultStatus.DONE.value, files,
                                     landing.evaluation_seconds(result))
        return "results pulled" if outcome == landing.LANDED else outcome


def _ping(link: TesterLink) -> None:
    """Try an unreachable tester once; its link says when it answers again."""
    try:
        link.ping()
    except VmcheckerError as exc:
        log.debug("%s still does not answer: %s", link.where, exc.message)
