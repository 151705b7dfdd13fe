"""What a tester takes for an assignment: ``Et_q(a)``, as the scheduler learns it.

:class:`Estimate` is one tester and assignment's running mean of measured evaluation
times, with failures counted in as samples of a penalty time (the thesis's estimate), and
the two departures ``bench/scheduler.py`` measured:

* The running mean is windowed: the plain mean of the first ``window`` samples, then an
  exponential mean of weight ``1/window``. A plain mean over a semester stops moving: a
  tester with a thousand good samples would absorb failures unnoticed.
* The penalty part of an estimate (its excess over the mean of measured times) halves
  every half-life after the last failure, and a success ends it. Without the halving a
  recovered tester gets work back only when every other tester is loaded past its
  penalised estimate, which at ordinary load may be never; with it the tester is tried
  again after a while, and if it is still broken that try is one more penalty sample, so
  a dead tester sees ever fewer jobs. A success ends the penalty because the tester has
  just done the job: kept in the running mean, a penalty outlived the failure, diluted by
  one ``window``-th per success and fading only by the clock, so work came back to a
  recovered tester slowly while the others' queues grew.

:class:`Speeds` is the guess for a pair never measured. Each pair learns only from its own
jobs and only when chosen, so before its first job a pair sat at the assignment's timeout,
and a tester never tried on an assignment never got the job that would have taught it
better. Evaluation times are close to a product, how slow the tester is times how big the
assignment is, so the pairs measured so far give both factors and their product is the
guess: a tester never measured counts as an average one, an assignment never measured on
any tester keeps its configured guess or its timeout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_WINDOW = 20
FIT_ROUNDS = 200       # a bound: the fit usually settles within a few dozen
FIT_TOLERANCE = 1e-9   # in log seconds


@dataclass(frozen=True)
class Estimate:
    """``Et_q(a)`` for one tester and assignment.

    ``mean`` is the running mean of every sample since the last success, penalties
    included (the thesis's value); ``measured`` that of measured evaluation times only
    (None before the first); ``penalised_at`` when the last penalty sample was taken,
    None once a success ended the penalty. The excess of ``mean`` over ``measured`` is the
    penalty part: it halves every ``half_life`` seconds after the last failure
    (:meth:`value`)."""

    mean: float
    count: int = 0
    measured: float | None = None
    measured_count: int = 0
    penalised_at: float | None = None

    def add(self, sample: float, window: int = DEFAULT_WINDOW) -> Estimate:
        """The estimate after one more measured evaluation time: the running mean of the
        measured times, the penalty (if any) ended."""
        count = self.measured_count + 1
        measured = sample if self.measured is None else _step(self.measured, sample, count, window)
        return Estimate(measured, count, measured, count, None)

    def penalise(self, penalty: float, now: float, window: int = DEFAULT_WINDOW) -> Estimate:
        """The estimate after one failure, counted as a sample of ``penalty`` seconds."""
        count = self.count + 1
        return Estimate(_step(self.mean, penalty, count, window), count, self.measured, self.measured_count, now)

    def value(self, now: float, half_life: float, prior: float) -> float:
        """Et at time ``now``; ``prior`` stands in for ``measured`` before any measurement."""
        base = prior if self.measured is None else self.measured
        excess = self.mean - base
        if excess <= 0 or self.penalised_at is None or half_life <= 0:
            return self.mean
        return base + excess * 0.5 ** (max(now - self.penalised_at, 0.0) / half_life)


def _step(mean: float, sample: float, count: int, window: int) -> float:
    """Windowed running mean: plain mean of the first ``window`` samples, then
    exponential with weight ``1/window``."""
    return mean + (sample - mean) / min(count, window)


@dataclass(frozen=True)
class Speeds:
    """``log Et_q(a) = slowness[q] + size[a]``, fitted to the measured pairs.

    The fit is a least-squares one in logarithms, by alternating means: each assignment's
    size is the mean of its pairs' log times less their testers' slowness, each tester's
    slowness the mean of its pairs' log times less their assignments' sizes, the slowness
    kept centred on 0 (an average tester). Every measured pair counts once, however many
    jobs it has seen: an unlucky first sample of one pair moves the factors little."""

    slowness: Mapping[str, float]
    size: Mapping[str, float]

    @classmethod
    def fit(cls, measured: Mapping[tuple[str, str], float]) -> Speeds:
        """From ``(tester, assignment) -> mean measured seconds`` (positive values only):
        rounds until no factor moves by more than :data:`FIT_TOLERANCE` (at most
        :data:`FIT_ROUNDS`)."""
        logs = {pair: math.log(seconds) for pair, seconds in measured.items() if seconds > 0}
        slowness = {tester: 0.0 for tester, _ in logs}
        size = {assignment: 0.0 for _, assignment in logs}
        for _ in range(FIT_ROUNDS):
            before = size
            size = _means([(a, x - slowness[t]) for (t, a), x in logs.items()])
            slowness = _means([(t, x - size[a]) for (t, a), x in logs.items()])
            centre = sum(slowness.values()) / len(slowness) if slowness else 0.0
            slowness = {t: s - centre for t, s in slowness.items()}
            size = {a: s + centre for a, s in size.items()}
            if all(abs(size[a] - before[a]) <= FIT_TOLERANCE for a in size):
                break
        return cls(slowness, size)

    def guess(self, tester: str, assignment: str) -> float | None:
        """Et of a pair from the factors; None for an assignment never measured."""
        if assignment not in self.size:
            return None
        return math.exp(self.slowness.get(tester, 0.0) + self.size[assignment])


def _means(values: Iterable[tuple[str, float]]) -> dict[str, float]:
    """The mean of the values per key."""
    found: dict[str, list[float]] = {}
    for key, value in values:
        found.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in found.items()}
