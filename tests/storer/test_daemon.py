"""The daemon as a whole: status() names every course it cannot use, who counts as a
caller on the storer, and the drain mode (``--once``)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, make_zip, write_course
from vmchecker import config, rpc, submit
from vmchecker.cli import status as status_cli
from vmchecker.contract import GRADE_VMR, RESULT_JSON, VMCHECKER_STDERR, JobState, SubmissionStatus
from vmchecker.repo import Repository
from vmchecker.storer import transport
from vmchecker.storer.daemon import StorerDaemon
from vmchecker.storer.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two courses; ``pc`` has a job queued and then a config edit that breaks it."""
    write_course(tmp_path, "so")
    pc = write_course(tmp_path, "pc")
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    d.job = d.journal.enqueue("pc", "1-hello", "bob", "2026.02.20 10.00.00", "linux")
    pc.write_text(pc.read_text().replace("course:\n", "course: [\n", 1))
    yield d
    d.server.server_close()
    d.courses.close()
    d.journal.close()


def test_a_course_whose_config_does_not_load_is_reported(daemon: StorerDaemon, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        answer = daemon.status("127.0.0.1")
    assert [e["course"] for e in answer["errors"]] == ["pc"]
    assert "pc/config.yaml" in answer["errors"][0]["error"]
    assert "status: course pc is unusable" in caplog.text
    # its job is still listed (without an estimate), the other course is whole
    assert [(j["job_id"], j["estimated_finish"]) for j in answer["jobs"]] == [(daemon.job.id, None)]
    assert {t["course"] for t in answer["testers"]} == {"so"}
    text = status_cli.render(answer)
    assert "course pc is unusable: " in text and "tester so/t1" in text


def test_a_course_loaded_before_then_removed_is_reported(daemon: StorerDaemon, tmp_path: Path) -> None:
    assert daemon.courses.get("so")
    (tmp_path / "so" / "config.yaml").unlink()
    answer = daemon.status("127.0.0.1")
    assert sorted(e["course"] for e in answer["errors"]) == ["pc", "so"]
    assert answer["testers"] == []


def test_a_sound_daemon_reports_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_course(tmp_path, "so")
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    try:
        answer = d.status("127.0.0.1")
    finally:
        d.server.server_close()
        d.journal.close()
    assert answer["errors"] == [] and [t["tester"] for t in answer["testers"]] == ["t1"]
    assert "unusable" not in status_cli.render(answer)


# ---------------------------------------------------------------- callers


def test_local_callers_follow_the_courses_queue_task_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_course(tmp_path, "so")
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    try:
        assert d.is_local_caller("127.0.0.1") and d.is_local_caller("::1")
        assert not d.is_local_caller("192.0.2.7")
        data = yaml.safe_load(path.read_text())
        data["storer"]["queue_task_from"] = ["192.0.2.0/24"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        os.utime(path, (1, 1))  # a new mtime even within the file system's clock tick
        assert d.is_local_caller("192.0.2.7")  # no restart needed
        assert not d.is_local_caller("198.51.100.1")
    finally:
        d.server.server_close()
        d.courses.close()
        d.journal.close()


# ---------------------------------------------------------------- --once


class FakeTesterLink(transport.TesterLink):
    """The real link but for the SSH transfers: an upload is answered by a notify, as a
    tester does once the job has run, and the results it names are written on fetch."""

    daemon: StorerDaemon

    def send_bundle(self, local_zip, queue_dir: str, name: str) -> str:
        job_id = name.removesuffix(".zip").rsplit("_", 1)[1]
        job = self.daemon.journal.get(job_id)
        rpc.Client(f"http://127.0.0.1:{self.daemon.port}/").call(rpc.NOTIFY, job.id, job.key, "done",
                                                                 [GRADE_VMR, RESULT_JSON], {})
        return f"{queue_dir}/{name}"

    def fetch_results(self, remote_dir: str, names, local_dir) -> list[Path]:
        (Path(local_dir) / GRADE_VMR).write_text("ok: all passed\n")
        step = {"attempted": True, "exit_code": 0, "signal": None, "timed_out": False}
        (Path(local_dir) / RESULT_JSON).write_text(json.dumps(   # the account of a run that completed
            {"status": "done", "steps": {"build": step, "run": step}, "grade_file": True}))
        return [Path(local_dir) / GRADE_VMR, Path(local_dir) / RESULT_JSON]


def _saved(course: config.CourseConfig, account: str):
    archive = make_zip(course.root / f"{account}.zip", {"hello.c": HELLO_C})
    return submit.submit(course, "1-hello", account, archive, skip_time_checks=True)


def test_once_serves_until_every_job_has_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    course = config.load_course(write_course(tmp_path, "so"))
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    subs = [_saved(course, "bob"), _saved(course, "carol")]  # left saved: found by the start-up sweep
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state", poll=0.1,
                     once=True)
    link = FakeTesterLink.from_config(d.courses.get("so").config, "t1")
    link.daemon = d
    d.courses.get("so").links["t1"] = link
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        d.request_stop("test timed out")
        thread.join(30)
        pytest.fail("--once did not return once every job had ended")
    assert result == [0]
    for sub in subs:
        sub = Repository(course).submission("1-hello", sub.account, sub.name)
        assert sub.status() == SubmissionStatus.DONE and sub.grade_text() == "ok: all passed\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_once_as_a_process_exits_when_nothing_is_left(tmp_path: Path) -> None:
    """The command a script runs: the tester is down and one attempt is allowed, so
    the job ends in error and the daemon exits 0 on its own."""
    path = write_course(tmp_path, "so", extra={"testers": {"t1": {"port": _closed_port()}},
                                               "storer": {"max_attempts": 1}})
    course = config.load_course(path)
    sub = _saved(course, "bob")
    env = dict(os.environ, VMCHECKER_CONFIG=str(tmp_path / "global.yaml"))
    done = subprocess.run([sys.executable, "-m", "vmchecker.cli.storer_daemon", "--once", "--poll", "0.1",
                           "--listen", "127.0.0.1:0", "--state", str(tmp_path / "state")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no job queued or sent, stopping" in done.stderr
    sub = Repository(course).submission("1-hello", "bob", sub.name)
    assert sub.status() == SubmissionStatus.ERROR
    assert "could not send the bundle" in (sub.results_dir / VMCHECKER_STDERR).read_text()
    with Journal(tmp_path / "state" / "journal.db") as journal:
        assert {s.value: n for s, n in journal.counts().items() if n} == {JobState.ERROR.value: 1}


def test_once_is_in_the_help() -> None:
    done = subprocess.run([sys.executable, "-m", "vmchecker.cli.storer_daemon", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--once" in done.stdout and "no job queued" in done.stdout
