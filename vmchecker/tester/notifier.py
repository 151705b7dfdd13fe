"""Pending notifications: journaled on disk, retried until the storer daemon answers.

A job's ``notify`` must reach the storer even if the daemon is down when the job ends
and the queue manager restarts in between. Each pending notification
is one small JSON file under ``state/notify/`` written atomically; a background thread
sends the due ones and reschedules failures with capped exponential backoff. An entry is
removed only when the daemon answered: accepted, or refused for good (a fault other than
``rpc.FAULT_TRY_LATER``, which retrying cannot fix and is logged as an error). The same
thread tells the daemons that a restarted queue manager is back (``tester_back``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from vmchecker import fsutil, rpc
from vmchecker.contract import STAGE_STAT_PREFIX, Stage
from vmchecker.errors import CallRefused, RpcError
from vmchecker.tester import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """One notification waiting to be delivered, with its retry schedule."""

    url: str
    request: rpc.NotifyRequest
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "request": self.request.to_dict(), "attempts": self.attempts,
                           "next_try": self.next_try, "last_error": self.last_error})

    @classmethod
    def from_json(cls, text: str) -> Pending:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return cls(rpc.check_url(data.get("url")), rpc.NotifyRequest.from_dict(data.get("request")),
                   int(data.get("attempts", 0)), float(data.get("next_try", 0.0)), str(data.get("last_error", "")))


@dataclass(frozen=True)
class Announcement:
    """A restarted queue manager telling one daemon, for one course, that it is back
    (``tester_back``); kept in memory only: each start derives them anew."""

    url: str
    request: rpc.BackRequest
    attempts: int = 0
    next_try: float = 0.0


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: base, 2 base, 4 base ... up to cap."""
    return min(cap, base * 2 ** max(attempts - 1, 0))


