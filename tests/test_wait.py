"""``vmchecker-submit --wait`` and ``vmchecker-resubmit --wait``: the exit status a script
reads (0 passed, 1 failed, 2 error, 3 timed out), the results and grade printed, and the
progress on stderr (one line per change when it is not a terminal).

Everything real but the guest: the storer daemon (in this process, its dispatcher
running), a real sshd on loopback as the tester's SSH side, the tester's queue manager as
a process of its own running the fake executor (``tests/tester/fake_executor.py``, which
passes, fails the build, errs or waits on a barrier as the archive's ``fake.json`` says),
and the commands as a grader runs them, in processes of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab import skip_unless_lab, sshd
from tests.util import HELLO_C, free_port, make_zip, wait_for, write_course
from vmchecker import config
from vmchecker.contract import SubmissionStatus
from vmchecker.repo import Repository
from vmchecker.tester import processes

pytestmark = [pytest.mark.sshd, pytest.mark.usefixtures("no_lab_leftovers")]

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600
WAIT = "120"        # --wait-timeout of the runs that must end: a guard against a hang


@dataclass
class Lab:
    root: Path
    course: config.CourseConfig
    tester: Path
    env: dict

    def archive(self, name: str, fake: dict) -> Path:
        return make_zip(self.root / f"{name}.zip", {"hello.c": HELLO_C, "fake.json": json.dumps(fake)})

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", f"vmchecker.cli.{command}", *args], capture_output=True,
                              text=True, cwd=REPO, env=self.env, timeout=300)

    def submit(self, account: str, fake: dict, *more: str) -> subprocess.CompletedProcess:
        return self.run("submit", "--skip-time-checks", "--wait", *more, "so", "1-hello", account,
                        str(self.archive(account, fake)))

    def current(self, account: str):
        return Repository(self.course).current("1-hello", account)


@pytest.fixture
def lab(tmp_path: Path, running_daemon) -> Iterator[Lab]:
    """Course ``so`` whose tester t1 is a loopback sshd and a queue manager; the daemon
    dispatches; a job is tried once (an error is final at once)."""
    skip_unless_lab()
    port = free_port()
    with sshd.SshServer() as ssh:
        tester = sshd.tester_folder(ssh, "vmck-wait-tester-")
        qm = None
        try:
            path = write_course(tmp_path, extra={
                "storer": {"daemon": f"http://127.0.0.1:{port}/", "notify_margin": HOUR, "max_attempts": 1},
                "testers": {"t1": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user,
                                   "queue": str(tester / "queue"), "done": str(tester / "done"), "slots": 1}},
                "assignments": {"1-hello": {"deadline": "2099-03-01 23:55:00"}},   # no late penalty
            })
            keys = path.parent / "keys"
            keys.mkdir()
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
            ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
            (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
            running_daemon(tmp_path / "global.yaml", dispatch=True, listen=f"127.0.0.1:{port}")
            with open(tmp_path / "queue-manager.log", "ab") as log:
                qm = subprocess.Popen([sys.executable, "-m", "tests.tester.run_queue_manager", str(tester)],
                                      cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
            env = {**os.environ, "VMCHECKER_CONFIG": str(tmp_path / "global.yaml")}
            yield Lab(tmp_path, config.load_course(path), tester, env)
        finally:
            if qm is not None and qm.poll() is None:
                qm.send_signal(signal.SIGTERM)
                try:
                    qm.wait(30)
                except subprocess.TimeoutExpired:
                    qm.kill()
                    qm.wait()
            for pid in processes.find_orphans(tester / "tmpunzip"):   # a test that failed mid-job
                processes.kill_orphan(pid, 2)
            subprocess.run(["rm", "-rf", str(tester)], check=False)


def progress_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The --wait progress on stderr (not a terminal: plain lines, no carriage return)."""
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("1-hello/")]


def test_passed_prints_the_results_and_the_grade_and_exits_0(lab: Lab) -> None:
    done = lab.submit("bob", {"grade": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "status: queued as job " in out
    assert "--- run-stdout.vmr\nran " in out and "--- grade.vmr\ndone\n" in out
    assert out.index("--- run-stdout.vmr") < out.index("--- grade.vmr") < out.index("Grade")
    assert "Grade" in out and "10 / 10" in out
    assert out.rstrip().endswith("passed")
    lines = progress_lines(done)
    assert len(lines) == len(set(lines)), "one line per change, never the same place twice"
    assert lab.current("bob").status() is SubmissionStatus.DONE

    again = lab.run("resubmit", "so", "--account", "bob", "--assignment", "1-hello", "--wait",
                    "--wait-timeout", WAIT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rechecked so/1-hello/bob/" in again.stdout and again.stdout.rstrip().endswith("passed")
    assert len(lab.current("bob").earlier_results()) == 1


def test_a_failed_build_exits_1_with_its_reason(lab: Lab) -> None:
    done = lab.submit("bob", {"grade": "", "build_exit": 2}, "--wait-timeout", WAIT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--- grade.vmr\n-10: the build failed (exit status 2)\n" in done.stdout
    assert "0 / 10" in done.stdout
    assert done.stdout.rstrip().endswith("failed: the build failed (exit status 2)")


def test_points_lost_to_the_tests_exit_1(lab: Lab) -> None:
    done = lab.submit("carol", {"grade": "-3: test 2 failed\n"}, "--wait-timeout", WAIT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "7 / 10" in done.stdout and done.stdout.rstrip().endswith("failed: test 2 failed")


def test_a_job_that_ends_in_error_exits_2(lab: Lab) -> None:
    done = lab.submit("bob", {"action": "error"}, "--wait-timeout", WAIT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--- vmchecker-stderr.vmr\nThe submission could not be tested:" in done.stdout
    assert "--- grade.vmr" not in done.stdout                  # a status word, not a grade
    assert done.stdout.endswith("\nerror: attempt 1 on t1: the tester reported an error: no reason given\n")
    assert lab.current("bob").status() is SubmissionStatus.ERROR


def test_a_refused_upload_exits_2(lab: Lab) -> None:
    junk = lab.root / "junk.zip"
    junk.write_text("not an archive")
    done = lab.run("submit", "--skip-time-checks", "--wait", "so", "1-hello", "bob", str(junk))
    assert done.returncode == 2 and "vmchecker-submit: archive refused" in done.stderr
    assert lab.current("bob") is None


def test_no_results_in_time_exits_3_and_the_job_goes_on(lab: Lab) -> None:
    release = lab.root / "release"
    started = lab.root / "started"
    done = lab.submit("bob", {"grade": "", "wait_file": str(release), "started": str(started)},
                      "--wait-timeout", "5")
    try:
        assert done.returncode == 3, done.stdout + done.stderr
        assert done.stdout.rstrip().endswith("the job goes on (vmchecker-status so, and vmchecker-grades so once"
                                             " it is graded)")
        assert "Grade" not in done.stdout
        lines = progress_lines(done)
        assert len(lines) == len(set(lines)) and lines, done.stderr
        assert lab.current("bob").status() in (SubmissionStatus.QUEUED, SubmissionStatus.RUNNING)
    finally:
        release.touch()
    wait_for(lambda: lab.current("bob").status() is SubmissionStatus.DONE, "the job to finish once released", 120)
