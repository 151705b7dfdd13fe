"""The queue manager's Prometheus metrics: the one home of their objects.

The queue manager calls :func:`job_finished` once a job's results are durable, the
notifier :func:`notified` after each notify call (both
:func:`~vmchecker.metrics.guarded`: a metric never fails a job or a notification); the
state of the slots and queues is read when Prometheus scrapes (:func:`gauges`). Served by
:func:`serve` on the tester config's ``tester.metrics_listen``. Every series carries the
tester's name (``tester.name``), so several queue managers sum up cleanly.

Events (since the queue manager started):

* ``vmchecker_tester_jobs_total{tester,backend,status}``: jobs run, by the status reported;
* ``vmchecker_tester_queue_wait_seconds{tester,backend}``: from the bundle's arrival in
  ``queue/`` to a slot taking it;
* ``vmchecker_tester_job_seconds{tester,backend}``: a slot's time on the job (unpack,
  executor, results);
* ``vmchecker_guest_start_seconds{tester,backend}``: revert and start of the guest until it
  answers (what the executor's ``result.json`` says; a warm guest's is near 0);
* ``vmchecker_notify_seconds{tester,outcome}``: one notify call to the storer, answered
  (``accepted``, ``refused``) or not (``failed``, to be retried);
* ``vmchecker_notify_delay_seconds{tester}``: from the results being durable to the storer
  accepting the notification (retries and a storer that was down included).

States (gauges, at scrape time): ``vmchecker_tester_slots``, ``vmchecker_tester_slots_busy``,
``vmchecker_tester_bundles_waiting`` (in ``queue/``, no slot yet) and
``vmchecker_tester_notifications_pending`` ``{tester}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from vmchecker import metrics
from vmchecker.contract import STAGE_STAT_PREFIX, Stage

REGISTRY = CollectorRegistry(auto_describe=True)
_JOB = ("tester", "backend")

JOBS = Counter("vmchecker_tester_jobs_total", "Jobs run on this tester, by the status reported", [*_JOB, "status"],
               registry=REGISTRY)
QUEUE_WAIT = Histogram("vmchecker_tester_queue_wait_seconds", "From a bundle's arrival in queue/ to a slot taking it",
                       _JOB, buckets=metrics.WAIT_BUCKETS, registry=REGISTRY)
JOB_TIME = Histogram("vmchecker_tester_job_seconds", "A slot's time on one job", _JOB, buckets=metrics.JOB_BUCKETS,
                     registry=REGISTRY)
GUEST_START = Histogram("vmchecker_guest_start_seconds", "Revert and start of a job's guest until it answers", _JOB,
                        buckets=metrics.START_BUCKETS, registry=REGISTRY)
NOTIFY = Histogram("vmchecker_notify_seconds", "One notify call to the storer daemon, by its outcome",
                   ["tester", "outcome"], buckets=metrics.LATENCY_BUCKETS, registry=REGISTRY)
NOTIFY_DELAY = Histogram("vmchecker_notify_delay_seconds", "From a job's results being durable to the storer"
                         " accepting its notification", ["tester"], buckets=metrics.WAIT_BUCKETS, registry=REGISTRY)


def _number(stats: Mapping[str, Any], key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@metrics.guarded
def job_finished(status: str, stats: Mapping[str, Any]) -> None:
    """A job's results are durable: ``status`` and the ``stats`` its notification carries
    (the tester's name, the executor's ``backend`` and ``guest_start_s``, the slot's
    ``tester_seconds``, the stages ``at_received`` and ``at_slot_taken``)."""
    labels = (str(stats.get("tester", "")), str(stats.get("backend") or "unknown"))
    JOBS.labels(*labels, status).inc()
    received = _number(stats, STAGE_STAT_PREFIX + Stage.RECEIVED)
    taken = _number(stats, STAGE_STAT_PREFIX + Stage.SLOT_TAKEN)
    if received is not None and taken is not None:
        QUEUE_WAIT.labels(*labels).observe(max(taken - received, 0.0))
    for histogram, key in ((JOB_TIME, "tester_seconds"), (GUEST_START, "guest_start_s")):
        value = _number(stats, key)
        if value is not None:
            histogram.labels(*labels).observe(value)


@metrics.guarded
def notified(stats: Mapping[str, Any], outcome: str, seconds: float) -> None:
    """A notify call ended after ``seconds``: ``accepted``, ``refused`` or ``failed``;
    ``stats`` are the notification's (its tester, when its results became durable)."""
    tester = str(stats.get("tester", ""))
    NOTIFY.labels(tester, outcome).observe(max(seconds, 0.0))
    durable = _number(stats, STAGE_STAT_PREFIX + Stage.RESULTS_DURABLE)
    if outcome == "accepted" and durable is not None:
        NOTIFY_DELAY.labels(tester).observe(max(time.time() - durable, 0.0))


def gauges(tester: str, load: Callable[[], Mapping[str, int]]) -> Iterable[Metric]:
    """The queue manager's state now: ``load()`` gives ``slots``, ``busy``, ``waiting``
    and ``pending`` (notifications not yet answered)."""
    now = load()
    for name, key, text in (
        ("vmchecker_tester_slots", "slots", "Jobs this tester runs at once"),
        ("vmchecker_tester_slots_busy", "busy", "Slots running a job"),
        ("vmchecker_tester_bundles_waiting", "waiting", "Bundles in queue/ waiting for a slot"),
        ("vmchecker_tester_notifications_pending", "pending", "Notifications the storer has not yet answered"),
    ):
        family = GaugeMetricFamily(name, text, labels=["tester"])
        family.add_metric([tester], now[key])
        yield family


def serve(listen: str, tester: str, load: Callable[[], Mapping[str, int]]) -> metrics.Exporter | None:
    """Serve the queue manager's metrics on ``listen`` (None when off or when it cannot)."""
    return metrics.serve(listen, REGISTRY, lambda: gauges(tester, load), f"queue manager {tester}")
