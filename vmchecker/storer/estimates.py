"""What a tester takes for an assignment: ``Et_q(a)``, as the scheduler learns it.

:class:`Estimate` is one tester and assignment's running mean of measured evaluation
times, with failures counted in as samples of a penalty time (the thesis's estimate), and
the two departures ``bench/scheduler.py`` measured:

* The running mean is windowed: the plain mean of the first ``window`` samples, then an
  exponential mean of weight ``1/window``. A plain mean over a semester stops moving: a
  tester with a thousand good samples would absorb failures unnoticed.
* The penalty part of an estimate (its excess over the mean of measured times) halves
  every half-life after the last failure. Without this a recovered tester gets work back
  only when every other tester is loaded past its penalised estimate, which at ordinary
  load may be never (in the benchmark the tester that was down stayed mostly idle for the
  rest of the run). With it the tester is tried again after a while; if it is still
  broken that try is one more penalty sample, so a dead tester sees ever fewer jobs, and
  a live one gets its share back within a few half-lives.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WINDOW = 20


@dataclass(frozen=True)
class Estimate:
    """``Et_q(a)`` for one tester and assignment.

    ``mean`` is the running mean of every sample, penalties included (the thesis's
    value); ``measured`` that of measured evaluation times only (None before the
    first); ``penalised_at`` when the last penalty sample was taken. The excess of
    ``mean`` over ``measured`` is the penalty part: it halves every ``half_life``
    seconds after the last failure (:meth:`value`)."""

    mean: float
    count: int = 0
    measured: float | None = None
    measured_count: int = 0
    penalised_at: float | None = None

    def add(self, sample: float, window: int = DEFAULT_WINDOW) -> Estimate:
        """The estimate after one more measured evaluation time."""
        count, measured_count = self.count + 1, self.measured_count + 1
        measured = sample if self.measured is None else _step(self.measured, sample, measured_count, window)
        return Estimate(_step(self.mean, sample, count, window), count, measured, measured_count, self.penalised_at)

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
