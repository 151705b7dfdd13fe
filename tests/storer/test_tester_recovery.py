"""A tester that comes back is looked at at once, never left to its jobs' notify deadlines.

Everything real but the guest: the storer daemon (in this process, its dispatcher and its
rechecker running, on a loopback port of its own that survives its restart), a real sshd on
loopback as the tester's SSH side, and the tester's queue manager as a process of its own
(``tests/tester/run_queue_manager.py``), killed and restarted as an operator would. The jobs
run in the fake executor (``tests/tester/fake_executor.py``): what a job runs is not what
these tests check, only when and how often it runs and how its results travel. Each job
blocks on a file the test creates (a barrier), so a kill is surely mid-job and a job ends
exactly when the test lets it. Every notify deadline is an hour away
(``storer.notify_margin``), so a test that leaned on one would fail by its wait_for's
timeout instead of passing late.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures import RunningDaemon
from tests.lab import skip_unless_lab, sshd
from tests.lab.netns import check_route
from tests.util import HELLO_C, free_port, make_zip, wait_for, write_course
from vmchecker import config, rpc, submit
from vmchecker.contract import GRADE_VMR, SUBMISSION_CONFIG, SubmissionStatus
from vmchecker.repo import Repository
from vmchecker.tester import processes
from vmchecker.tester.notifier import Journal

pytestmark = [pytest.mark.sshd, pytest.mark.usefixtures("no_lab_leftovers")]

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600
FINAL_WAIT = 120   # seconds: a guard against a hang, far below any deadline
OUTAGE_S = 60      # seconds the tester's sshd stays down in the outage test


class QueueManager:
    """The tester's queue manager with the fake executor, as a process of its own."""

    def __init__(self, tester: Path, log: Path):
        self.tester = tester
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.tester.run_queue_manager", str(self.tester)],
                                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclasses.dataclass
class Lab:
    """The course ``so`` whose tester t1 is a loopback sshd and a queue manager."""

    root: Path
    course: config.CourseConfig
    ssh: sshd.SshServer
    tester: Path
    qm: QueueManager
    start: Callable[..., RunningDaemon]
    port: int
    daemon: RunningDaemon | None = None

    def start_daemon(self) -> RunningDaemon:
        self.daemon = self.start(self.root / "global.yaml", dispatch=True, state_dir=self.root / "state",
                                 listen=f"127.0.0.1:{self.port}")
        return self.daemon

    def submit(self, account: str, fake: dict) -> str:
        """A submission whose job the fake executor runs as ``fake`` says; its job id."""
        archive = make_zip(self.root / f"{account}.zip", {"hello.c": HELLO_C, "fake.json": json.dumps(fake)})
        sub = submit.submit(self.course, "1-hello", account, archive, skip_time_checks=True)
        return rpc.Client(self.daemon.url).queue_task("so", "1-hello", account, sub.name)

    def state(self, job_id: str) -> str:
        return self.daemon.journal.get(job_id).state.value

    def notifications(self) -> Journal:
        """The queue manager's pending notifications."""
        return Journal(self.tester / "state" / "notify")

    def rechecks(self, tester: str = "t1") -> int:
        return sum(w.rechecks for w in self.daemon.daemon.rechecker.watches() if w.tester == tester)

    def submission(self, account: str, job_id: str):
        return Repository(self.course).submission("1-hello", account, self.daemon.journal.get(job_id).submission)


@pytest.fixture
def lab(tmp_path, monkeypatch, running_daemon) -> Iterator[Lab]:
    skip_unless_lab()
    with sshd.SshServer() as ssh:
        tester = sshd.tester_folder(ssh, "vmck-recovery-tester-")
        qm = QueueManager(tester, tmp_path / "queue-manager.log")
        try:
            course = _course(tmp_path, ssh, tester)
            monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
            yield Lab(tmp_path, course, ssh, tester, qm, running_daemon, free_port())
        finally:
            qm.stop(signal.SIGKILL)
            for pid in processes.find_orphans(tester / "tmpunzip"):   # a test that failed mid-job
                processes.kill_orphan(pid, 2)
            shutil.rmtree(tester, ignore_errors=True)


