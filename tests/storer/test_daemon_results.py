"""notify() pulls results over real SFTP from a real sshd on loopback (the tester's side
of the exchange is played by writing its done/<jobid>/ folder, which is all a tester
does before it calls notify)."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.lab import skip_unless_lab, sshd
from tests.util import HELLO_C, make_zip, write_course
from vmchecker import config, rpc, submit
from vmchecker.repo import Repository, Status
from vmchecker.storer.daemon import StorerDaemon


@pytest.fixture
def setup(tmp_path, monkeypatch):
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
                 "storer": {"max_attempts": 2}}
        path = write_course(tmp_path, extra=extra)
        monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
        daemon = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
        thread = threading.Thread(target=daemon.server.serve_forever, daemon=True)
        thread.start()
        course = config.load_course(path)
        try:
            yield daemon, course, done
        finally:
            daemon.server.shutdown()
            daemon.server.server_close()
            daemon.courses.close()
            daemon.journal.close()
            thread.join(5)


def _running_job(daemon, course, account):
    """A submission queued through the daemon and marked sent to t1, as the dispatcher does."""
    archive = make_zip(course.root / f"{account}.zip", {"hello.c": HELLO_C})
    sub = submit.submit(course, "1-hello", account, archive, skip_time_checks=True)
    job_id = rpc.Client(f"http://127.0.0.1:{daemon.port}/").queue_task("so", "1-hello", account, sub.name)
    job = daemon.journal.get(job_id)
    sub.set_status(Status.RUNNING)
    daemon.journal.mark_sent(job.id, "t1", deadline=9e12)
    return job, sub


def _notify(daemon, job, status, files):
    return rpc.Client(f"http://127.0.0.1:{daemon.port}/").call(rpc.NOTIFY, job.id, job.key, status, files, {})


def test_results_are_pulled_into_the_submission(setup):
    daemon, course, done = setup
    job, sub = _running_job(daemon, course, "bob")
    folder = done / job.id
    folder.mkdir()
    (folder / "run-stdout.vmr").write_text("Hello, world!\n")
    (folder / "grade.vmr").write_text("-1: missing newline\n")
    assert _notify(daemon, job, "done", ["run-stdout.vmr", "grade.vmr"]) is True
    sub = Repository(course).submission("1-hello", "bob", sub.name)
    assert (sub.results_dir / "run-stdout.vmr").read_text() == "Hello, world!\n"
    assert sub.status() is Status.DONE and sub.grade_text() == "-1: missing newline\n"
    assert daemon.journal.get(job.id).state.value == "done"
    assert not list(sub.path.glob(".incoming-*"))


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
            assert sub.status() is Status.QUEUED
            assert "did not start (try 1)" in job.reasons[0]
            daemon.journal.mark_sent(job.id, "t1", deadline=9e12, now=job.retry_at)
            sub.set_status(Status.RUNNING)  # as the dispatcher does before the resend
    assert job.state.value == "error"
    assert sub.status() is Status.ERROR
    stderr = (sub.results_dir / "vmchecker-stderr.vmr").read_text()
    assert "try 1" in stderr and "try 2" in stderr


def test_a_symlink_in_the_results_is_refused_and_counts_against_the_tester(setup):
    daemon, course, done = setup
    job, sub = _running_job(daemon, course, "dave")
    folder = done / job.id
    folder.mkdir()
    (folder / "grade.vmr").symlink_to("/etc/shadow")
    with pytest.raises(rpc.RpcRefused, match="symbolic link"):
        _notify(daemon, job, "done", ["grade.vmr"])
    sub = Repository(course).submission("1-hello", "dave", sub.name)
    assert not (sub.results_dir / "grade.vmr").is_symlink()
    assert sub.status() is Status.QUEUED  # resent, nothing of the tester's kept
    assert daemon.journal.get(job.id).attempts == 1
