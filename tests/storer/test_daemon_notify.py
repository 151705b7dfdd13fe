"""The daemon's notify() refuses what a semi-trusted tester must not do.

The daemon runs for real (XML-RPC over loopback, journal on disk); the jobs are put
in the journal directly as "sent" to a tester, and nothing is pulled because every
call here must be refused before any transfer.
"""

from __future__ import annotations

import json
import xmlrpc.client

import pytest

from tests.util import HELLO_C, make_zip, write_course
from vmchecker import config, rpc, submit
from vmchecker.contract import SubmissionStatus
from vmchecker.errors import CallRefused, RpcError
from vmchecker.repo import Repository


@pytest.fixture
def daemon(tmp_path, monkeypatch, running_daemon):
    """The real daemon, its dispatcher idle: the testers here are never contacted."""
    extra = {"testers": {"t1": {"host": "127.0.0.1"}, "t2": {"host": "192.0.2.7", "user": "vmchecker",
                                                            "queue": "/q"}},
             "machines": {"linux": {"testers": ["t1", "t2"]}}}
    path = write_course(tmp_path, extra=extra)
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = running_daemon(tmp_path / "global.yaml")
    d.course = config.load_course(path)
    return d


def _sent_job(daemon, tester):
    archive = make_zip(daemon.course.root / "a.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "bob", archive, skip_time_checks=True)
    job = daemon.journal.enqueue("so", "1-hello", "bob", sub.name, "linux")
    return daemon.journal.mark_sent(job.id, tester, deadline=9e12), sub


def _notify(daemon, job_id, key, files=("grade.vmr",), status="done"):
    return rpc.Client(daemon.url, timeout=5).call(rpc.NOTIFY, job_id, key, status, list(files), {})


def _assert_nothing_written(daemon, job, sub):
    assert daemon.journal.get(job.id).state.value == "sent"
    assert sorted(p.name for p in sub.results_dir.iterdir()) == ["grade.vmr"]
    assert sub.status().value == "saved"


def test_unknown_job_refused(daemon, caplog):
    with pytest.raises(CallRefused, match="unknown job"):
        _notify(daemon, "20260101T000000-0123456789abcdef", "k" * 43)
    assert "unknown job" in caplog.text


def test_wrong_key_refused(daemon, caplog):
    job, sub = _sent_job(daemon, "t1")
    with pytest.raises(CallRefused, match="wrong key"):
        _notify(daemon, job.id, ("y" if job.key[0] == "x" else "x") + job.key[1:])
    _assert_nothing_written(daemon, job, sub)
    assert "wrong key" in caplog.text


def test_wrong_address_refused(daemon, caplog):
    job, sub = _sent_job(daemon, "t2")  # sent to 192.0.2.7; we call from 127.0.0.1
    with pytest.raises(CallRefused, match="from 127.0.0.1"):
        _notify(daemon, job.id, job.key)
    _assert_nothing_written(daemon, job, sub)
    assert "refused notify" in caplog.text


@pytest.mark.parametrize("bad", ["../grade.vmr", "a/b.vmr", "/etc/passwd", "..", "x\x00y"])
def test_path_in_files_refused(daemon, bad):
    job, sub = _sent_job(daemon, "t1")
    with pytest.raises((CallRefused, RpcError, xmlrpc.client.Fault)):
        _notify(daemon, job.id, job.key, files=["grade.vmr", bad])
    _assert_nothing_written(daemon, job, sub)


def test_queue_task_only_from_storer(daemon):
    # From loopback it is accepted...
    archive = make_zip(daemon.course.root / "b.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "carol", archive, skip_time_checks=True)
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", "carol", sub.name)
    job = daemon.journal.get(job_id)
    assert (job.account, job.submission, job.state.value) == ("carol", sub.name, "queued")
    # ...twice gives the same job, and a missing submission is refused.
    assert rpc.Client(daemon.url).queue_task("so", "1-hello", "carol", sub.name) == job_id
    with pytest.raises(CallRefused, match="no submission|not a submission|bad submission"):
        rpc.Client(daemon.url).queue_task("so", "1-hello", "carol", "2020.01.01 00.00.00")


def test_vmchecker_status_shows_the_daemons_view(daemon, capsys):
    from vmchecker.cli import status

    archive = make_zip(daemon.course.root / "c.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "dave", archive, skip_time_checks=True)
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", "dave", sub.name)
    assert status.main(["--url", daemon.url, "so"]) == 0
    text = capsys.readouterr().out
    assert job_id in text and "queued" in text and "so/1-hello/dave" in text
    assert status.main(["--url", daemon.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [j["job_id"] for j in data["jobs"]] == [job_id] and data["counts"]["queued"] == 1


def test_a_queued_jobs_timeline_starts_when_its_upload_was_stored(daemon, capsys):
    from vmchecker.cli import status

    archive = make_zip(daemon.course.root / "t.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "tina", archive, skip_time_checks=True)
    stored = (sub.results_dir / "grade.vmr").stat().st_mtime
    job_id = rpc.Client(daemon.url).queue_task("so", "1-hello", "tina", sub.name)
    assert status.main(["--url", daemon.url, "--job", job_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["clock"]) for r in data["stages"]] == [("stored", "storer"), ("queued", "storer")]
    assert data["stages"][0]["at"] == stored and data["state"] == "queued" and data["notes"] == []
    with pytest.raises(CallRefused, match="bad timelines"):
        rpc.Client(daemon.url).call(rpc.TIMELINES, "not a list")
    with pytest.raises(CallRefused, match="bad job_id"):
        rpc.Client(daemon.url).timelines(["../etc"])


def test_vmchecker_status_says_when_the_daemon_is_down(capsys):
    from vmchecker.cli import status

    assert status.main(["--url", "http://127.0.0.1:9/"]) == 8
    assert "not answering" in capsys.readouterr().err


def test_a_recheck_while_a_job_runs_is_tested_again(daemon):
    archive = make_zip(daemon.course.root / "e.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "erin", archive, skip_time_checks=True)
    client = rpc.Client(daemon.url)
    first = client.queue_task("so", "1-hello", "erin", sub.name)
    assert client.queue_task("so", "1-hello", "erin", sub.name) == first  # still waiting: the same job
    daemon.journal.mark_sent(first, "t1", deadline=9e12)
    submit.recheck(sub)
    second = client.queue_task("so", "1-hello", "erin", sub.name)
    assert second != first and daemon.journal.get(second).state.value == "queued"
    rechecked = Repository(daemon.course).submission("1-hello", "erin", sub.name)
    assert rechecked.info.job_id == second and rechecked.status().value == "queued"


def test_queue_task_refuses_a_graded_submission(daemon):
    archive = make_zip(daemon.course.root / "f.zip", {"hello.c": HELLO_C})
    sub = submit.submit(daemon.course, "1-hello", "fay", archive, skip_time_checks=True)
    sub.set_status(SubmissionStatus.DONE)
    with pytest.raises(CallRefused, match="already done: recheck it"):
        rpc.Client(daemon.url).queue_task("so", "1-hello", "fay", sub.name)


@pytest.mark.parametrize("files", [[], ["grade.vmr"], ["vmchecker-stderr.vmr", "run-stdout.vmr"]])
def test_a_done_notify_without_result_json_is_refused_and_the_job_stays_sent(daemon, files):
    """The key alone (read on a tester by anyone) must not end a job with no results:
    nothing is fetched, the job waits for its deadline and is resent as for any failure."""
    job, sub = _sent_job(daemon, "t1")
    with pytest.raises(CallRefused, match="must name result.json"):
        _notify(daemon, job.id, job.key, files=files)
    _assert_nothing_written(daemon, job, sub)
    assert daemon.journal.get(job.id).attempts == job.attempts   # not counted against the tester