def _course(root: Path, ssh: sshd.SshServer, tester: Path) -> config.CourseConfig:
    """t1 is the sshd and the tester folder; t2 is a second tester on the same address,
    serving no machine (never sent a job), whose key must not stand for t1's."""
    path = write_course(root, extra={
        "storer": {"notify_margin": HOUR},
        "testers": {"t1": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user, "queue": str(tester / "queue"),
                           "done": str(tester / "done"), "slots": 1},
                    "t2": {"host": "127.0.0.1", "port": free_port(), "user": ssh.user, "queue": "/nonexistent/queue",
                           "slots": 1}},
        "machines": {"linux": {"testers": ["t1"]}},
    })
    keys = path.parent / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
    (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
    return config.load_course(path)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _landings(caplog, job_id: str) -> int:
    """How many times the job's results landed (the daemon's one line per sent -> done,
    the one bench/chaos.py counts too)."""
    line = re.compile(rf"job {re.escape(job_id)} done on \S+ in ")
    return sum(1 for r in caplog.records if line.match(r.getMessage()))


def _assert_graded_once(lab: Lab, caplog, account: str, job_id: str) -> None:
    job = lab.daemon.journal.get(job_id)
    assert (job.state.value, job.tester, job.attempts, job.reasons) == ("done", "t1", 0, ())
    sub = lab.submission(account, job_id)
    assert sub.status() is SubmissionStatus.DONE
    assert (sub.results_dir / GRADE_VMR).read_text() == "done\n"   # full points, from the run's evidence
    assert not list(sub.path.glob("results.*")), "no results were moved aside by a second landing"
    # the landing logs its line just after the journal says done: wait for it, then count
    wait_for(lambda: _landings(caplog, job_id) >= 1, "the landing's log line")
    assert _landings(caplog, job_id) == 1


@pytest.fixture(autouse=True)
def _daemon_log(caplog):
    caplog.set_level(logging.INFO, logger="vmchecker.storer")


def _job_running(lab) -> tuple[Path, Path, Path, str]:
    """Daemon and queue manager up, one job of bob's running on the tester, blocked until
    ``release`` exists: (its runs log, its finished log, release, the job id)."""
    runs, finished, release = (lab.root / n for n in ("runs.log", "finished.log", "release"))
    lab.start_daemon()
    lab.qm.start()
    job_id = lab.submit("bob", {"log": str(runs), "wait_file": str(release), "finished": str(finished),
                                "grade": ""})
    wait_for(lambda: _lines(runs) == [job_id], "the job to start on the tester")
    return runs, finished, release, job_id


# --------------------------------------------------------------------------- (a)


def test_a_queue_manager_killed_mid_job_runs_it_once_more_and_the_daemon_looks_at_once(lab, caplog):
    runs, finished, release = (lab.root / n for n in ("runs.log", "finished.log", "release"))
    lab.start_daemon()
    job_id = lab.submit("bob", {"log": str(runs), "wait_file": str(release), "finished": str(finished),
                                "grade": ""})
    wait_for(lambda: list((lab.tester / "queue").glob(f"*_{job_id}.zip")), "the bundle to reach the tester")
    lab.qm.start()   # it finds the bundle, so it knows the daemon and says it is there (as at any start)
    wait_for(lambda: _lines(runs) == [job_id], "the job to start on the tester")
    wait_for(lambda: lab.rechecks() == 1, "the daemon to look at the tester once")
    lab.qm.stop(signal.SIGKILL)   # mid-job: the run waits for `release`, which does not exist yet
    lab.qm.start()
    wait_for(lambda: _lines(runs) == [job_id, job_id], "the restarted queue manager to run the job again")
    wait_for(lambda: lab.rechecks() == 2, "the daemon to hear that the tester is back and look at it again")
    assert lab.state(job_id) == "sent"   # its bundle is queued there again: nothing to do but wait
    release.touch()
    wait_for(lambda: lab.state(job_id) == "done", "the job to become final", FINAL_WAIT)
    assert _lines(finished) == [job_id], "the job ran to completion once"
    _assert_graded_once(lab, caplog, "bob", job_id)


# --------------------------------------------------------------------------- (b)


def test_notifications_pending_when_the_queue_manager_died_are_sent_at_once_on_restart(lab, caplog):
    """The storer daemon is away when the job ends, so its notification waits, with a next
    try an hour away (what a long outage and the default 300-s backoff cap come to);
    the queue manager dies; both come back. The notification goes at the restart."""
    runs, finished, release, job_id = _job_running(lab)
    lab.daemon.close()
    release.touch()
    journal = lab.notifications()
    pending = wait_for(lambda: (p := journal.load(job_id)) is not None and p.attempts >= 1 and p,
                       "the queue manager to fail to notify the daemon that is away")
    lab.qm.stop(signal.SIGKILL)
    journal.save(dataclasses.replace(journal.load(job_id) or pending, next_try=time.time() + HOUR))
    lab.start_daemon()
    lab.qm.start()
    wait_for(lambda: journal.load(job_id) is None, "the pending notification to be sent and answered", FINAL_WAIT)
    wait_for(lambda: lab.state(job_id) == "done", "the job to become final", FINAL_WAIT)
    assert _lines(finished) == [job_id] and _lines(runs) == [job_id]
    _assert_graded_once(lab, caplog, "bob", job_id)


# --------------------------------------------------------------------------- (c)


def test_a_tester_back_from_an_sshd_outage_has_its_finished_job_pulled_at_once(lab, caplog):
    """The tester's sshd is down when its job ends: its notify reaches the daemon, which
    cannot pull the results, and the tester keeps the notification. The queue manager is
    then stopped, so no notification can end the job: only the daemon's own look at the
    tester, when it answers again, can. The outage lasts a minute, as an operator's would:
    a dozen failed pings of the daemon, then the first that succeeds looks at the tester
    (the minute is the condition under test; nothing asserts how long anything took)."""
    runs, finished, release, job_id = _job_running(lab)
    lab.ssh.stop()
    release.touch()
    journal = lab.notifications()
    wait_for(lambda: (p := journal.load(job_id)) is not None and p.attempts >= 1,
             "the tester's notify to be answered 'try later' (the daemon cannot pull the results)")
    link = lab.daemon.daemon.courses.get("so").links["t1"]
    assert link.last_error and "cannot" in link.last_error
    lab.qm.stop()
    assert lab.state(job_id) == "sent"
    time.sleep(OUTAGE_S)
    assert lab.state(job_id) == "sent", "nothing can end the job while the tester is unreachable"
    lab.ssh.start()
    wait_for(lambda: lab.state(job_id) == "done", "the job to become final once sshd is back", FINAL_WAIT)
    assert _lines(finished) == [job_id] and _lines(runs) == [job_id]
    _assert_graded_once(lab, caplog, "bob", job_id)
    lab.qm.start()   # its pending notification goes at once, and lands nothing a second time
    wait_for(lambda: journal.load(job_id) is None, "the old notification to be answered")
    _assert_graded_once(lab, caplog, "bob", job_id)


# --------------------------------------------------------------------------- (d)


class _From(xmlrpc.client.Transport):
    """Calls from a loopback address of the test's choosing."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.source_address = (self.source, 0)
        return conn


def _tester_key(bundle: Path) -> str:
    with zipfile.ZipFile(bundle) as zf:
        return yaml.safe_load(zf.read(SUBMISSION_CONFIG))["tester_key"]


def test_tester_back_from_a_wrong_address_or_with_a_wrong_key_is_refused_and_changes_nothing(lab):
    """No queue manager runs: the test plays the tester. Its bundle is taken out of the
    queue (lost), so a recheck the daemon made would fail the attempt: the refused calls
    must not make one, the tester's own call must."""
    daemon = lab.start_daemon()
    job_id = lab.submit("bob", {})
    (bundle,) = wait_for(lambda: list((lab.tester / "queue").glob(f"*_{job_id}.zip")), "the bundle to be sent")
    wait_for(lambda: daemon.journal.get(job_id).confirmed, "the send to be confirmed")
    key = _tester_key(bundle)
    other = daemon.daemon.tester_keys.key("so", "t2")   # what t2's bundles would carry
    assert key and other != key
    bundle.unlink()
    before = daemon.journal.get(job_id)
    check_route("127.0.0.2", "lo")
    elsewhere = xmlrpc.client.ServerProxy(daemon.url, transport=_From("127.0.0.2"))
    here = xmlrpc.client.ServerProxy(daemon.url, transport=_From("127.0.0.1"))
    refused = [
        (elsewhere, ("so", "t1", key)),          # t1's key, but not from t1's address
        (here, ("so", "t1", "x" * 43)),          # a wrong key
        (here, ("so", "t1", other)),             # another tester's key
        (here, ("so", "t2", key)),               # t1's key for another tester
        (here, ("os", "t1", key)),               # a course the daemon does not have
        (here, ("so", "t1", "not a key!")),      # not even a key
    ]
    for proxy, params in refused:
        with pytest.raises(xmlrpc.client.Fault) as err:
            proxy.tester_back(*params)
        assert err.value.faultCode == rpc.FAULT_REFUSED, params
    assert daemon.journal.get(job_id) == before
    assert lab.rechecks("t1") == lab.rechecks("t2") == 0
    assert not any(w.asked for w in daemon.daemon.rechecker.watches())
    # The control: the tester's own call, from its address, with its key.
    assert rpc.Client(daemon.url).tester_back(rpc.BackRequest("so", "t1", key)) is True
    failed = wait_for(lambda: (j := daemon.journal.get(job_id)).attempts and j, "the recheck to find the job lost")
    assert failed.state.value == "queued" and "t1 no longer holds the job" in failed.reasons[0]
    # Idempotent: more calls fold into one more look, which finds nothing left to do.
    for _ in range(3):
        assert rpc.Client(daemon.url).tester_back(rpc.BackRequest("so", "t1", key)) is True
    wait_for(lambda: lab.rechecks("t1") == 2, "the calls to be folded into one more recheck")
    assert daemon.journal.get(job_id).attempts == 1