class Journal:
    """The pending notifications on disk: ``<dir>/<job_id>.json``, one per job."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)   # each entry holds its job's key


    def _path(self, job_id: str) -> Path:
        return self.dir / f"{rpc.check_job_id(job_id)}.json"

    def save(self, pending: Pending) -> None:
        fsutil.write_atomic(self._path(pending.job_id), pending.to_json(), 0o600)  # it holds the job's key

    def load(self, job_id: str) -> Pending | None:
        path = self._path(job_id)
        try:
            return Pending.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RpcError) as exc:
            bad = path.with_suffix(".bad")
            log.error("%s: unreadable pending notification (%s); moved to %s", path, exc, bad.name)
            path.replace(bad)
            return None

    def job_ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if not p.name.startswith("."))

    def load_all(self) -> list[Pending]:
        return [p for p in map(self.load, self.job_ids()) if p is not None]

    def remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(job_id).unlink()
            fsutil.fsync_dir(self.dir)


class Notifier:
    """Sends pending notifications; ``start()`` runs the retry loop in a thread.

    A job still being committed is ``held`` (its bundle not yet out of ``queue/``):
    the storer must not hear of results before the tester is done with the job.

    The first pass after :meth:`start` sends every pending notification at once, whatever
    its retry schedule says: the queue manager just restarted, and a storer that was down
    when a job ended may have been back for a while. Then the announcements
    (:meth:`announce`) go, retried like notifications but at most ``ANNOUNCE_ATTEMPTS``
    times: they only save the daemon a wait, the notifications carry the results."""

    ANNOUNCE_ATTEMPTS = 8

    def __init__(self, journal: Journal, *, timeout: float = 10.0, base_delay: float = 2.0,
                 max_delay: float = 300.0, client: Callable[[str, float], rpc.Client] = rpc.Client):
        self.journal = journal
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._client = client
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._announcements: list[Announcement] = []
        self._hurry: set[str] = set()   # jobs whose notification is due now, whatever its schedule
        self._first_pass = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ queueing

    def add(self, pending: Pending, hold: bool = False) -> None:
        """Journal a notification (durably) and, unless held, wake the sender."""
        with self._lock:
            if hold:
                self._held.add(pending.job_id)
            self.journal.save(pending)
        if not hold:
            self._wake.set()

    def hurry(self, job_id: str) -> None:
        """Send a job's pending notification at the next pass, whatever its schedule says
        (the entry is not rewritten: one being sent right now is not sent twice)."""
        with self._lock:
            self._hurry.add(job_id)
        self._wake.set()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)
        self._wake.set()

    def pending(self) -> list[Pending]:
        with self._lock:
            return self.journal.load_all()

    def announce(self, calls: list[tuple[str, rpc.BackRequest]]) -> None:
        """Tell each ``(url, request)`` daemon that this tester is back, after the pending
        notifications of the next pass."""
        with self._lock:
            self._announcements += [Announcement(url, request) for url, request in calls]
        self._wake.set()

    def announcements(self) -> list[Announcement]:
        """Those not yet answered."""
        with self._lock:
            return list(self._announcements)

    # ------------------------------------------------------------------ sending

    def send(self, pending: Pending) -> bool:
        """Try once; True when the entry is gone (answered), False when rescheduled. The
        request goes with the moment it is sent (``at_notified``, the tester's clock), for
        the job's timeline; the journaled entry is left as it was."""
        stamped = {**pending.request.stats, STAGE_STAT_PREFIX + Stage.NOTIFIED: time.time()}
        request = replace(pending.request, stats=stamped) if len(stamped) <= rpc.MAX_STATS else pending.request
        started = time.monotonic()
        try:
            self._client(pending.url, self.timeout).notify(request)
        except CallRefused as exc:
            metrics.notified(request.stats, "refused", time.monotonic() - started)
            log.error("job %s: %s; dropping the notification (results stay in done/%s)",
                      pending.job_id, exc.message, pending.job_id)
        except RpcError as exc:
            metrics.notified(request.stats, "failed", time.monotonic() - started)
            attempts = pending.attempts + 1
            delay = backoff(attempts, self.base_delay, self.max_delay)
            log.warning("job %s: notify failed (attempt %d): %s; retrying in %.1f s",
                        pending.job_id, attempts, exc.message, delay)
            self._reschedule(pending, replace(pending, attempts=attempts, next_try=time.time() + delay,
                                              last_error=exc.message))
            return False
        else:
            metrics.notified(request.stats, "accepted", time.monotonic() - started)
            log.info("job %s: storer notified (%s)", pending.job_id, pending.request.status)
        self._forget(pending)
        return True

    def _reschedule(self, sent: Pending, updated: Pending) -> None:
        with self._lock:
            if self.journal.load(sent.job_id) == sent:  # not replaced meanwhile by a newer run
                self.journal.save(updated)

    def _forget(self, sent: Pending) -> None:
        with self._lock:
            if self.journal.load(sent.job_id) == sent:
                self.journal.remove(sent.job_id)

    def run_due(self, force: bool = False) -> float | None:
        """Send every due (or, with ``force``, every) unheld entry; return the seconds
        until the next one is due, or None when nothing is pending."""
        with self._lock:
            entries = [p for p in self.journal.load_all() if p.job_id not in self._held]
            hurry, self._hurry = self._hurry, set()
        next_due = None
        for pending in entries:
            if self._stop.is_set():
                break
            if force or pending.job_id in hurry or pending.next_try <= time.time():
                if self.send(pending):
                    continue
                pending = self.journal.load(pending.job_id) or pending
            wait = max(pending.next_try - time.time(), 0.0)
            next_due = wait if next_due is None else min(next_due, wait)
        wait = self._run_announcements(force)
        if wait is not None:
            next_due = wait if next_due is None else min(next_due, wait)
        return next_due

    def _run_announcements(self, force: bool) -> float | None:
        """Send the due announcements; seconds until the next one is due (None: none left)."""
        with self._lock:
            todo, self._announcements = self._announcements, []
        left = []
        for item in todo:
            if not self._stop.is_set() and (force or item.next_try <= time.time()):
                item = self._announce(item)
            if item is not None:
                left.append(item)
        with self._lock:
            self._announcements = left + self._announcements
        return min((max(a.next_try - time.time(), 0.0) for a in left), default=None)

    def _announce(self, item: Announcement) -> Announcement | None:
        """Try one announcement once; the rescheduled one, or None when it is done with."""
        what = f"{item.url} (course {item.request.course})"
        try:
            self._client(item.url, self.timeout).tester_back(item.request)
        except CallRefused as exc:
            log.warning("could not tell %s that this tester is back: %s", what, exc.message)
        except RpcError as exc:
            attempts = item.attempts + 1
            if attempts >= self.ANNOUNCE_ATTEMPTS:
                log.warning("gave up telling %s that this tester is back: %s", what, exc.message)
                return None
            delay = backoff(attempts, self.base_delay, self.max_delay)
            log.info("could not tell %s that this tester is back (%s); retrying in %.1f s", what, exc.message, delay)
            return replace(item, attempts=attempts, next_try=time.time() + delay)
        else:
            log.info("told %s that this tester is back", what)
        return None

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Run the sender in a thread; its first pass sends everything pending at once."""
        self._first_pass = True
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                force, self._first_pass = self._first_pass, False
                wait = self.run_due(force=force)
            except Exception:  # one boundary: the sender must outlive any surprise
                log.exception("notifier: unexpected error; retrying shortly")
                wait = self.base_delay
            self._wake.wait(timeout=min(wait if wait is not None else 60.0, 60.0))
