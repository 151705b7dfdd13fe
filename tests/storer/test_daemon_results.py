"""The daemon sends bundles to and pulls results from a tester over real SFTP, a real
sshd on loopback (the tester's side of the exchange is played by writing its
done/<jobid>/ folder, which is all a tester does before it calls notify). Bundles are
sent by the real dispatcher: its loop in the happy path, one pass at a time where a
test checks what lies between two passes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import RunningDaemon
from tests.lab import skip_unless_lab, sshd
from tests.util import HELLO_C, make_zip, wait_for, write_course
from vmchecker import config, grades, rpc, submit
from vmchecker.contract import Stage, SubmissionStatus
from vmchecker.errors import CallRefused
from vmchecker.repo import Repository

pytestmark = pytest.mark.sshd


@pytest.fixture
def tester(tmp_path, monkeypatch):
    """Course ``so`` whose one tester t1 is a real sshd on loopback; (course, its done/)."""
    skip_unless_lab()
    keys = tmp_path / "so" / "keys"
    keys.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    with sshd.SshServer(authorized_keys=[(keys / "id_ed25519.pub").read_text()]) as server:
        done = server.make_dir("done")
        queue = server.make_dir("queue")
        (keys / "known_hosts").write_text(server.host_key_line() + "\n")
        extra = {"testers": {"t1": {"host": "127.0.0.1", "port": server.port, "user": server.user,
                                    "queue": str(queue), "done": str(done)}},
                 "storer": {"max_attempts": 2, "retry_delay": 0}}   # a failed job is due again at once
        path = write_course(tmp_path, extra=extra)
        monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
        yield config.load_course(path), done


@pytest.fixture
def setup(tester, running_daemon, tmp_path):
    """The daemon, its dispatcher making a pass only when the test asks; (daemon, course, done/)."""
    course, done = tester
    return running_daemon(tmp_path / "global.yaml"), course, done


def _bundles(course, job_id: str) -> list[Path]:
    return list(Path(course.testers["t1"].queue).glob(f"*_{job_id}.zip"))


def _running_job(daemon: RunningDaemon, course, account):
    """A submission queued through the daemon and sent to t1 by the real dispatcher: the
    bundle is in the tester's queue/ and the submission is running."""
    archive = make_zip(course.root / f"{account}.zip", {"hello.c": HELLO_C})
    sub = submit.submit(course, "1-hello", account, archive, skip_time_checks=True)
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", account, sub.name)
    if daemon.dispatch:
        wait_for(lambda: _bundles(course, job_id), f"the dispatcher to send job {job_id}")   # journaled before
    else:
        assert daemon.dispatch_once() == 1
    job = daemon.journal.get(job_id)
    assert job.state.value == "sent" and job.tester == "t1" and len(_bundles(course, job_id)) == 1
    sub = Repository(course).submission("1-hello", account, sub.name)
    assert sub.status() is SubmissionStatus.RUNNING
    return job, sub


def _notify(daemon, job, status, files):
    return rpc.Client(daemon.url).call(rpc.NOTIFY, job.id, job.key, status, files, {})


def _step(**changes) -> dict:
    return {"attempted": True, "exit_code": 0, "signal": None, "timed_out": False, "oom_killed": False,
            "timeout_s": 90, "wall_s": 0.1, **changes}


def _account(**changes) -> str:
    """The tester's result.json of a run that completed, fields changed as given."""
    return json.dumps({"status": "done", "steps": {"build": _step(), "run": _step()}, "grade_file": True,
                       "memory_mb": 512, **changes})


def _land(daemon, course, done, account, files: dict[str, str]):
    """A job whose tester wrote ``files`` (name -> text) in its done/<jobid>/, notified and
    landed; the submission as it is then."""
    job, sub = _running_job(daemon, course, account)
    folder = done / job.id
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    assert _notify(daemon, job, "done", sorted(files)) is True
    assert daemon.journal.get(job.id).state.value == "done"
    return Repository(course).submission("1-hello", account, sub.name)


