"""Every stage of a job starts on the event that ends the one before, never on a timer, and a
tester that hangs delays only its own jobs.

Everything real but the guest: the storer daemon's XML-RPC server and its real dispatcher loop
(in threads of this test; the daemon's start-up probe of its testers and its rechecker are not
run, so nothing but the path itself moves a job), a real sshd on loopback as the healthy
tester's SSH side, and that tester's queue manager as a process of its own with the fake
executor (``tests/tester/run_queue_manager.py``). The stuck tester is a listening socket this
test holds: the kernel accepts the TCP connection, and nothing ever answers it, as a tester
whose sshd hangs. Closing the socket is the barrier that releases it.

Every fallback timer is an hour: the dispatcher's poll, the queue manager's idle wait and
rescan, the notifier's retries, the stuck link's connect timeout. A test that leaned on one
would fail by its wait_for's guard instead of passing late.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures import RunningDaemon
from tests.lab import skip_unless_lab, sshd
from tests.util import HELLO_C, make_zip, wait_for, write_course
from vmchecker import config, rpc, submit
from vmchecker.contract import GRADE_VMR
from vmchecker.repo import Repository
from vmchecker.storer import transport
from vmchecker.tester import processes

pytestmark = [pytest.mark.sshd, pytest.mark.usefixtures("no_lab_leftovers")]

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600


@dataclasses.dataclass
class Lab:
    """Course ``so``: tester t1 is stuck (a socket that never answers), t2 is healthy (a
    loopback sshd and a queue manager); both serve the machine, one slot each."""

    root: Path
    course: config.CourseConfig
    stuck: socket.socket
    tester: Path
    daemon: RunningDaemon
    qm: subprocess.Popen | None = None
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _loop: threading.Thread | None = None

    def start(self) -> None:
        """The healthy tester's queue manager (every timer an hour), then the dispatcher loop
        (its poll an hour), after the stuck tester's link is given an hour to connect."""
        with open(self.root / "queue-manager.log", "ab") as log:
            self.qm = subprocess.Popen([sys.executable, "-m", "tests.tester.run_queue_manager", "--hour-timers",
                                        str(self.tester)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: (self.tester / "queue" / ".tester.json").exists() or self.qm.poll() is not None,
                 "the queue manager to start")
        assert self.qm.poll() is None, (self.root / "queue-manager.log").read_text()
        course = self.daemon.daemon.courses.get("so")
        course.links["t1"] = transport.TesterLink.from_config(course.config, "t1", connect_timeout=HOUR)
        self._loop = threading.Thread(target=self.daemon.daemon.dispatcher.loop, args=(self._stop,),
                                      name="test-dispatcher", daemon=True)
        self._loop.start()

    def close(self) -> None:
        self.stuck.close()   # a send still blocked there fails now
        self._stop.set()
        self.daemon.daemon.dispatcher.wake.set()
        if self._loop is not None:
            self._loop.join(60)
            assert not self._loop.is_alive(), "the dispatcher loop did not stop"
        close = getattr(self.daemon.daemon.dispatcher, "close", None)
        if close is not None:
            close(60)
        if self.qm is not None and self.qm.poll() is None:
            self.qm.send_signal(signal.SIGTERM)
            try:
                self.qm.wait(30)
            except subprocess.TimeoutExpired:
                self.qm.kill()
                self.qm.wait()

    def submit(self, account: str) -> str:
        """A submission (full points in the fake executor) queued through the daemon; its job id."""
        archive = make_zip(self.root / f"{account}.zip", {"hello.c": HELLO_C, "fake.json": json.dumps({"grade": ""})})
        sub = submit.submit(self.course, "1-hello", account, archive, skip_time_checks=True)
        return rpc.Client(self.daemon.url).queue_task("so", "1-hello", account, sub.name)

    def job(self, job_id: str):
        return self.daemon.journal.get(job_id)

    def done(self, job_id: str) -> bool:
        return self.job(job_id).state.value == "done"

    def graded(self, account: str, job_id: str) -> str:
        sub = Repository(self.course).submission("1-hello", account, self.job(job_id).submission)
        return (sub.results_dir / GRADE_VMR).read_text()


def _course(root: Path, ssh: sshd.SshServer, tester: Path, stuck_port: int) -> config.CourseConfig:
    path = write_course(root, extra={
        "storer": {"notify_margin": HOUR, "retry_delay": 0},
        "testers": {"t1": {"host": "127.0.0.1", "port": stuck_port, "user": ssh.user, "queue": "/stuck/queue",
                           "slots": 1},
                    "t2": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user, "queue": str(tester / "queue"),
                           "done": str(tester / "done"), "slots": 1}},
        "machines": {"linux": {"testers": ["t1", "t2"]}},
    })
    keys = path.parent / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
    (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
    (tester / "config.yaml").write_text(yaml.safe_dump({"tester": {"name": "t2", "slots": 1}}))
    return config.load_course(path)


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Iterator[Lab]:
    skip_unless_lab()
    stuck = socket.create_server(("127.0.0.1", 0), backlog=16)   # never accept()ed: connects, never answers
    with sshd.SshServer() as ssh:
        tester = sshd.tester_folder(ssh, "vmck-no-waiting-tester-")
        lab = None
        try:
            course = _course(tmp_path, ssh, tester, stuck.getsockname()[1])
            monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
            daemon = RunningDaemon(tmp_path / "global.yaml", tmp_path / "state", poll=HOUR)
            lab = Lab(tmp_path, course, stuck, tester, daemon)
            yield lab
        finally:
            try:
                if lab is not None:
                    lab.close()
                    lab.daemon.close()
            finally:
                stuck.close()
                for pid in processes.find_orphans(tester / "tmpunzip"):
                    processes.kill_orphan(pid, 2)
                shutil.rmtree(tester, ignore_errors=True)


def test_a_stuck_tester_delays_only_its_own_jobs(lab: Lab) -> None:
    lab.start()
    dispatcher = lab.daemon.daemon.dispatcher
    first = lab.submit("bob")
    wait_for(lambda: dispatcher.sending(first), "the first job's send to start")
    assert lab.job(first).tester == "t1"   # the scheduler's choice: the stuck tester
    second = lab.submit("carol")
    wait_for(lambda: lab.done(second), "the healthy tester's job to complete")
    assert lab.job(second).tester == "t2" and lab.graded("carol", second) == "done\n"
    # It arrived, ran and was graded while the first send still hangs on the stuck tester.
    assert dispatcher.sending(first) and lab.job(first).state.value == "sent"
    lab.stuck.close()   # the barrier: the stuck tester now refuses, the send fails
    wait_for(lambda: lab.done(first), "the first job to complete on the healthy tester")
    job = lab.job(first)
    assert (job.tester, job.attempts) == ("t2", 1) and "t1" in job.failed_on
    assert lab.graded("bob", first) == "done\n"


def test_queue_task_notify_and_a_free_slot_each_move_a_job_on_at_once(lab: Lab) -> None:
    """With every fallback timer at an hour, three jobs go all the way: queue_task wakes the
    dispatcher (the first pass found nothing; the second and third are queued while it
    waits out its hour), the bundle's arrival starts the job (inotify), the end of the
    second job frees the slot the third waits for, and each notify pulls the results."""
    lab.stuck.close()   # only t2 answers; t1 is tried at most once per job and fails at once
    lab.start()
    first = lab.submit("bob")
    wait_for(lambda: lab.done(first), "the first job to complete")
    second, third = lab.submit("carol"), lab.submit("dave")
    wait_for(lambda: lab.done(second) and lab.done(third), "the next two jobs to complete")
    for account, job_id in (("bob", first), ("carol", second), ("dave", third)):
        assert lab.job(job_id).tester == "t2" and lab.graded(account, job_id) == "done\n"
