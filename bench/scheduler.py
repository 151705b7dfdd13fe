#!/usr/bin/env python3
"""Scheduler benchmark: a seeded discrete-event simulation of the storer and its testers.

Compares the estimated-queue-time scheduler (the real ``vmchecker.storer.scheduler``
classes, ``storer.scheduler: estimate``) with the original master's fewest-queued-files
(the same classes, ``storer.scheduler: fewest``), round robin, random idle, and a
clairvoyant greedy scheduler, on the SAME arrival stream per seed.

Model (all times in seconds):

* Testers differ in slots and speed; one (``flaky``) is down for a while: the jobs on it
  vanish without a notify and sends to it fail after a connect timeout; then it
  comes back empty.
* A job's evaluation time on a tester is ``(overhead + base(a) x noise) / speed``,
  capped at ``2 x timeout`` (build and run each time out); the noise (log-normal,
  per submission) is the same on every tester.
* Arrivals are Poisson at ``--load`` x the testers' total capacity (all testers up).
* The storer (common to every policy) sends a bundle in ``TRANSFER`` seconds, waits
  for the notify until the deadline of ``scheduler.notify_deadline``, and on any
  failure resends the job at once, avoiding the testers that failed it, at most
  ``MAX_ATTEMPTS`` attempts. Every policy gets this retry logic, so only the choice
  of tester differs.
* A tester runs its queue FIFO in its slots and notifies when a job ends.
* fewest-queued-files counts the bundles the storer has sent to a tester and not yet
  seen notified (waiting + running), ties to the first tester listed: the fastest,
  which favours this baseline. Round robin and random idle use the same list.
* The clairvoyant knows every job's true evaluation time on every tester, each
  tester's true queue and whether it is down right now (not the future): it sends
  each job where it truly finishes first. Greedy, so not a lower bound.
* This scheduler starts cold (nothing measured: every estimate is a timeout) and learns
  during the run.

Wait = time from the submission until its results reach the storer (what a student
waits for). Makespan = first arrival to last result. The last line holds the
headline figures: this scheduler's mean wait divided by each other policy's.

Run: ``python bench/scheduler.py [--seeds 5] [--hours 3] [--load 0.8]``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import math
import random
import statistics
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmchecker.storer.scheduler import Scheduler, TesterState, notify_deadline  # noqa: E402

log = logging.getLogger(__name__)

MACHINE = "linux"
OVERHEAD = 3.0  # revert + start + copy at speed 1
NOISE_SIGMA = 0.5
TRANSFER = 1.0
CONNECT_TIMEOUT = 10.0
NOTIFY_MARGIN = 60.0
PENALTY_FACTOR = 10.0
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class AssignmentSpec:
    name: str
    base: float  # evaluation time at speed 1, before noise
    timeout: float
    weight: float


@dataclass(frozen=True)
class TesterSpec:
    name: str
    slots: int
    speed: float
    down: tuple[float, float] | None = None  # as fractions of the arrival horizon


ASSIGNMENTS = (
    AssignmentSpec("1-hello", 5, 60, 0.35),
    AssignmentSpec("2-shell", 25, 120, 0.30),
    AssignmentSpec("3-threads", 60, 300, 0.25),
    AssignmentSpec("4-kernel", 150, 600, 0.10),
)
TESTERS = (
    TesterSpec("big", 4, 1.5),
    TesterSpec("mid", 2, 1.0),
    TesterSpec("old", 2, 0.5),
    TesterSpec("flaky", 2, 1.0, down=(0.25, 0.45)),
)
TIMEOUTS = {a.name: a.timeout for a in ASSIGNMENTS}


# ---------------------------------------------------------------------- workload


@dataclass
class Job:
    id: str
    arrival: float
    assignment: str
    work: float  # seconds at speed 1
    timeout: float
    attempts: int = 0
    failed_on: list[str] = field(default_factory=list)
    token: int = 0  # bumped on every send; stale events carry an old one
    finished: float | None = None
    error: bool = False


def capacity() -> float:
    return sum(t.slots * t.speed for t in TESTERS)


def mean_work() -> float:
    total = sum(a.weight for a in ASSIGNMENTS)
    return OVERHEAD + sum(a.weight * a.base for a in ASSIGNMENTS) / total  # noise has mean 1


def arrivals(seed: int, horizon: float, load: float) -> list[tuple[float, str, float]]:
    """The arrival stream: (time, assignment, work at speed 1)."""
    rng = random.Random(seed)
    rate = load * capacity() / mean_work()
    names = [a.name for a in ASSIGNMENTS]
    weights = [a.weight for a in ASSIGNMENTS]
    base = {a.name: a.base for a in ASSIGNMENTS}
    out, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now > horizon:
            return out
        name = rng.choices(names, weights)[0]
        noise = rng.lognormvariate(-NOISE_SIGMA**2 / 2, NOISE_SIGMA)
        out.append((now, name, OVERHEAD + base[name] * noise))


# ---------------------------------------------------------------------- testers


class SimTester:
    """A tester's true state: FIFO queue, busy slots, up or down."""

    def __init__(self, spec: TesterSpec, horizon: float):
        self.spec = spec
        self.name = spec.name
        self.queue: deque[tuple[Job, int]] = deque()
        self.running: dict[str, float] = {}  # job id -> end time
        self.epoch = 0  # bumped when it goes down: events of an older epoch are void
        self.down_window = (spec.down[0] * horizon, spec.down[1] * horizon) if spec.down else None

    def is_down(self, now: float) -> bool:
        return self.down_window is not None and self.down_window[0] <= now < self.down_window[1]

    def runtime(self, job: Job) -> float:
        return min(job.work / self.spec.speed, 2 * job.timeout)

    def predicted_finish(self, job: Job, now: float) -> float:
        """True finish of ``job`` if sent now (the clairvoyant's view)."""
        if self.is_down(now):
            return math.inf
        slots = list(self.running.values()) + [now] * (self.spec.slots - len(self.running))
        heapq.heapify(slots)
        for queued, _ in self.queue:
            heapq.heappush(slots, heapq.heappop(slots) + self.runtime(queued))
        return max(heapq.heappop(slots), now + TRANSFER) + self.runtime(job)