def test_results_are_pulled_into_the_submission(tester, running_daemon, tmp_path):
    course, done = tester
    daemon = running_daemon(tmp_path / "global.yaml", dispatch=True)   # the daemon as it runs
    sub = _land(daemon, course, done, "bob", {"run-stdout.vmr": "Hello, world!\n", "result.json": _account(),
                                              "grade.vmr": "-1: missing newline\n"})
    assert (sub.results_dir / "run-stdout.vmr").read_text() == "Hello, world!\n"
    assert sub.status() is SubmissionStatus.DONE and sub.grade_text() == "-1: missing newline\n"
    assert json.loads((sub.results_dir / "result.json").read_text())["grade_file"] is True
    assert not list(sub.path.glob(".incoming-*"))
    (row,) = grades.rows(course, "1-hello", "bob")   # uploaded now, after the deadline: late penalty
    assert (row.grade, row.reason) == (9 - row.penalty, "missing newline")


@pytest.mark.parametrize("files, reason", [
    # (a done notify that names no result.json is refused: test_daemon_notify.py)
    ({"grade.vmr": "done\n", "result.json": ""},
     "the tester sent no account of the run (result.json missing or unreadable)"),
    ({"grade.vmr": "10: all passed\n", "result.json": "{not json"},
     "the tester sent no account of the run (result.json missing or unreadable)"),
    ({"result.json": _account(steps={"build": _step(exit_code=2), "run": _step(attempted=False)})},
     "the build failed (exit status 2)"),
    ({"grade.vmr": "", "result.json": _account(steps={"build": _step(),
                                                       "run": _step(exit_code=None, signal=9, timed_out=True)})},
     "the tests did not finish within 90 s and were killed"),
    ({"grade.vmr": "done\n", "result.json": _account(grade_file=False)}, "the tests wrote no grade file"),
])
def test_no_points_without_evidence(setup, files, reason):
    daemon, course, done = setup
    sub = _land(daemon, course, done, "erin", files)
    assert sub.status() is SubmissionStatus.DONE
    assert sub.grade_text().splitlines()[0] == f"-10: {reason}"
    assert [(r.status, r.grade, r.reason) for r in grades.rows(course, "1-hello", "erin")] == [("done", 0, reason)]


def test_a_complete_run_gets_full_points_and_never_more(setup):
    daemon, course, done = setup
    sub = _land(daemon, course, done, "fred", {"grade.vmr": "", "result.json": _account()})
    assert sub.grade_text() == "done\n"
    (row,) = grades.rows(course, "1-hello", "fred")   # uploaded now, after the deadline: late penalty
    assert row.grade == 10 - row.penalty and row.penalty > 0
    _land(daemon, course, done, "gina", {"grade.vmr": "+90: bonus\n", "result.json": _account()})
    assert grades.rows(course, "1-hello", "gina")[0].grade == 10    # max_points, whatever the lines say


def test_a_tester_error_resends_then_gives_up_with_every_reason(setup):
    daemon, course, done = setup
    job, sub = _running_job(daemon, course, "carol")
    for attempt in (1, 2):
        folder = done / job.id
        folder.mkdir(exist_ok=True)
        (folder / "vmchecker-stderr.vmr").write_text(f"LXC container did not start (try {attempt})\n")
        assert _notify(daemon, job, "error", ["vmchecker-stderr.vmr"]) is True
        job = daemon.journal.get(job.id)
        sub = Repository(course).submission("1-hello", "carol", sub.name)
        if attempt == 1:  # sent elsewhere: the submission waits again
            assert job.state.value == "queued" and job.attempts == 1
            assert sub.status() is SubmissionStatus.QUEUED
            assert "did not start (try 1)" in job.reasons[0]
            for bundle in _bundles(course, job.id):
                bundle.unlink()                      # as the tester does once it has run it
            assert daemon.dispatch_once() == 1       # the resend
            assert daemon.journal.get(job.id).state.value == "sent" and _bundles(course, job.id)
    assert job.state.value == "error"
    assert sub.status() is SubmissionStatus.ERROR
    stderr = (sub.results_dir / "vmchecker-stderr.vmr").read_text()
    assert "try 1" in stderr and "try 2" in stderr


