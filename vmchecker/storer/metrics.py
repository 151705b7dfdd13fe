"""The storer daemon's Prometheus metrics: the one home of their objects.

The dispatcher and the landing call the small functions here at the job's moves (each
:func:`~vmchecker.metrics.guarded`: a metric never fails a job); what is a state rather
than an event is read when Prometheus scrapes (:func:`gauges`), from the journal and the
courses' schedulers, so nothing has to be kept in step. Served by :func:`serve` on the
global config's ``daemon.metrics_listen``.

Events (counters and histograms, since the daemon started):

* ``vmchecker_jobs_finished_total{course,assignment,backend,state}``: jobs that ended
  ``done`` or ``error``;
* ``vmchecker_queue_wait_seconds{course,assignment,backend}``: from ``queue_task`` to the
  job's first sending (a retry's wait is not counted again);
* ``vmchecker_run_seconds{course,assignment,backend}``: the tester's evaluation time of a
  job that landed (the figure the scheduler learns from);
* ``vmchecker_job_failures_total{course,tester,reason,outcome}``: failed attempts, by
  what failed (``reason``: deadline, send, tester_error, bad_results, lost, unusable,
  bundle, superseded) and whether the job was ``retried`` or ``gave_up``;
* ``vmchecker_result_fetch_seconds{course,tester}``: pulling a job's results over SFTP
  once its notify arrived.

States (gauges, at scrape time):

* ``vmchecker_jobs{course,assignment,state}``: the journal's jobs by state;
* ``vmchecker_tester_slots``, ``vmchecker_tester_slots_busy``, ``vmchecker_tester_jobs_in_flight``,
  ``vmchecker_tester_healthy`` ``{course,tester}``: the scheduler's view of each tester;
* ``vmchecker_tester_estimated_wait_seconds{course,tester,assignment}``: when a job of the
  assignment sent there now would be expected to finish (what the scheduler compares).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from vmchecker import metrics
from vmchecker.contract import JobState, Stage
from vmchecker.errors import VmcheckerError

if TYPE_CHECKING:
    from vmchecker.storer.courses import Course, Courses
    from vmchecker.storer.journal import Job, Journal

REGISTRY = CollectorRegistry(auto_describe=True)
_JOB = ("course", "assignment", "backend")

FINISHED = Counter("vmchecker_jobs_finished_total", "Jobs that ended, by final state (done or error)",
                   [*_JOB, "state"], registry=REGISTRY)
QUEUE_WAIT = Histogram("vmchecker_queue_wait_seconds", "From queue_task to the job's first sending to a tester",
                       _JOB, buckets=metrics.WAIT_BUCKETS, registry=REGISTRY)
RUN = Histogram("vmchecker_run_seconds", "A landed job's evaluation time on its tester", _JOB,
                buckets=metrics.JOB_BUCKETS, registry=REGISTRY)
FAILURES = Counter("vmchecker_job_failures_total", "Failed attempts, by what failed and whether the job was"
                   " retried or given up", ["course", "tester", "reason", "outcome"], registry=REGISTRY)
FETCH = Histogram("vmchecker_result_fetch_seconds", "Pulling a job's results from its tester after its notify",
                  ["course", "tester"], buckets=metrics.LATENCY_BUCKETS, registry=REGISTRY)


def _backend(course: Course | None, job: Job) -> str:
    """The machine type (lxc, kvm, ...) the job runs on; ``unknown`` if the course cannot say."""
    if course is None:
        return "unknown"
    machine = course.config.machines.get(job.machine)
    return machine.type if machine is not None else "unknown"


@metrics.guarded
def job_sent(course: Course | None, job: Job) -> None:
    """The journal holds ``job`` as sent: its first sending ends its wait in the queue."""
    if job.attempts == 0 and job.sent is not None:
        QUEUE_WAIT.labels(job.course, job.assignment, _backend(course, job)).observe(max(job.sent - job.created, 0.0))


@metrics.guarded
def job_done(course: Course | None, job: Job, seconds: float, stages: Mapping[Stage, float]) -> None:
    """``job`` landed: ``seconds`` of evaluation on its tester; ``stages`` the moments its
    landing recorded (when the notify arrived, when the results were fetched)."""
    labels = (job.course, job.assignment, _backend(course, job))
    FINISHED.labels(*labels, JobState.DONE.value).inc()
    if seconds <= 0 and job.sent is not None:   # the tester did not say: the storer's view
        seconds = time.time() - job.sent
    RUN.labels(*labels).observe(max(seconds, 0.0))
    received, fetched = stages.get(Stage.NOTIFY_RECEIVED), stages.get(Stage.RESULTS_FETCHED)
    if received is not None and fetched is not None:
        FETCH.labels(job.course, job.tester or "").observe(max(fetched - received, 0.0))


@metrics.guarded
def job_failed(course: Course | None, job: Job, tester: str | None, reason: str) -> None:
    """An attempt of ``job`` failed for ``reason`` (one word, see the module docstring);
    ``job`` is as the journal left it: queued again (retried) or in error (given up)."""
    gave_up = job.state is JobState.ERROR
    FAILURES.labels(job.course, tester or "", reason, "gave_up" if gave_up else "retried").inc()
    if gave_up:
        FINISHED.labels(job.course, job.assignment, _backend(course, job), JobState.ERROR.value).inc()


# --------------------------------------------------------------------------- scrape time


def gauges(journal: Journal, courses: Courses) -> Iterable[Metric]:
    """The states, read now: jobs by state from the journal, each loaded course's testers
    from its scheduler (a course not loaded yet, or broken, is left out)."""
    jobs = GaugeMetricFamily("vmchecker_jobs", "Jobs in the journal, by state", labels=["course", "assignment", "state"])
    for (course, assignment, state), count in sorted(journal.tally().items()):
        jobs.add_metric([course, assignment, state.value], count)
    yield jobs
    tester = ["course", "tester"]
    slots = GaugeMetricFamily("vmchecker_tester_slots", "Jobs a tester runs at once", labels=tester)
    busy = GaugeMetricFamily("vmchecker_tester_slots_busy", "A tester's slots holding a job sent and not notified",
                             labels=tester)
    in_flight = GaugeMetricFamily("vmchecker_tester_jobs_in_flight", "Jobs sent to a tester and not yet notified"
                                  " (running or waiting in its queue)", labels=tester)
    healthy = GaugeMetricFamily("vmchecker_tester_healthy", "1 unless the tester's last job failed", labels=tester)
    wait = GaugeMetricFamily("vmchecker_tester_estimated_wait_seconds", "Seconds until a job of the assignment sent"
                             " to the tester now is expected to finish", labels=[*tester, "assignment"])
    now = time.time()
    for course in sorted(courses.loaded(), key=lambda c: c.id):
        for state in course.scheduler.testers():
            names = [course.id, state.name]
            slots.add_metric(names, state.slots)
            busy.add_metric(names, min(len(state.in_flight), state.slots))
            in_flight.add_metric(names, len(state.in_flight))
            healthy.add_metric(names, 1 if state.healthy else 0)
            for assignment_id, assignment in sorted(course.config.assignments.items()):
                if assignment.submit_only or not state.serves(assignment.machine):
                    continue
                try:
                    wait.add_metric([*names, assignment_id],
                                    course.scheduler.expected_finish(state.name, assignment_id, now))
                except VmcheckerError:
                    continue   # the config changed under the scheduler: no estimate this time
    yield from (slots, busy, in_flight, healthy, wait)


def serve(listen: str, journal: Journal, courses: Courses) -> metrics.Exporter | None:
    """Serve the daemon's metrics on ``listen`` (None when off or when it cannot)."""
    return metrics.serve(listen, REGISTRY, lambda: gauges(journal, courses), "storer daemon")
