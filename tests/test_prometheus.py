"""What a monitoring system sees: a real Prometheus scrapes the storer daemon and the queue
manager while one real job goes through the whole path, and its query API tells the job.

Nothing stands in: the storer daemon and the queue manager are processes started from
their commands, each serving metrics on the loopback address its config names
(``daemon.metrics_listen``, ``tester.metrics_listen``); the storer reaches the tester
through a real sshd on loopback; the job runs in an LXC clone of the base container; the
submission goes through ``vmchecker-submit``; Debian's ``prometheus`` scrapes both every
second. The daemon logs in JSON (``--log-format json``), as a log shipper would read it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.executor import grading_cases as cases
from tests.lab import lxc_unusable, prometheus, sshd
from tests.lab.prometheus import PrometheusServer
from tests.util import free_port, make_zip, stop_process, wait_for, wait_for_port, write_course
from vmchecker import config
from vmchecker.repo import Repository

pytestmark = [pytest.mark.lxc, pytest.mark.sshd, pytest.mark.prometheus]

BASE = "vmchecker-base"
START_WAIT = 30      # seconds for a process to listen
GRADED_WAIT = 300    # seconds for the job to be graded
SCRAPED_WAIT = 60    # seconds for Prometheus to have scraped what the job changed


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[dict[str, list[str]]], PrometheusServer]]:
    """``prometheus_server(targets)`` starts a Prometheus scraping ``targets`` each second;
    stopped, and its data removed, after the test."""
    reason = prometheus.available()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "prometheus"
    folder.mkdir()
    started: list[PrometheusServer] = []

    def start(targets: dict[str, list[str]]) -> PrometheusServer:
        server = PrometheusServer(folder, targets)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()
    assert not (folder / "data").exists()


class Process:
    """A vmchecker command in the background, logging to a file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=self._log, stderr=self._log, env=env,
                                     stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self._log.close()


def _course(root: Path, ssh: sshd.SshServer, tester: Path, listen: str, metrics: str) -> config.CourseConfig:
    """Course ``so`` on tester t1 (the loopback sshd, an LXC machine); the global file
    names the daemon's address, state and metrics address."""
    path = write_course(root, extra={
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00"},
        "testers": {"t1": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user, "queue": str(tester / "queue"),
                           "done": str(tester / "done"), "slots": 1}},
        "machines": {"linux": {"type": "lxc", "vm": BASE, "testers": ["t1"],
                               "limits": {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}}},
        "assignments": {"defaults": {"timeout": 60, "min_interval": 0},
                        "1-hello": {"deadline": "2099-03-01 23:55:00", "machine": "linux"}},
    })
    glob = root / "global.yaml"
    glob.write_text(yaml.safe_dump({**yaml.safe_load(glob.read_text()),
                                    "daemon": {"listen": listen, "state": str(root / "state"),
                                               "metrics_listen": metrics}}))
    course_dir = path.parent
    (course_dir / "build.sh").write_text(cases.BUILD_SH)
    (course_dir / "run.sh").write_text(cases.run_sh())
    make_zip(course_dir / "tests" / "1-hello.zip", cases.TESTS)
    keys = course_dir / "keys"
    keys.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
    (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
    return config.load_course(path)


def test_prometheus_scrapes_a_real_job(tmp_path, prometheus_server):
    reason = sshd.available() or lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    port, storer_metrics, tester_metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "VMCHECKER_CONFIG": str(tmp_path / "global.yaml")}
    running: list[Process] = []
    with sshd.SshServer() as ssh:
        tester = sshd.tester_folder(ssh, "vmck-prometheus-tester-")
        try:
            course = _course(tmp_path, ssh, tester, f"127.0.0.1:{port}", f"127.0.0.1:{storer_metrics}")
            tester_cfg = yaml.safe_load((tester / "config.yaml").read_text())
            tester_cfg["tester"]["metrics_listen"] = f"127.0.0.1:{tester_metrics}"
            (tester / "config.yaml").write_text(yaml.safe_dump(tester_cfg))

            daemon = Process(["vmchecker.cli.storer_daemon", "--poll", "0.5", "--log-format", "json"],
                             tmp_path / "daemon.log", env)
            running.append(daemon)
            queue_manager = Process(["vmchecker.cli.queue_manager", str(tester)], tmp_path / "queue-manager.log", env)
            running.append(queue_manager)
            for proc, metrics_port, what in ((daemon, port, "the storer daemon"),
                                             (daemon, storer_metrics, "the daemon's metrics"),
                                             (queue_manager, tester_metrics, "the queue manager's metrics")):
                wait_for_port(proc.proc, metrics_port, START_WAIT, what)
            server = prometheus_server({"storer": [f"127.0.0.1:{storer_metrics}"],
                                        "tester": [f"127.0.0.1:{tester_metrics}"]})
            wait_for(lambda: server.value('sum(up{job=~"storer|tester"})') == 2, "both targets to be up",
                     SCRAPED_WAIT, interval=0.5)

            archive = make_zip(tmp_path / "hello.zip", cases.CORRECT)
            subprocess.run([sys.executable, "-m", "vmchecker.cli.submit", "--skip-time-checks", "so", "1-hello", "bob",
                            str(archive)], env=env, check=True, capture_output=True)

            def graded():
                sub = Repository(course).current("1-hello", "bob")
                return sub if sub.status().value in ("done", "error") else None

            sub = wait_for(graded, "the job to be graded", GRADED_WAIT, interval=0.3)
            assert sub.status().value == "done", (sub.results_dir / "vmchecker-stderr.vmr").read_text()

            finished = ('vmchecker_jobs_finished_total{job="storer",course="so",assignment="1-hello",backend="lxc",'
                        'state="done"}')
            assert wait_for(lambda: server.value(finished), "Prometheus to scrape the finished job", SCRAPED_WAIT,
                            interval=0.5) == 1
            ran = 'vmchecker_tester_jobs_total{job="tester",tester="t1",backend="lxc",status="done"}'
            assert wait_for(lambda: server.value(ran), "Prometheus to scrape the tester's job", SCRAPED_WAIT,
                            interval=0.5) == 1
            assert server.value('vmchecker_jobs{job="storer",course="so",assignment="1-hello",state="done"}') == 1
            assert server.value('vmchecker_guest_start_seconds_count{job="tester",backend="lxc"}') == 1
        finally:
            for proc in reversed(running):
                proc.stop()
            shutil.rmtree(tester, ignore_errors=True)
    records = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines() if line.strip()]
    assert any(r["logger"] == "vmchecker.metrics" and f":{storer_metrics}/metrics" in r["message"] for r in records)