# ---------------------------------------------------------------------- policies


class Policy:
    name = "?"

    def __init__(self, sim: Simulation):
        self.sim = sim

    def choose(self, job: Job, exclude: set[str], now: float) -> str:
        raise NotImplementedError

    def candidates(self, exclude: set[str]) -> list[str]:
        names = [t.name for t in TESTERS]
        return [n for n in names if n not in exclude] or names

    def sent(self, tester: str, job: Job, now: float) -> None:
        pass

    def finished(self, tester: str, job: Job, seconds: float, now: float) -> None:
        pass

    def failed(self, tester: str, job: Job, now: float) -> None:
        pass


class EstimatedQueueTime(Policy):
    """This project's scheduler, the real class."""

    name = "estimated"
    policy = "estimate"

    def __init__(self, sim: Simulation):
        super().__init__(sim)
        states = [TesterState(t.name, t.slots, frozenset({MACHINE})) for t in TESTERS]
        self.scheduler = Scheduler(states, TIMEOUTS, penalty_factor=PENALTY_FACTOR, notify_margin=NOTIFY_MARGIN,
                                   policy=self.policy)

    def choose(self, job: Job, exclude: set[str], now: float) -> str:
        tester = self.scheduler.select(job.assignment, MACHINE, exclude, now=now)
        assert tester is not None
        return tester

    def sent(self, tester: str, job: Job, now: float) -> None:
        self.scheduler.on_sent(tester, job.id, job.assignment, now=now)

    def finished(self, tester: str, job: Job, seconds: float, now: float) -> None:
        self.scheduler.on_finished(tester, job.id, job.assignment, seconds)

    def failed(self, tester: str, job: Job, now: float) -> None:
        self.scheduler.on_failure(tester, job.id, job.assignment, "simulated", now=now)


