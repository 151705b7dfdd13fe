"""Which tester gets a job: the course's ``storer.scheduler`` policy.

``fewest`` is what the original vmchecker did: the tester with the fewest jobs sent and
not yet notified (ties: the tester the course lists first). It knows nothing of speeds
or assignments, so a slow tester gets as many jobs as a fast one.

``estimate`` (the default) is the estimated queue time, after the thesis
(docs/ARCHITECTURE.md). For tester *q* and assignment *a*, ``Et_q(a)`` is the running
mean of the measured evaluation times of *a* on *q* (:mod:`vmchecker.storer.estimates`:
windowed, failures counted as samples of a penalty time, ``penalty_factor`` x timeout,
that fades and ends at the next success). The job goes to the tester expected to finish
it first among those serving its machine (ties: fewer jobs in flight, then the name), so
work drifts away from a slow or broken tester.

``bench/scheduler.py`` replays one workload (four testers of different speeds and slots,
one of them down for a while) under both policies, round robin, random and a clairvoyant
scheduler that knows every job's true time and who is down. Against the clairvoyant the
thesis's rule had 13.6% more mean wait; 2.7% after these fixes:

* Slots. The thesis's expected finish, ``(sum of Et over the jobs in flight + Et_q(a)) /
  slots``, shares the new job's own time among the slots, but a job runs in one slot: a
  4-slot tester looked four times faster at a long job than it is, and a tester with a
  free slot looked as busy as its running jobs although the job would start at once. Now
  a job starts at once where a slot is free and finishes after ``Et_q(a)``; with every
  slot busy it first waits for the work in flight shared by the slots:
  ``sum of Et over the jobs in flight / slots + Et_q(a)``.
* Cold start, and estimates per tester x assignment. A pair learns only from its own
  jobs, and before the first it sat at the assignment's timeout, five to ten times the
  real time: a tester never tried on an assignment looked slower than every tester
  measured on it, so it never got the job that would have taught it better (in three
  runs of five a tester of middle speed never ran the longest assignment). A pair never
  measured now takes the product of the tester's slowness and the assignment's size,
  fitted to the pairs measured (:class:`~vmchecker.storer.estimates.Speeds`), and a
  tester never measured counts as an average one, so it is tried. Either fix alone
  made things worse (slots: 1.249, since the exact slot rule let the timeouts of
  unmeasured pairs decide alone; pairs: 1.148); together 1.034.
* Penalties that did not end. A failure counts as a sample of ``penalty_factor`` x the
  timeout and fades with ``penalty_half_life``, but a tester back from an outage kept the
  penalty in its running mean after its first good job: in the 10 minutes after it was
  back it got 9 jobs on average against the clairvoyant's 35. A success now ends the
  pair's penalty (:meth:`~vmchecker.storer.estimates.Estimate.add`), so the half-life
  only spaces the probes of a tester that keeps failing: each probe of a dead tester costs
  one job a failed send, each minute a recovered tester is not probed costs all its
  slots. Half-lives of 1 to 5 minutes did equally well, 10 (the old value) did not; 5 is
  the one that probes least. 32 jobs in those 10 minutes; at load 0.9 the ratio went from
  1.064 to 1.029 (1.066 and 1.049 with either change alone).

Pure logic: no SQLite, no SSH, so ``bench/scheduler.py`` drives it in simulation.
Estimates come in as a mapping and go out through a ``persist`` callback (the daemon
passes ``functools.partial(journal.save_estimate, course_id)``). Every public method
takes one lock, so dispatcher and RPC threads may share a :class:`Scheduler`;
:meth:`Scheduler.assign` selects and records in one step so two dispatcher threads
cannot both count on the same free slot, and :meth:`Scheduler.reserve` wraps that
step in a :class:`Reservation` that gives the slot back unless the job went out.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vmchecker.config import SCHEDULERS, CourseConfig
from vmchecker.errors import NotFound
from vmchecker.storer.estimates import DEFAULT_WINDOW, Estimate, Speeds

log = logging.getLogger(__name__)

DEFAULT_PENALTY_FACTOR = 10.0
DEFAULT_NOTIFY_MARGIN = 60.0
DEFAULT_PENALTY_HALF_LIFE = 300.0   # spaces the probes of a failing tester (see above)


@dataclass
class TesterState:
    """Everything the scheduler knows about one tester."""

    name: str
    slots: int = 1
    machines: frozenset[str] = frozenset()
    estimates: dict[str, Estimate] = field(default_factory=dict)  # assignment -> Et_q(a)
    in_flight: dict[str, str] = field(default_factory=dict)  # job id -> assignment, sent and not notified
    failures: int = 0  # consecutive failures since the last success
    last_failure: float | None = None
    last_failure_reason: str = ""
    sent_total: int = 0
    done_total: int = 0
    failed_total: int = 0

    @property
    def healthy(self) -> bool:
        """False from a failure until the next success."""
        return self.failures == 0

    def serves(self, machine: str) -> bool:
        return machine in self.machines


def job_bound(timeout: float, margin: float) -> float:
    """The longest one job may take on a tester: build and run each up to ``timeout``."""
    return 2 * timeout + margin


def notify_deadline(now: float, timeout: float, margin: float, ahead: Iterable[float] = (), slots: int = 1) -> float:
    """When to give up waiting for the notify of a job sent at ``now``.

    ``ahead`` are the timeouts of the jobs already in flight on that tester. A tester
    that keeps its slots busy starts the new job by sum(bounds ahead) / slots at the
    latest (Graham's list-scheduling argument), so a job waiting behind others in a
    busy tester's queue is not declared lost while it is merely waiting."""
    waiting = sum(job_bound(t, margin) for t in ahead) / max(slots, 1)
    return now + waiting + job_bound(timeout, margin)


class Scheduler:
    """Per-course tester selection. Thread-safe. ``now`` arguments default to the clock."""

    def __init__(
        self,
        testers: Iterable[TesterState],
        timeouts: Mapping[str, float],
        *,
        guesses: Mapping[str, float] | None = None,
        penalty_factor: float = DEFAULT_PENALTY_FACTOR,
        penalty_half_life: float = DEFAULT_PENALTY_HALF_LIFE,
        notify_margin: float = DEFAULT_NOTIFY_MARGIN,
        window: int = DEFAULT_WINDOW,
        estimates: Mapping[tuple[str, str], Estimate] | None = None,
        persist: Callable[[str, str, Estimate], None] | None = None,
        policy: str = "estimate",
    ):
        """``testers``: their names, slots and machines, in the course's order.
        ``timeouts``: assignment -> timeout in seconds (build and run each). ``guesses``:
        assignment -> Et before any measurement of it, instead of the timeout.
        ``estimates``: ``(tester, assignment) -> Estimate`` read back from the journal.
        ``persist(tester, assignment, estimate)`` is called, under the lock, after every
        change of an estimate. ``policy``: one of :data:`~vmchecker.config.SCHEDULERS`."""
        if policy not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {policy!r} (known: {', '.join(SCHEDULERS)})")
        self.policy = policy
        self._testers = {t.name: t for t in testers}
        self._timeouts = dict(timeouts)
        self._guesses = dict(guesses or {})
        self.penalty_factor = penalty_factor
        self.penalty_half_life = penalty_half_life
        self.notify_margin = notify_margin
        self.window = window
        self._persist = persist
        self._lock = threading.RLock()
        self._speeds: Speeds | None = None   # fitted again after any estimate changes
        self.load_estimates(estimates or {})

    @classmethod
    def from_config(
        cls,
        course: CourseConfig,
        *,
        estimates: Mapping[tuple[str, str], Estimate] | None = None,
        persist: Callable[[str, str, Estimate], None] | None = None,
        guesses: Mapping[str, float] | None = None,
    ) -> Scheduler:
        """A scheduler for one course: its testers, the machines each serves, the
        assignments' timeouts, and the storer's policy, penalty factor and notify margin."""
        serves: dict[str, set[str]] = {name: set() for name in course.testers}
        for machine in course.machines.values():
            for tester in machine.testers:
                serves[tester].add(machine.name)
        testers = [TesterState(t.name, t.slots, frozenset(serves[t.name])) for t in course.testers.values()]
        return cls(
            testers,
            {a.id: a.timeout for a in course.assignments.values()},
            guesses=guesses,
            penalty_factor=course.storer.failure_penalty_factor,
            # the bound on a job also covers booting the slowest guest of the course
            notify_margin=course.storer.notify_margin + max((m.boot_timeout for m in course.machines.values()),
                                                            default=0),
            estimates=estimates,
            persist=persist,
            policy=course.storer.scheduler,
        )

    # ------------------------------------------------------------------ estimates

    def load_estimates(self, estimates: Mapping[tuple[str, str], Estimate]) -> None:
        """Take estimates read back from the journal; unknown testers are ignored."""
        with self._lock:
            for (tester, assignment), estimate in estimates.items():
                if tester in self._testers:
                    self._testers[tester].estimates[assignment] = estimate
            self._speeds = None

    def estimates(self) -> dict[tuple[str, str], Estimate]:
        """Every estimate with at least one sample, ``(tester, assignment) -> Estimate``."""
        with self._lock:
            return {(t.name, a): e for t in self._testers.values() for a, e in t.estimates.items()}

    def timeout(self, assignment: str) -> float:
        try:
            return self._timeouts[assignment]
        except KeyError:
            raise NotFound(f"the scheduler knows no assignment {assignment!r}") from None

    def penalty(self, assignment: str) -> float:
        """The time one failure counts as."""
        return self.penalty_factor * self.timeout(assignment)

    def estimate(self, tester: str, assignment: str, now: float | None = None) -> float:
        """``Et_q(a)`` in seconds."""
        with self._lock:
            return self._et(self._tester(tester), assignment, _now(now))

    def expected_finish(self, tester: str, assignment: str, now: float | None = None) -> float:
        """Seconds until a new job of ``assignment`` sent now to ``tester`` is expected to finish."""
        with self._lock:
            return self._finish(self._tester(tester), assignment, _now(now))

    # ------------------------------------------------------------------ selection

    def select(
        self, assignment: str, machine: str, exclude: Iterable[str] = (), now: float | None = None
    ) -> str | None:
        """The tester expected to finish a new job soonest, among those serving
        ``machine``; testers in ``exclude`` (those that failed this job) only when
        no other serves it. None if no tester serves ``machine``."""
        with self._lock:
            tester = self._select(assignment, machine, set(exclude), _now(now))
            return tester.name if tester else None

    def assign(
        self, job_id: str, assignment: str, machine: str, exclude: Iterable[str] = (), now: float | None = None
    ) -> tuple[str, float] | None:
        """:meth:`select` and :meth:`on_sent` in one step: ``(tester, notify deadline)``."""
        now = _now(now)
        with self._lock:
            tester = self._select(assignment, machine, set(exclude), now)
            if tester is None:
                return None
            return tester.name, self.on_sent(tester.name, job_id, assignment, now=now)

    def reserve(
        self, job_id: str, assignment: str, machine: str, exclude: Iterable[str] = (), now: float | None = None
    ) -> Reservation:
        """:meth:`assign` as a :class:`Reservation`: the slot is counted at once and
        released again when the ``with`` block ends, unless the caller committed it
        (the job really went out). NotFound if no tester serves ``machine``."""
        chosen = self.assign(job_id, assignment, machine, exclude, now)
        if chosen is None:
            raise NotFound(f"no tester serves machine {machine!r}")
        return Reservation(self, chosen[0], job_id, chosen[1])

    def on_sent(self, tester: str, job_id: str, assignment: str, now: float | None = None) -> float:
        """Count a job as in flight on ``tester`` (also to rebuild the state from the
        journal after a restart). Returns its notify deadline."""
        with self._lock:
            state = self._tester(tester)
            ahead = [self.timeout(a) for j, a in state.in_flight.items() if j != job_id]
            deadline = notify_deadline(_now(now), self.timeout(assignment), self.notify_margin, ahead, state.slots)
            state.in_flight[job_id] = assignment
            state.sent_total += 1
            return deadline

    def on_finished(self, tester: str, job_id: str, assignment: str, seconds: float) -> Estimate:
        """A job ended on ``tester`` after ``seconds`` of evaluation: one sample."""
        with self._lock:
            state = self._tester(tester)
            state.in_flight.pop(job_id, None)
            state.failures = 0
            state.done_total += 1
            return self._store(state, assignment, self._current(state, assignment).add(max(seconds, 0.0), self.window))

    def on_failure(
        self, tester: str, job_id: str, assignment: str, reason: str = "", now: float | None = None
    ) -> Estimate:
        """``tester`` failed the job: one sample of the penalty time."""
        now = _now(now)
        with self._lock:
            state = self._tester(tester)
            state.in_flight.pop(job_id, None)
            state.failures += 1
            state.failed_total += 1
            state.last_failure = now
            state.last_failure_reason = reason
            log.warning("tester %s failed job %s (%d in a row): %s", tester, job_id, state.failures, reason)
            estimate = self._current(state, assignment).penalise(self.penalty(assignment), now, self.window)
            return self._store(state, assignment, estimate)

    def forget(self, tester: str, job_id: str) -> None:
        """Stop counting a job as in flight without a sample (e.g. it was given up
        for a reason that is not the tester's)."""
        with self._lock:
            self._tester(tester).in_flight.pop(job_id, None)

    def testers(self) -> list[TesterState]:
        """A copy of every tester's state (for ``status()``), by name."""
        with self._lock:
            return [copy.deepcopy(self._testers[name]) for name in sorted(self._testers)]

    # ------------------------------------------------------------------ internals

    def _tester(self, name: str) -> TesterState:
        try:
            return self._testers[name]
        except KeyError:
            raise NotFound(f"the scheduler knows no tester {name!r}") from None

    def _prior(self, state: TesterState, assignment: str) -> float:
        """Et of a pair never measured: the guess from the pairs that were (tester slowness
        x assignment size), else the configured guess, else the timeout."""
        timeout = self.timeout(assignment)
        if self._speeds is None:
            self._speeds = Speeds.fit({(t.name, a): e.measured for t in self._testers.values()
                                       for a, e in t.estimates.items() if e.measured is not None})
        guess = self._speeds.guess(state.name, assignment)
        return guess if guess is not None else self._guesses.get(assignment, timeout)

    def _current(self, state: TesterState, assignment: str) -> Estimate:
        return state.estimates.get(assignment) or Estimate(self._prior(state, assignment))

    def _et(self, state: TesterState, assignment: str, now: float) -> float:
        estimate = state.estimates.get(assignment)
        if estimate is not None and estimate.measured is not None:
            return estimate.value(now, self.penalty_half_life, estimate.measured)
        prior = self._prior(state, assignment)
        return prior if estimate is None else estimate.value(now, self.penalty_half_life, prior)

    def _finish(self, state: TesterState, assignment: str, now: float) -> float:
        """Seconds until a new job of ``assignment`` would finish on this tester: its own
        Et from now in a free slot, else after the work in flight, shared by the slots."""
        own = self._et(state, assignment, now)
        if len(state.in_flight) < state.slots:
            return own
        return sum(self._et(state, a, now) for a in state.in_flight.values()) / state.slots + own

    def _select(self, assignment: str, machine: str, exclude: set[str], now: float) -> TesterState | None:
        serving = [t for t in self._testers.values() if t.serves(machine)]
        candidates = [t for t in serving if t.name not in exclude] or serving
        if not candidates:
            return None
        if self.policy == "fewest":   # min() keeps the first of equals: the course's order
            return min(candidates, key=lambda t: len(t.in_flight))
        return min(candidates, key=lambda t: (self._finish(t, assignment, now), len(t.in_flight), t.name))

    def _store(self, state: TesterState, assignment: str, estimate: Estimate) -> Estimate:
        state.estimates[assignment] = estimate
        self._speeds = None
        if self._persist is not None:
            self._persist(state.name, assignment, estimate)
        return estimate


class Reservation:
    """A job counted in flight on a tester between the choice and the sending.

    Every way out of the sending that is not a success must give the slot back, or the
    tester looks busier than it is and every later estimate is skewed. So the slot is
    given back by leaving the ``with`` block, whatever ends it (a refusal, an exception),
    unless :meth:`commit` was called: from then on the job's own end (its notify, or
    its failure) takes it off the tester."""

    def __init__(self, scheduler: Scheduler, tester: str, job_id: str, deadline: float):
        self.scheduler = scheduler
        self.tester = tester
        self.job_id = job_id
        self.deadline = deadline  # when to give up waiting for the job's notify
        self.committed = False
        self.released = False

    def commit(self) -> None:
        """The job went out: keep the slot counted after the ``with`` block."""
        self.committed = True

    def release(self) -> None:
        """Give the slot back now (nothing if committed or released already)."""
        if not self.committed and not self.released:
            self.released = True
            self.scheduler.forget(self.tester, self.job_id)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "committed" if self.committed else "released" if self.released else "held"
        return f"Reservation({self.job_id} on {self.tester}, {state})"


def _now(now: float | None) -> float:
    return time.time() if now is None else now
