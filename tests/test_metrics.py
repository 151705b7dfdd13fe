"""The Prometheus endpoints of the storer daemon and the queue manager, without Prometheus:
what they serve, that they are off unless configured, that a metric can never fail the
job path. tests/test_prometheus.py has a real Prometheus scrape a real job's."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.util import free_port, write_course
from vmchecker import config, metrics, tester_config
from vmchecker.contract import JobState, Stage
from vmchecker.errors import ConfigError
from vmchecker.storer import metrics as storer_metrics
from vmchecker.storer.journal import Journal
from vmchecker.tester import metrics as tester_metrics


def scrape(exporter: metrics.Exporter) -> dict[tuple[str, tuple], float]:
    """``(sample name, sorted labels) -> value`` of everything the endpoint serves now."""
    with urllib.request.urlopen(exporter.url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


class NoCourses:
    def loaded(self) -> list:
        return []


def test_off_unless_configured():
    assert metrics.serve("", storer_metrics.REGISTRY, None, "test") is None


def test_an_address_in_use_leaves_the_process_without_metrics(caplog):
    first = metrics.serve("127.0.0.1:0", storer_metrics.REGISTRY, None, "first")
    try:
        with caplog.at_level(logging.ERROR, logger="vmchecker.metrics"):
            assert metrics.serve(f"127.0.0.1:{first.port}", storer_metrics.REGISTRY, None, "second") is None
        assert "cannot serve metrics" in caplog.text
    finally:
        first.close()


def test_the_daemon_serves_its_jobs_by_state_and_its_events(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    exporter = storer_metrics.serve("127.0.0.1:0", journal, NoCourses())
    try:
        done = journal.enqueue("so", "1-hello", "bob", "s1", "linux")
        journal.enqueue("so", "1-hello", "ann", "s2", "linux")
        journal.mark_sent(done.id, "t1", deadline=9e9)
        sent = journal.get(done.id)
        storer_metrics.job_sent(None, sent)
        journal.mark_done(done.id)
        storer_metrics.job_done(None, sent, 2.5, {Stage.NOTIFY_RECEIVED: 100.0, Stage.RESULTS_FETCHED: 100.25})
        samples = scrape(exporter)
    finally:
        exporter.close()
        journal.close()
    job = {"course": "so", "assignment": "1-hello"}
    assert samples[key("vmchecker_jobs", **job, state="done")] == 1
    assert samples[key("vmchecker_jobs", **job, state="queued")] == 1
    assert samples[key("vmchecker_jobs_finished_total", **job, backend="unknown", state=JobState.DONE.value)] >= 1
    assert samples[key("vmchecker_run_seconds_count", **job, backend="unknown")] >= 1
    assert samples[key("vmchecker_queue_wait_seconds_count", **job, backend="unknown")] >= 1
    assert samples[key("vmchecker_result_fetch_seconds_count", course="so", tester="t1")] >= 1
    assert any(name == "process_open_fds" for name, _labels in samples)   # the process's own


def test_the_queue_manager_serves_its_slots_and_its_jobs():
    load = {"slots": 2, "busy": 1, "waiting": 3, "pending": 0}
    exporter = tester_metrics.serve("127.0.0.1:0", "t9", lambda: load)
    try:
        tester_metrics.job_finished("done", {"tester": "t9", "backend": "lxc", "guest_start_s": 0.4,
                                             "tester_seconds": 1.5, "at_received": 10.0, "at_slot_taken": 12.0})
        tester_metrics.notified({"tester": "t9", "at_results_durable": 1.0}, "accepted", 0.01)
        samples = scrape(exporter)
    finally:
        exporter.close()
    assert samples[key("vmchecker_tester_slots", tester="t9")] == 2
    assert samples[key("vmchecker_tester_slots_busy", tester="t9")] == 1
    assert samples[key("vmchecker_tester_bundles_waiting", tester="t9")] == 3
    job = {"tester": "t9", "backend": "lxc"}
    assert samples[key("vmchecker_tester_jobs_total", **job, status="done")] >= 1
    assert samples[key("vmchecker_guest_start_seconds_count", **job)] >= 1
    assert samples[key("vmchecker_tester_queue_wait_seconds_sum", **job)] >= 2
    assert samples[key("vmchecker_notify_seconds_count", tester="t9", outcome="accepted")] >= 1
    assert samples[key("vmchecker_notify_delay_seconds_count", tester="t9")] >= 1


def test_a_metric_never_raises_into_the_job_path(caplog):
    """A bug in a metric (here: a job that is not one) is logged once, never raised."""
    with caplog.at_level(logging.WARNING, logger="vmchecker.metrics"):
        assert storer_metrics.job_done(None, object(), 1.0, {}) is None
        assert tester_metrics.job_finished("done", None) is None
    assert "failed; the job goes on without it" in caplog.text


def test_a_failing_gauge_leaves_the_rest_of_the_scrape():
    def broken():
        raise RuntimeError("the journal is closed")
        yield

    exporter = metrics.serve("127.0.0.1:0", tester_metrics.REGISTRY, broken, "test")
    try:
        samples = scrape(exporter)
    finally:
        exporter.close()
    assert any(name == "process_open_fds" for name, _labels in samples)


def test_the_port_is_free_again_after_close():
    port = free_port()
    for _ in range(2):
        exporter = metrics.serve(f"127.0.0.1:{port}", tester_metrics.REGISTRY, None, "test")
        assert exporter is not None and exporter.port == port
        exporter.close()


@pytest.mark.parametrize("value, error", [
    ("127.0.0.1:9464", None), ("", None), ("[::1]:9464", None),
    ("9464", "expected HOST:PORT"), ("127.0.0.1:19999", "daemon.listen too"),
])
def test_daemon_metrics_listen_is_checked(tmp_path, value, error):
    write_course(tmp_path)
    glob = tmp_path / "global.yaml"
    glob.write_text(yaml.safe_dump({**yaml.safe_load(glob.read_text()), "daemon": {"metrics_listen": value}}))
    if error is None:
        assert config.load_global(glob).daemon.metrics_listen == value
    else:
        with pytest.raises(ConfigError, match=error) as raised:
            config.load_global(glob)
        assert "daemon.metrics_listen" in str(raised.value)


def test_tester_metrics_listen_is_checked(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"tester": {"metrics_listen": "127.0.0.1:9465"}}))
    assert tester_config.load_tester(path).tester.metrics_listen == "127.0.0.1:9465"
    path.write_text(yaml.safe_dump({"tester": {"metrics_listen": "localhost"}}))
    with pytest.raises(ConfigError, match="tester.metrics_listen"):
        tester_config.load_tester(path)


def test_the_daemon_command_line_overrides_the_global_file(tmp_path):
    """``--metrics-listen`` (what the demo passes) wins over ``daemon.metrics_listen``;
    a bad one stops the start with the reason."""
    from vmchecker.cli import storer_daemon
    from vmchecker.errors import VmcheckerError
    from vmchecker.storer.daemon import StorerDaemon

    write_course(tmp_path)
    args = storer_daemon.build_parser().parse_args(["--metrics-listen", "127.0.0.1:9"])
    assert args.metrics_listen == "127.0.0.1:9"
    daemon = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state",
                          metrics_listen="127.0.0.1:9")
    try:
        assert daemon.metrics_listen == "127.0.0.1:9"
    finally:
        daemon.server.server_close()
        daemon.journal.close()
    with pytest.raises(VmcheckerError, match="bad listen address"):
        StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state",
                     metrics_listen="nowhere")