class FewestQueued(EstimatedQueueTime):
    """The original master: the tester with the fewest bundles in its queue (the real
    class under ``storer.scheduler: fewest``)."""

    name = "fewest"
    policy = "fewest"


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self, sim: Simulation):
        super().__init__(sim)
        self.turn = itertools.cycle([t.name for t in TESTERS])

    def choose(self, job: Job, exclude: set[str], now: float) -> str:
        allowed = self.candidates(exclude)
        while (name := next(self.turn)) not in allowed:
            pass
        return name


class RandomIdle(Policy):
    """Random among the testers with a free slot (as the storer counts), else random."""

    name = "random"

    def __init__(self, sim: Simulation):
        super().__init__(sim)
        self.rng = random.Random(sim.seed * 7919 + 1)
        self.slots = {t.name: t.slots for t in TESTERS}

    def choose(self, job: Job, exclude: set[str], now: float) -> str:
        allowed = self.candidates(exclude)
        idle = [n for n in allowed if len(self.sim.in_flight[n]) < self.slots[n]]
        return self.rng.choice(idle or allowed)


class Clairvoyant(Policy):
    """Knows true run times, speeds, queues and who is down: the true earliest finish."""

    name = "clairvoyant"

    def choose(self, job: Job, exclude: set[str], now: float) -> str:
        allowed = self.candidates(exclude)
        return min(allowed, key=lambda n: (self.sim.testers[n].predicted_finish(job, now), n))


POLICIES = (EstimatedQueueTime, FewestQueued, RoundRobin, RandomIdle, Clairvoyant)


# ---------------------------------------------------------------------- simulation


class Simulation:
    def __init__(self, seed: int, stream: list[tuple[float, str, float]], horizon: float, policy: type[Policy]):
        self.seed = seed
        self.testers = {t.name: SimTester(t, horizon) for t in TESTERS}
        self.in_flight: dict[str, dict[str, Job]] = {t.name: {} for t in TESTERS}  # the storer's view
        self.jobs = [Job(f"j{i}", at, a, work, TIMEOUTS[a]) for i, (at, a, work) in enumerate(stream)]
        self.events: list[tuple[float, int, str, tuple]] = []
        self.seq = itertools.count()
        self.policy = policy(self)
        for job in self.jobs:
            self.push(job.arrival, "arrive", job)
        for tester in self.testers.values():
            if tester.down_window:
                self.push(tester.down_window[0], "down", tester)

    def push(self, when: float, kind: str, *args: object) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, args))

    def run(self) -> list[Job]:
        while self.events:
            now, _, kind, args = heapq.heappop(self.events)
            getattr(self, f"on_{kind}")(now, *args)
        return self.jobs

    # storer side

    def dispatch(self, job: Job, now: float) -> None:
        name = self.policy.choose(job, set(job.failed_on), now)
        job.token += 1
        flight = self.in_flight[name]
        ahead = [j.timeout for j in flight.values()]
        flight[job.id] = job
        self.policy.sent(name, job, now)
        tester = self.testers[name]
        if tester.is_down(now):
            self.push(now + CONNECT_TIMEOUT, "connect_failed", job, name, job.token)
            return
        self.push(now + TRANSFER, "reach", job, name, job.token, tester.epoch)
        deadline = notify_deadline(now, job.timeout, NOTIFY_MARGIN, ahead, tester.spec.slots)
        self.push(deadline, "deadline", job, name, job.token)

    def fail(self, job: Job, name: str, now: float) -> None:
        del self.in_flight[name][job.id]
        self.policy.failed(name, job, now)
        job.attempts += 1
        if name not in job.failed_on:
            job.failed_on.append(name)
        if job.attempts >= MAX_ATTEMPTS:
            job.error, job.finished = True, now
        else:
            self.dispatch(job, now)

    def on_arrive(self, now: float, job: Job) -> None:
        self.dispatch(job, now)

    def on_connect_failed(self, now: float, job: Job, name: str, token: int) -> None:
        self.fail(job, name, now)

    def on_deadline(self, now: float, job: Job, name: str, token: int) -> None:
        if job.token == token and job.finished is None:
            self.fail(job, name, now)

    def on_notify(self, now: float, job: Job, name: str, token: int, seconds: float) -> None:
        if job.token != token or job.id not in self.in_flight[name]:
            return  # a late notify for an attempt already given up
        del self.in_flight[name][job.id]
        job.finished = now
        self.policy.finished(name, job, seconds, now)

    # tester side

    def on_reach(self, now: float, job: Job, name: str, token: int, epoch: int) -> None:
        tester = self.testers[name]
        if tester.epoch != epoch or tester.is_down(now):
            return  # lost with the tester
        tester.queue.append((job, token))
        self.start_next(tester, now)

    def start_next(self, tester: SimTester, now: float) -> None:
        while tester.queue and len(tester.running) < tester.spec.slots:
            job, token = tester.queue.popleft()
            seconds = tester.runtime(job)
            tester.running[f"{job.id}/{token}"] = now + seconds
            self.push(now + seconds, "end", job, tester.name, token, tester.epoch, seconds)

    def on_end(self, now: float, job: Job, name: str, token: int, epoch: int, seconds: float) -> None:
        tester = self.testers[name]
        if tester.epoch != epoch:
            return
        del tester.running[f"{job.id}/{token}"]
        self.start_next(tester, now)
        self.on_notify(now, job, name, token, seconds)

    def on_down(self, now: float, tester: SimTester) -> None:
        tester.epoch += 1
        tester.queue.clear()
        tester.running.clear()


