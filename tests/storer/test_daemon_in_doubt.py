"""A daemon killed between the journal's intent to send and the confirmation settles the
job at its next start, at once, over real SFTP to a loopback sshd: a bundle that never
left is sent again (no attempt counted), one that arrived is confirmed and never sent
twice. The kill is played by an exception no code path catches, raised at the kill point;
the journal file is then all the next daemon has, as after kill -9."""

from __future__ import annotations

import time

import pytest

from tests.storer import test_daemon_results as results_tests
from tests.util import HELLO_C, make_zip, wait_for
from vmchecker import rpc, submit
from vmchecker.contract import SubmissionStatus
from vmchecker.errors import TransportError
from vmchecker.repo import Repository
from vmchecker.storer import transport
from vmchecker.storer.journal import Journal

pytestmark = pytest.mark.sshd

tester = results_tests.tester   # course so, its one tester t1 a real sshd on loopback
_bundles = results_tests._bundles
_notify = results_tests._notify


class Killed(BaseException):
    """The daemon dies here."""


def _die(*args, **kwargs):
    raise Killed


def _killed_while_sending(running_daemon, course, tmp_path, monkeypatch, where: str):
    """A job queued and dispatched by a daemon that dies ``where`` ("upload": after the
    intent, before the upload; "confirm": after the rename, before the confirmation)."""
    daemon = running_daemon(tmp_path / "global.yaml", state_dir=tmp_path / "state")
    archive = make_zip(course.root / "bob.zip", {"hello.c": HELLO_C})
    sub = submit.submit(course, "1-hello", "bob", archive, skip_time_checks=True)
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", "bob", sub.name)
    with monkeypatch.context() as patch:
        patch.setattr(*((transport.TesterLink, "send_bundle", _die) if where == "upload" else (Journal, "confirm_sent", _die)))
        with pytest.raises(Killed):
            daemon.dispatch_once()
    job = daemon.journal.get(job_id)
    assert job.state.value == "sent" and job.confirmed is None
    daemon.close()
    return job


def _restart(running_daemon, tmp_path):
    return running_daemon(tmp_path / "global.yaml", state_dir=tmp_path / "state", dispatch=True)


def test_killed_before_the_upload_resends_at_once_without_counting_an_attempt(tester, running_daemon, tmp_path,
                                                                              monkeypatch):
    course, _done = tester
    job = _killed_while_sending(running_daemon, course, tmp_path, monkeypatch, "upload")
    assert _bundles(course, job.id) == []
    daemon = _restart(running_daemon, tmp_path)
    wait_for(lambda: daemon.journal.get(job.id).confirmed, "the job to be sent again", timeout=10)
    again = daemon.journal.get(job.id)
    assert (again.state.value, again.tester, again.attempts, again.failed_on, again.reasons) == \
        ("sent", "t1", 0, (), ())
    assert len(_bundles(course, job.id)) == 1
    assert daemon.daemon.courses.get("so").scheduler.testers()[0].failures == 0   # t1 was not blamed


@pytest.mark.parametrize("held", ["queued", "done"])
def test_killed_before_the_confirmation_confirms_and_never_resends(tester, running_daemon, tmp_path, monkeypatch,
                                                                   held):
    course, done = tester
    job = _killed_while_sending(running_daemon, course, tmp_path, monkeypatch, "confirm")
    (bundle,) = _bundles(course, job.id)
    if held == "done":   # the tester ran it meanwhile: bundle gone, results committed
        bundle.unlink()
        (done / job.id).mkdir()
        (done / job.id / "grade.vmr").write_text("")
        (done / job.id / "result.json").write_text('{"status": "done"}')
    else:
        before = bundle.stat()
    daemon = _restart(running_daemon, tmp_path)
    wait_for(lambda: daemon.journal.get(job.id).confirmed, "the job to be confirmed", timeout=10)
    time.sleep(1.0)   # a few dispatcher passes: nothing is sent again
    confirmed = daemon.journal.get(job.id)
    assert (confirmed.state.value, confirmed.attempts, confirmed.sent) == ("sent", 0, job.sent)
    if held == "done":
        assert _bundles(course, job.id) == []
        assert _notify(daemon, confirmed, "done", ["grade.vmr", "result.json"]) is True   # its notify lands as usual
        assert daemon.journal.get(job.id).state.value == "done"
    else:
        (after,) = _bundles(course, job.id)
        assert (after.stat().st_ino, after.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_confirmed_send_is_left_alone_at_restart(tester, running_daemon, tmp_path):
    course, _done = tester
    daemon = running_daemon(tmp_path / "global.yaml", state_dir=tmp_path / "state")
    archive = make_zip(course.root / "ann.zip", {"hello.c": HELLO_C})
    sub = submit.submit(course, "1-hello", "ann", archive, skip_time_checks=True)
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", "ann", sub.name)
    assert daemon.dispatch_once() == 1
    job = daemon.journal.get(job_id)
    assert job.confirmed is not None
    (bundle,) = _bundles(course, job_id)
    bundle.unlink()   # taken by the tester, which is running it
    daemon.close()
    daemon = _restart(running_daemon, tmp_path)
    time.sleep(1.0)
    assert daemon.journal.get(job_id) == job and _bundles(course, job_id) == []


def test_an_unreachable_tester_leaves_the_job_to_its_deadline(tester, running_daemon, tmp_path, monkeypatch):
    course, _done = tester
    job = _killed_while_sending(running_daemon, course, tmp_path, monkeypatch, "upload")
    monkeypatch.setattr(transport.TesterLink, "probe", _raise_transport)
    monkeypatch.setattr(transport.TesterLink, "holds", _die)   # never asked: it did not answer the probe
    daemon = _restart(running_daemon, tmp_path)
    time.sleep(1.0)
    left = daemon.journal.get(job.id)
    assert (left.state.value, left.confirmed, left.attempts) == ("sent", None, 0)
    sub = Repository(course).submission("1-hello", "bob", job.submission)
    assert sub.status() is SubmissionStatus.RUNNING


def _raise_transport(self):
    raise TransportError(f"{self.where}: cannot connect: timed out")
