"""One sender per tester: a tester that hangs delays only the jobs picked for it.

The dispatcher chooses a tester for each queued job in one place, so the scheduler's
choice stays global; the building and the upload of the bundle then run in that tester's
sender, a thread that lives while the tester has sends waiting. A connect to a tester that
accepts TCP but never answers lasts up to the link's connect timeout, and an upload that
stalls up to its operation timeout: meanwhile every other tester's sender goes on.

A send is a :class:`Send` (the job, its course, its :class:`Reservation` of the tester's
slot, the moment of the choice) with a :class:`~concurrent.futures.Future` that says
whether the job went out (1) or not (0). While a job is with a sender (waiting or being
sent) :meth:`Senders.holds` says so, and the dispatcher does not pick it again.

A job that leaves its sender without going out (its tester failed, it was given up, it
was handed back) calls ``on_unsent``: the dispatcher looks at the journal again at once,
once the job is no longer held. When a send fails because of its tester
(:meth:`Senders.hand_back`), the sends waiting behind it in that tester's sender are
handed back untried: their slots are given back and no attempt is counted (their jobs are
still ``queued`` in the journal), so the dispatcher picks them again with the tester's
failure now counted, instead of letting each wait out its own timeout on the same tester.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from vmchecker.storer.courses import Course
from vmchecker.storer.journal import Job
from vmchecker.storer.scheduler import Reservation

log = logging.getLogger(__name__)


@dataclass
class Send:
    """One job on its way to the tester the scheduler reserved a slot on."""

    job: Job
    course: Course
    reservation: Reservation
    decided: float   # when the tester was chosen (wall clock): the timeline's "dispatched"
    result: Future[int] = field(default_factory=Future)

    @property
    def key(self) -> tuple[str, str]:
        return self.course.id, self.reservation.tester


class Sender:
    """The sends of one tester of one course, made one at a time by a thread of its own."""

    def __init__(self, key: tuple[str, str], work: Callable[[Send], int]):
        self.key = key
        self._work = work
        self._lock = threading.Lock()
        self._waiting: deque[Send] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, send: Send) -> None:
        with self._lock:
            if self._closed:
                _drop(send)
                return
            self._waiting.append(send)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"send:{self.key[0]}/{self.key[1]}",
                                                daemon=True)
                self._thread.start()

    def take_waiting(self) -> list[Send]:
        """The sends not started yet, removed from this sender."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        return waiting

    def close(self, timeout: float) -> list[Send]:
        """Take no more sends; wait up to ``timeout`` seconds for the one under way. The
        sends that were waiting, not started."""
        with self._lock:
            self._closed = True
            thread = self._thread
        waiting = self.take_waiting()
        if thread is not None:
            thread.join(timeout)
        return waiting

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None   # the next put starts a new thread
                    return
                send = self._waiting.popleft()
            if not send.result.set_running_or_notify_cancel():
                send.reservation.release()
                continue
            try:
                send.result.set_result(self._work(send))
            except Exception as exc:  # the one boundary per send: the job stays queued, the slot given back
                log.exception("sending job %s to %s failed", send.job.id, self.key[1])
                send.reservation.release()
                send.result.set_exception(exc)
            except BaseException as exc:  # an interruption: for whoever waits on the send; this sender stops
                send.reservation.release()
                send.result.set_exception(exc)
                for waiting in self.take_waiting():
                    _drop(waiting)
                with self._lock:
                    self._thread = None
                return


class Senders:
    """Every tester's :class:`Sender`, made as needed (see the module docstring)."""

    def __init__(self, work: Callable[[Send], int], on_unsent: Callable[[], object] = lambda: None):
        """``work(send)`` builds and uploads one bundle (1: the job went out); it runs in
        the sender of the send's tester. ``on_unsent()``: a job left without going out."""
        self._work = work
        self._on_unsent = on_unsent
        self._lock = threading.Lock()
        self._senders: dict[tuple[str, str], Sender] = {}
        self._held: set[str] = set()

    def submit(self, send: Send) -> Future[int]:
        """Queue ``send`` in its tester's sender; its future says whether the job went out."""
        with self._lock:
            self._held.add(send.job.id)
            sender = self._senders.get(send.key)
            if sender is None:
                sender = self._senders[send.key] = Sender(send.key, self._work)
        send.result.add_done_callback(functools.partial(self._done, send.job.id))
        sender.put(send)
        return send.result

    def holds(self, job_id: str) -> bool:
        """Whether the job is with a sender: waiting there, or being sent."""
        with self._lock:
            return job_id in self._held

    def hand_back(self, course: str, tester: str) -> int:
        """``tester`` of ``course`` failed a send: give the dispatcher back the sends waiting
        for it, untried; how many."""
        with self._lock:
            sender = self._senders.get((course, tester))
        waiting = sender.take_waiting() if sender is not None else []
        for send in waiting:
            _drop(send)
        if waiting:
            log.info("%d job(s) waiting to go to %s handed back to the dispatcher", len(waiting), tester)
        return len(waiting)

    def close(self, timeout: float) -> None:
        """Stop every sender (those waiting stay queued in the journal, for the next start),
        waiting up to ``timeout`` seconds in all for the sends under way."""
        with self._lock:
            senders = list(self._senders.values())
        end = time.monotonic() + timeout
        for sender in senders:
            for send in sender.close(max(end - time.monotonic(), 0.0)):
                _drop(send)

    def _done(self, job_id: str, result: Future[int]) -> None:
        with self._lock:
            self._held.discard(job_id)
        if result.cancelled() or result.exception() is not None or not result.result():
            self._on_unsent()


def _drop(send: Send) -> None:
    """A send that will not be made: its slot back, its job left queued."""
    send.reservation.release()
    if send.result.set_running_or_notify_cancel():
        send.result.set_result(0)


def settle(results: Iterable[Future[int]]) -> int:
    """Wait for every one of ``results``: how many jobs went out. The first exception a
    send raised is raised again once all are over (a drain or a test sees it)."""
    sent, error = 0, None
    for result in results:
        try:
            sent += result.result()
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
    return sent
