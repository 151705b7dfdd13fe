"""The whole system across real hosts: a storer and two testers in network namespaces.

Everything is real: the storer daemon (a process on the bridge address), one sshd and
one queue manager per tester namespace, LXC guests built from the base container,
submissions through ``vmchecker-submit``. The testers reach the storer only through
notify(); the storer pushes bundles and pulls results over SFTP.

Scenarios run in order on one lab (building it costs seconds): graded end to end;
a slower tester (CPU-capped guests) getting fewer jobs; a tester that is down getting
none and its jobs finishing on the other; kill -9 of the daemon mid-stream and of a
queue manager mid-job losing nothing; a storer that is down when a job finishes
getting the results once it is back; queue_task refused from a tester's address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import xmlrpc.client
from pathlib import Path

import pytest
import yaml

from tests.lab import lxc_unusable, netns, skip_unless_lab, sshd
from tests.util import HELLO_C, HELLO_MAKEFILE, free_port, make_zip, wait_for
from vmchecker import config
from vmchecker.repo import Repository

pytestmark = [pytest.mark.lxc, pytest.mark.netns, pytest.mark.sshd]

BASE = "vmchecker-base"
# The student's programs run as the student (vmchecker-run); an empty grade file is full points.
RUN_SH = """#!/bin/bash
if [ -f spin ]; then vmchecker-run ./spin; fi
out=$(vmchecker-run ./hello)
if [ "$out" = "Hello, world!" ]; then echo PASS; : > "$VMCHECKER_GRADE"
else echo FAIL; echo "-10: wrong output" > "$VMCHECKER_GRADE"; fi
"""
SPIN_C = ("#include <stdio.h>\nint main(void){volatile unsigned long x=0;"
          " for(unsigned long i=0;i<400000000UL;i++) x+=i; return x==1;}\n")


POLL = 0.3   # seconds between looks at the repository (each look loads the course)


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, what, timeout, interval=POLL)


class LabTester:
    """One tester host: a namespace with sshd and a queue manager."""

    def __init__(self, network: netns.LabNetwork, name: str, daemon_url: str, course_pub: str,
                 logs: Path, overrides: dict | None = None):
        self.name = name
        self.host = network.add_host(name)
        self.ssh = sshd.SshServer(self.host, authorized_keys=[course_pub]).start()
        # Not under the sshd's folder: stopping that sshd ends every process using it.
        self.root = Path(tempfile.mkdtemp(prefix=f"vmck-e2e-{name}-"))
        self.root.chmod(0o755)
        for sub in ("queue", "done", "tmpunzip", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        os.chown(self.root / "queue", *_uid_gid(self.ssh.user))
        (self.root / "config.yaml").write_text(yaml.safe_dump({
            "tester": {"name": name, "slots": 1, "storer_daemon": daemon_url, "executor_timeout": 120},
            "machines": overrides or {},
        }))
        self.proc: subprocess.Popen | None = None
        self.log = open(logs / f"{name}-queue-manager.log", "ab")

    def start(self) -> None:
        # nsenter joins only the network namespace: "ip netns exec" would also remount
        # /sys, hiding the cgroup hierarchy LXC needs to start guests.
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.host.netns}", sys.executable, "-m",
             "vmchecker.cli.queue_manager", str(self.root)], stdout=self.log, stderr=self.log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def course_entry(self) -> dict:
        return {"host": self.host.address, "port": 22, "user": self.ssh.user, "queue": str(self.root / "queue"),
                "done": str(self.root / "done"), "slots": 1}

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        self.ssh.close()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


class Storer:
    """The storer: a course, the daemon process, and submissions through the CLI."""

    def __init__(self, root: Path, address: str, port: int):
        self.root = root
        self.address, self.port = address, port
        self.url = f"http://{address}:{port}/"
        self.glob = root / "global.yaml"
        self.env = {**os.environ, "VMCHECKER_CONFIG": str(self.glob)}
        self.proc: subprocess.Popen | None = None
        self.log = open(root / "daemon.log", "ab")
        self.count = 0

    def init_course(self) -> Path:
        subprocess.run([sys.executable, "-m", "vmchecker.cli.init_course", "storer", str(self.root / "c"),
                        "--course-id", "e2e"], check=True, env=self.env, capture_output=True)
        return self.root / "c"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmchecker.cli.storer_daemon", "--listen", f"{self.address}:{self.port}",
             "--state", str(self.root / "state"), "--poll", "0.5"],
            env=self.env, stdout=self.log, stderr=self.log)
        _wait(lambda: self._answers(), 30, "the storer daemon to answer")

    def _answers(self) -> bool:
        try:
            xmlrpc.client.ServerProxy(self.url).status()
            return True
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def submit(self, assignment: str, archive: Path) -> str:
        self.count += 1
        account = f"s{self.count:03d}"
        done = subprocess.run([sys.executable, "-m", "vmchecker.cli.submit", "--skip-time-checks", "e2e",
                               assignment, account, str(archive)], env=self.env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return account

    def course(self) -> config.CourseConfig:
        return config.find_course("e2e", self.glob)

    def submission(self, assignment: str, account: str):
        return Repository(self.course()).current(assignment, account)

    def wait_final(self, assignment: str, accounts: list[str], timeout: float = 240) -> dict:
        def final():
            subs = {a: self.submission(assignment, a) for a in accounts}
            if all(s.status().value in ("done", "error") for s in subs.values()):
                return subs
            return None

        return _wait(final, timeout, f"{len(accounts)} submission(s) to be graded")

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    skip_unless_lab()
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("e2e")
    with netns.LabNetwork() as network:
        storer = Storer(root, network.gateway, free_port(network.gateway))
        course_dir = storer.init_course()
        pub = (course_dir / "keys" / "id_ed25519.pub").read_text().strip()
        fast = LabTester(network, "fast", storer.url, pub, root)
        slow = LabTester(network, "slow", storer.url, pub, root, overrides={"linux": {"limits": {"cpus": 0.2}}})
        testers = [fast, slow]
        try:
            for t in testers:
                network.check_route(t.host.address)
                t.host.check_route(network.gateway)
            (course_dir / "keys" / "known_hosts").write_text("".join(t.ssh.host_key_line() + "\n" for t in testers))
            (course_dir / "build.sh").write_text("#!/bin/bash\nset -e\nmake\nif [ -f spin.c ]; then gcc -O0 -o spin spin.c; fi\n")
            (course_dir / "run.sh").write_text(RUN_SH)
            data = yaml.safe_load((course_dir / "config.yaml").read_text())
            # queue_task from the storer's own bridge address is local: no queue_task_from needed
            data["storer"].update(daemon=storer.url, retry_delay=1)
            data["course"]["open_to_all_users"] = True   # its students are s001, s002, ... made on the spot
            data["testers"] = {t.name: t.course_entry() for t in testers}
            data["machines"] = {"linux": {"type": "lxc", "vm": BASE, "testers": ["fast", "slow"],
                                          "limits": {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}}}
            data["assignments"] = {"defaults": {"timeout": 30, "min_interval": 0},
                                   "1-hello": {"deadline": "2030-01-01 00:00:00", "machine": "linux"},
                                   "2-spin": {"deadline": "2030-01-01 00:00:00", "machine": "linux"}}
            (course_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            config.load_course(course_dir / "config.yaml")
            hello = make_zip(root / "hello.zip", {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE})
            spin = make_zip(root / "spin.zip", {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE, "spin.c": SPIN_C})
            storer.start()
            for t in testers:
                t.start()
            yield type("Lab", (), {"storer": storer, "fast": fast, "slow": slow, "hello": hello, "spin": spin,
                                   "network": network, "root": root})
        finally:
            for t in testers:
                t.close()
            storer.close()
    assert netns.leftovers() == []
    assert [n for n in subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True).stdout.split()
            if n.startswith("vmck-")] == [], "a job clone was left behind"


def _tester_of(sub) -> str:
    return sub.info.tester


def test_graded_end_to_end(lab):
    accounts = [lab.storer.submit("1-hello", lab.hello) for _ in range(2)]
    subs = lab.storer.wait_final("1-hello", accounts)
    for sub in subs.values():
        assert sub.status().value == "done", (sub.results_dir / "vmchecker-stderr.vmr").read_text()
        assert "PASS" in (sub.results_dir / "run-stdout.vmr").read_text()
        assert (sub.results_dir / "result.json").exists()
        assert _tester_of(sub) in ("fast", "slow")
    grades = subprocess.run([sys.executable, "-m", "vmchecker.cli.grades", "e2e", "--format", "json"],
                            env=lab.storer.env, capture_output=True, text=True, check=True).stdout
    rows = {r["account"]: r for r in json.loads(grades) if r["assignment"] == "1-hello"}
    assert [(rows[a]["grade"], rows[a]["reason"]) for a in accounts] == [(10, None)] * 2, rows


def _sent(lab, assignment: str, account: str) -> bool:
    return lab.storer.submission(assignment, account).status().value in ("running", "done", "error")


def test_slower_tester_gets_fewer_jobs(lab):
    # Each tester is measured once: while fast's queue manager is stopped, the first job
    # waits in fast's queue (no estimate yet: the tie goes to "fast"), so the second,
    # seeing fast busy, goes to slow. No clock decides it.
    lab.fast.kill(signal.SIGTERM)
    try:
        first = lab.storer.submit("2-spin", lab.spin)
        _wait(lambda: _sent(lab, "2-spin", first), 60, "the first job to be sent")
        second = lab.storer.submit("2-spin", lab.spin)
        _wait(lambda: _sent(lab, "2-spin", second), 60, "the second job to be sent")
    finally:
        lab.fast.start()
    subs = lab.storer.wait_final("2-spin", [first, second], timeout=300)
    assert [_tester_of(subs[a]) for a in (first, second)] == ["fast", "slow"]
    # Then one job at a time: each goes where it is expected to finish first, by the
    # measured times, and slow's CPU-capped guest took several times longer.
    by = []
    for _ in range(3):
        account = lab.storer.submit("2-spin", lab.spin)
        sub = lab.storer.wait_final("2-spin", [account], timeout=300)[account]
        assert sub.status().value == "done", (sub.results_dir / "vmchecker-stderr.vmr").read_text()
        by.append(_tester_of(sub))
    assert by == ["fast"] * 3, by


def _failures(lab, tester: str) -> int:
    status = xmlrpc.client.ServerProxy(lab.storer.url).status()
    return next(t["failed"] for t in status["testers"] if t["tester"] == tester)


def test_down_tester_gets_none_and_its_jobs_finish_elsewhere(lab):
    # While fast's queue manager is stopped, every job sent to it waits there and fast's
    # expected finish grows with each one, until the scheduler turns to slow, whose sshd
    # is down: so slow is tried, however fast "fast" was measured.
    lab.slow.ssh.stop()
    try:
        lab.fast.kill(signal.SIGTERM)
        accounts = []
        try:
            while _failures(lab, "slow") == 0:
                assert len(accounts) < 40, "slow was never tried"
                accounts.append(lab.storer.submit("1-hello", lab.hello))
                _wait(lambda: _sent(lab, "1-hello", accounts[-1]), 60, "the job to be sent")
        finally:
            lab.fast.start()
        subs = lab.storer.wait_final("1-hello", accounts)
        assert [s.status().value for s in subs.values()] == ["done"] * len(accounts)
        assert {_tester_of(s) for s in subs.values()} == {"fast"}   # tried on slow, moved to fast
    finally:
        lab.slow.ssh.start()


def test_daemon_kill_9_mid_stream_loses_nothing(lab):
    accounts = [lab.storer.submit("1-hello", lab.hello) for _ in range(4)]
    lab.storer.kill(signal.SIGKILL)
    accounts += [lab.storer.submit("1-hello", lab.hello) for _ in range(2)]  # saved while it is down
    lab.storer.start()
    subs = lab.storer.wait_final("1-hello", accounts)
    assert [s.status().value for s in subs.values()] == ["done"] * 6


def test_queue_manager_kill_9_mid_job_loses_nothing(lab):
    lab.slow.ssh.stop()  # every job goes to "fast"
    try:
        account = lab.storer.submit("2-spin", lab.spin)
        _wait(lambda: lab.storer.submission("2-spin", account).status().value == "running", 60, "the job to run")
        _wait(lambda: list((lab.fast.root / "tmpunzip").iterdir()), 30, "the job to start on the tester")
        lab.fast.kill(signal.SIGKILL)
        lab.fast.start()
        sub = lab.storer.wait_final("2-spin", [account])[account]
        assert sub.status().value == "done"
    finally:
        lab.slow.ssh.start()


def test_storer_down_when_job_finishes_gets_results_later(lab):
    lab.fast.ssh.stop()  # the job goes to "slow"...
    lab.slow.kill(signal.SIGTERM)  # ...and waits in its queue until the storer is down
    try:
        account = lab.storer.submit("2-spin", lab.spin)

        def sent_to_slow() -> bool:   # a first attempt may go to fast and fail, then be resent
            sub = lab.storer.submission("2-spin", account)
            return sub.status().value == "running" and sub.info.tester == "slow"

        _wait(sent_to_slow, 120, "the job to be sent to slow")
        lab.storer.kill(signal.SIGTERM)
    finally:
        lab.fast.ssh.start()
        lab.slow.start()
    try:
        sub = lab.storer.submission("2-spin", account)
        assert sub.info.tester == "slow"
        pending = lab.slow.root / "state" / "notify" / f"{sub.info.job_id}.json"
        _wait(lambda: pending.exists() and json.loads(pending.read_text()).get("attempts", 0) >= 1, 120,
              "the tester to try to notify the stopped storer")
        assert lab.storer.submission("2-spin", account).status().value == "running"
    finally:
        lab.storer.start()
    sub = lab.storer.wait_final("2-spin", [account], timeout=180)[account]
    assert sub.status().value == "done"


def test_queue_task_refused_from_a_tester(lab):
    code = ("import xmlrpc.client,sys\n"
            "try:\n xmlrpc.client.ServerProxy(sys.argv[1]).queue_task('e2e','1-hello','s001','x')\n"
            "except xmlrpc.client.Fault as e: print(e.faultCode, e.faultString)\n")
    out = lab.fast.host.run([sys.executable, "-c", code, lab.storer.url]).stdout
    out = out.decode() if isinstance(out, bytes) else out
    assert out.startswith("403") and "not allowed" in out
