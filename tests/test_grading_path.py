"""The grading contract through the whole path: what a submission earns once it has gone
from ``vmchecker-submit`` through the storer daemon, SFTP to a tester, the queue manager
and an LXC guest, and back.

Nothing stands in: the storer daemon and the queue manager are processes, the storer
reaches the tester through a real sshd on loopback, the guest is a clone of the base
container, and the grade is what the storer wrote into the submission's ``grade.vmr``
and what ``vmchecker-grades`` shows, with its reason. The course is the one of
:mod:`tests.executor.grading_cases` (tests/executor/test_grading_contract.py runs every
case on LXC and KVM without the storer); here a correct program gets 10, a compile
error and an infinite loop get 0 with the reason, a Makefile that forges its grade
still gets exactly 10, and a ``submit_only`` assignment is never dispatched.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.executor import grading_cases as cases
from tests.lab import lxc_unusable, sshd
from tests.util import free_port, make_zip, stop_process, wait_for, wait_for_port, write_course
from vmchecker import config
from vmchecker.contract import GRADE_VMR, Stage
from vmchecker.repo import Repository, Submission

pytestmark = [pytest.mark.lxc, pytest.mark.sshd]

BASE = "vmchecker-base"
LOOP_TIMEOUT = 5       # seconds: 2-loop's run step, far below run.sh's own limit for ./hello
GRADED_WAIT = 300      # seconds for every submission of the module to be graded
# The submissions, each by its own account: (assignment, archive).
SUBMISSIONS = {
    "correct": ("1-hello", cases.CORRECT),
    "compile-error": ("1-hello", cases.COMPILE_ERROR),
    "loop": ("2-loop", cases.INFINITE_LOOP),
    "forging-build": ("1-hello", cases.FORGING_BUILD),
    "report": ("3-report", cases.CORRECT),
}


class Process:
    """A vmchecker command in the background, logging to a file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=self.log, stderr=self.log, env=env)

    def stop(self) -> None:
        stop_process(self.proc, grace=30)
        self.log.close()


@dataclass
class System:
    course: config.CourseConfig
    env: dict[str, str]
    state: Path                    # the daemon's state folder (journal.db)
    accounts: dict[str, str]       # case -> account that submitted it
    submit_output: dict[str, str]  # case -> what vmchecker-submit printed

    def submission(self, case: str) -> Submission:
        return Repository(self.course).current(SUBMISSIONS[case][0], self.accounts[case])

    def graded(self, case: str) -> Submission:
        """The case's submission once the storer has its results (done or error)."""
        def final() -> Submission | None:
            sub = self.submission(case)
            return sub if sub.status().value in ("done", "error") else None

        sub = wait_for(final, f"{case} to be graded", GRADED_WAIT, interval=0.3)
        assert sub.status().value == "done", (sub.results_dir / "vmchecker-stderr.vmr").read_text()
        return sub

    def grades(self) -> dict[str, dict[str, str]]:
        """``vmchecker-grades --format csv``, one row per case."""
        out = subprocess.run([sys.executable, "-m", "vmchecker.cli.grades", self.course.id, "--format", "csv"],
                             env=self.env, capture_output=True, text=True, check=True).stdout
        rows = {(r["account"], r["assignment"]): r for r in csv.DictReader(io.StringIO(out))}
        return {case: rows[(account, SUBMISSIONS[case][0])] for case, account in self.accounts.items()
                if (account, SUBMISSIONS[case][0]) in rows}

    def journaled(self, assignment: str) -> list[tuple[str, str]]:
        """The daemon journal's jobs for ``assignment`` (id, state), read-only."""
        with sqlite3.connect(f"file:{self.state / 'journal.db'}?mode=ro", uri=True) as db:
            return db.execute("SELECT id, state FROM jobs WHERE assignment = ?", (assignment,)).fetchall()


def _account(n: int) -> str:
    return f"s{n:02d}"