def test_a_symlink_in_the_results_is_refused_and_counts_against_the_tester(setup):
    daemon, course, done = setup
    job, sub = _running_job(daemon, course, "dave")
    folder = done / job.id
    folder.mkdir()
    (folder / "grade.vmr").symlink_to("/etc/shadow")
    (folder / "result.json").write_text('{"status": "done"}')
    with pytest.raises(CallRefused, match="symbolic link"):
        _notify(daemon, job, "done", ["grade.vmr", "result.json"])
    sub = Repository(course).submission("1-hello", "dave", sub.name)
    assert not (sub.results_dir / "grade.vmr").is_symlink()
    assert sub.status() is SubmissionStatus.QUEUED  # resent, nothing of the tester's kept
    assert daemon.journal.get(job.id).attempts == 1


def _tester_timeline(start: float) -> dict[str, float]:
    order = ["executor_started", "guest_ready", "build_started", "build_ended", "run_started", "run_ended",
             "executor_ended"]
    return {stage: start + 0.01 * n for n, stage in enumerate(order)}


def test_vmchecker_status_prints_a_landed_jobs_timeline_in_order(setup, capsys):
    from vmchecker.cli import status

    daemon, course, done = setup
    job, _sub = _running_job(daemon, course, "tim")
    now = daemon.journal.get(job.id).sent
    stats = {"at_received": now + 0.001, "at_slot_taken": now + 0.002,
             **{f"at_{s}": at for s, at in _tester_timeline(now + 0.003).items()},
             "at_results_durable": now + 0.08, "at_notified": now + 0.09, "at_graded": 1.0}   # not the tester's to say
    (done / job.id).mkdir()
    (done / job.id / "result.json").write_text(_account(timeline=_tester_timeline(now + 0.003)))
    assert rpc.Client(daemon.url).call(rpc.NOTIFY, job.id, job.key, "done", ["result.json"], stats) is True
    assert status.main(["--url", daemon.url, "--job", job.id]) == 0
    text = capsys.readouterr().out
    printed = [line.split()[0] for line in text.splitlines()[2:] if not line.startswith("note:")]
    # in time order: the tester may see the bundle before the storer journals that it is there
    assert [s for s in printed if s != "on_tester"] == [s.value for s in Stage if s not in (
        Stage.ON_TESTER, Stage.CHECK_STARTED, Stage.CHECK_ENDED)]
    assert printed.index("sending") < printed.index("on_tester")
    assert "+previous" in text and "since stored" in text and f"job {job.id}: so/1-hello/tim/" in text
    assert status.main(["--url", daemon.url, "--job", job.id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    graded = [r for r in data["stages"] if r["stage"] == "graded"]
    assert len(graded) == 1 and graded[0]["clock"] == "storer" and graded[0]["at"] > now   # the storer's own
    assert status.main(["--url", daemon.url, "--job", "20260101T000000-0123456789abcdef"]) == 4
    assert "knows no job" in capsys.readouterr().err


def test_results_pulled_without_a_notification_take_the_executors_stages_from_result_json(setup):
    daemon, course, done = setup
    job, _sub = _running_job(daemon, course, "quiet")
    start = daemon.journal.get(job.id).sent + 0.01
    (done / job.id).mkdir()
    (done / job.id / "result.json").write_text(_account(timeline=_tester_timeline(start)))
    lander = daemon.daemon.landing   # what the daemon does when it finds the results itself
    assert lander.accept(daemon.daemon.courses.get("so"), job.id, "t1", "done", ["result.json"], 0.1) == "landed"
    stages = [m.stage.value for m in daemon.journal.stages([job.id])[job.id]]
    assert set(_tester_timeline(start)) <= set(stages) and "notify_received" not in stages
    assert stages[-2:] == ["results_fetched", "graded"]