# ---------------------------------------------------------------------- report


@dataclass
class Figures:
    waits: list[float] = field(default_factory=list)
    makespans: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, jobs: list[Job]) -> None:
        done = [j for j in jobs if not j.error]
        self.errors += len(jobs) - len(done)
        self.waits.extend(j.finished - j.arrival for j in done)
        self.makespans.append(max(j.finished for j in jobs) - min(j.arrival for j in jobs))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.waits)

    @property
    def p95(self) -> float:
        ordered = sorted(self.waits)
        return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]

    @property
    def makespan(self) -> float:
        return statistics.fmean(self.makespans)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="independent runs (seeds 1..N), pooled")
    parser.add_argument("--hours", type=float, default=3.0, help="arrival horizon per run")
    parser.add_argument("--load", type=float, default=0.8, help="offered load / capacity with every tester up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the scheduler logs every simulated failure

    horizon = args.hours * 3600
    rate = args.load * capacity() / mean_work()
    described = [f"{t.name}({t.slots} slots, speed {t.speed}" + (f", down {t.down}" if t.down else "") + ")" for t in TESTERS]
    print("testers: " + ", ".join(described))
    print(f"capacity {capacity():.1f} work-s/s, mean job {mean_work():.1f} s at speed 1, "
          f"load {args.load:.2f} -> {rate * 3600:.0f} jobs/h, {args.hours:g} h, seeds 1..{args.seeds}")
    figures = {p.name: Figures() for p in POLICIES}
    for seed in range(1, args.seeds + 1):
        stream = arrivals(seed, horizon, args.load)
        for policy in POLICIES:
            figures[policy.name].add(Simulation(seed, stream, horizon, policy).run())
    print(f"{'policy':<12} {'jobs':>6} {'errors':>6} {'mean wait':>10} {'p95 wait':>10} {'makespan':>10}")
    for name, f in figures.items():
        print(f"{name:<12} {len(f.waits):>6} {f.errors:>6} {f.mean:>9.1f}s {f.p95:>9.1f}s {f.makespan:>9.0f}s")
    ours = figures[EstimatedQueueTime.name]
    ratios = {other: ours.mean / figures[other].mean for other in ("fewest", "round_robin", "random", "clairvoyant")}
    print(" ".join(f"mean_wait_vs_{k}={v:.3f}" for k, v in ratios.items())
          + f" mean_wait_s={ours.mean:.1f} p95_wait_s={ours.p95:.1f} makespan_s={ours.makespan:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