def _course(root: Path, daemon_url: str, ssh: sshd.SshServer, tester: Path) -> config.CourseConfig:
    """Course ``so`` graded by the contract's course on tester t1 (the loopback sshd)."""
    assignment = {"deadline": "2099-03-01 23:55:00", "machine": "linux"}
    extra = {
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00",
                   "students": [_account(n) for n in range(len(SUBMISSIONS))]},
        "storer": {"daemon": daemon_url},
        "testers": {"t1": {"host": "127.0.0.1", "port": ssh.port, "user": ssh.user, "queue": str(tester / "queue"),
                           "done": str(tester / "done"), "slots": 1}},
        "machines": {"linux": {"type": "lxc", "vm": BASE, "testers": ["t1"],
                               "limits": {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}}},
        "assignments": {"defaults": {"timeout": 60, "min_interval": 0},
                        "1-hello": assignment,
                        "2-loop": {**assignment, "timeout": LOOP_TIMEOUT, "order": 2},
                        "3-report": {**assignment, "submit_only": True, "order": 3}},
    }
    path = write_course(root, extra=extra)
    course_dir = path.parent
    (course_dir / "build.sh").write_text(cases.BUILD_SH)
    (course_dir / "run.sh").write_text(cases.run_sh(4 * LOOP_TIMEOUT))
    for name in ("1-hello", "2-loop", "3-report"):
        make_zip(course_dir / "tests" / f"{name}.zip", cases.TESTS)
    keys = course_dir / "keys"
    keys.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
    (keys / "known_hosts").write_text(ssh.host_key_line() + "\n")
    return config.load_course(path)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The storer daemon, the loopback sshd and the queue manager for one course, and every
    submission of SUBMISSIONS made through vmchecker-submit (graded in the background)."""
    reason = sshd.available() or lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("grading-path")
    port = free_port()
    env = {**os.environ, "VMCHECKER_CONFIG": str(root / "global.yaml")}
    stack: list[Process] = []
    with sshd.SshServer() as ssh:
        tester = sshd.tester_folder(ssh, "vmck-path-tester-")
        try:
            course = _course(root, f"http://127.0.0.1:{port}/", ssh, tester)
            daemon = Process(["vmchecker.cli.storer_daemon", "--listen", f"127.0.0.1:{port}", "--state",
                              str(root / "state"), "--poll", "0.5"], root / "daemon.log", env)
            stack.append(daemon)
            wait_for_port(daemon.proc, port, 30, "the storer daemon")
            queue_manager = Process(["vmchecker.cli.queue_manager", str(tester)], root / "queue-manager.log", env)
            stack.append(queue_manager)
            system = System(course, env, root / "state", {}, {})
            for n, (case, (assignment, files)) in enumerate(SUBMISSIONS.items()):
                account = _account(n)
                archive = make_zip(root / f"{case}.zip", files)
                done = subprocess.run([sys.executable, "-m", "vmchecker.cli.submit", "--skip-time-checks",
                                       course.id, assignment, account, str(archive)],
                                      env=env, capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
                system.accounts[case], system.submit_output[case] = account, done.stdout
            yield system
        finally:
            for part in reversed(stack):
                part.stop()
            shutil.rmtree(tester, ignore_errors=True)
    guests = {json.loads(p.read_text())["vm"] for p in (root / "so" / "repo").glob("*/*/*/results/result.json")}
    left = set(subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True).stdout.split())
    assert not guests & left, f"job clones left behind: {guests & left}"


def _grade_vmr(sub: Submission) -> str:
    return (sub.results_dir / GRADE_VMR).read_text()


def test_correct_program_gets_full_points(system):
    sub = system.graded("correct")
    assert _grade_vmr(sub) == "done\n"
    assert "PASS: hello printed the expected line" in (sub.results_dir / "run-stdout.vmr").read_text()
    row = system.grades()["correct"]
    assert (row["status"], row["grade"], row["reason"]) == ("done", "10", "")


def test_vmchecker_status_shows_every_stage_of_the_job_in_order(system):
    """The job's timeline as a grader reads it, after a real run: every stage from the
    storer's, the tester's and the executor's side, in time order, on the storer's clock."""
    sub = system.graded("correct")
    out = subprocess.run([sys.executable, "-m", "vmchecker.cli.status", "--job", sub.info.job_id],
                         env=system.env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"job {sub.info.job_id}: so/1-hello/{system.accounts['correct']}/")
    assert lines[1].split() == ["stage", "clock", "time", "+previous", "since", "stored"]
    printed = [line.split()[0] for line in lines[2:] if not line.startswith("note:")]
    # on_tester is journaled once the rename returned: the tester may have seen the bundle first
    expected = [s.value for s in Stage if s not in (Stage.ON_TESTER, Stage.CHECK_STARTED, Stage.CHECK_ENDED)]
    assert [s for s in printed if s != Stage.ON_TESTER] == expected, out
    assert printed.index(Stage.SENDING) < printed.index(Stage.ON_TESTER), out
    since_stored = [float(line.split()[-1]) for line in lines[2:2 + len(printed)]]
    assert since_stored[0] == 0 and since_stored == sorted(since_stored), out
    assert "both clocks are shown as recorded" in out   # one machine: one clock


def test_compile_error_gets_nothing_with_the_reason(system):
    sub = system.graded("compile-error")
    assert _grade_vmr(sub) == "-10: the build failed (exit status 2)\n"
    assert "hello.c" in (sub.results_dir / "build-stderr.vmr").read_text()
    row = system.grades()["compile-error"]
    assert (row["status"], row["grade"], row["reason"]) == ("done", "0", "the build failed (exit status 2)")


def test_infinite_loop_gets_nothing_with_the_reason(system):
    sub = system.graded("loop")
    reason = f"the tests did not finish within {LOOP_TIMEOUT} s and were killed"
    assert _grade_vmr(sub) == f"-10: {reason}\n"
    row = system.grades()["loop"]
    assert (row["status"], row["grade"], row["reason"]) == ("done", "0", reason)


def test_makefile_forging_its_grade_gets_exactly_full_points(system):
    sub = system.graded("forging-build")
    assert _grade_vmr(sub) == "done\n"   # no "+90" from the Makefile, the archive or the background
    outcomes = cases.attack_outcomes((sub.results_dir / "build-stdout.vmr").read_text())
    assert {n: outcomes.get(n) for n in cases.REFUSED_ATTACKS} == dict.fromkeys(cases.REFUSED_ATTACKS, "refused")
    assert "forged.vmr" not in os.listdir(sub.results_dir)
    row = system.grades()["forging-build"]
    assert (row["status"], row["grade"], row["reason"]) == ("done", "10", "")


def test_submit_only_is_never_dispatched(system):
    assert "not queued" in system.submit_output["report"]
    for case in SUBMISSIONS:   # every job of the module has been dispatched, run and landed
        if case != "report":
            system.graded(case)
    assert system.journaled("3-report") == []
    assert system.journaled("1-hello") != []   # the control: the journal does hold the others
    sub = system.submission("report")
    assert sub.status().value == "saved" and _grade_vmr(sub) == "saved\n"   # a status word, not a grade
    row = system.grades()["report"]
    assert (row["status"], row["grade"], row["reason"]) == ("saved", "", "waiting for a grader")
