"""``submit_only`` assignments are stored and graded by hand: no path ever queues them.

The real storer daemon runs (its dispatcher idle, so nothing is sent anywhere); a
tested assignment of the same course shows the daemon is reachable and does journal
what it is given. Every way a submit-only upload could reach it (``vmchecker-submit``,
the web form, ``vmchecker-resubmit``, the daemon's own start-up sweep of saved
submissions, a direct ``queue_task``) leaves the journal without a job for it; the
grades say it waits for a grader until a grader writes ``grade.vmr``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from werkzeug.datastructures import FileStorage

from tests.fixtures import RunningDaemon
from tests.util import make_zip, zip_bytes
from tests.web.helpers import HELLO, open_course
from vmchecker import config, fsutil, grades, rpc
from vmchecker.cli import resubmit
from vmchecker.cli import submit as cli_submit
from vmchecker.contract import GRADE_VMR, SubmissionStatus
from vmchecker.errors import CallRefused
from vmchecker.repo import Repository
from vmchecker.storer.web import uploads
from vmchecker.submit import submit

TESTERS = {"t1": {"host": "192.0.2.11"}}   # TEST-NET-1: never contacted, only named


@pytest.fixture
def course_and_daemon(tmp_path: Path, running_daemon, monkeypatch) -> tuple[config.CourseConfig, RunningDaemon]:
    """Course ``so`` whose ``1-hello`` is submit-only and ``0-past`` is tested, served by
    the real daemon (its ``storer.daemon`` points at it)."""
    root = tmp_path / "up"
    open_course(root, "", testers=TESTERS)   # the daemon needs the files (no storer.daemon: its own address)
    daemon = running_daemon(root / "global.yaml")
    course = open_course(root, daemon.url, testers=TESTERS, submit_only=True)
    monkeypatch.setenv("VMCHECKER_CONFIG", str(root / "global.yaml"))
    return course, daemon


def _jobs(daemon: RunningDaemon, assignment: str) -> list:
    return [job for job in daemon.journal.active() if job.assignment == assignment]


def test_no_path_queues_a_submit_only_upload(course_and_daemon, tmp_path, capsys):
    course, daemon = course_and_daemon
    archive = make_zip(tmp_path / "hello.zip", HELLO)

    # the control: a tested assignment of the same course is journaled
    assert cli_submit.main(["so", "0-past", "bob", str(archive), "--skip-time-checks"]) == 0
    assert len(_jobs(daemon, "0-past")) == 1

    # vmchecker-submit
    assert cli_submit.main(["so", "1-hello", "bob", str(archive)]) == 0
    assert "not queued: 1-hello is submit-only" in capsys.readouterr().out
    # the web form
    outcome = uploads.upload(course, "1-hello", "student", FileStorage(io.BytesIO(zip_bytes(HELLO)), "a.zip"), 5)
    assert outcome.ok and not outcome.queued and "a grader will grade it" in outcome.message
    # vmchecker-resubmit, and a recheck from the web
    assert resubmit.main(["so", "--assignment", "1-hello"]) == 0
    assert capsys.readouterr().out.count("skipped so/1-hello/") == 2
    sub = Repository(course).current("1-hello", "student")
    assert not uploads.recheck_submission(course, sub, 5).ok
    # the daemon's start-up sweep of saved submissions, and a direct call
    assert daemon.daemon.queue_saved_submissions() == 0
    with pytest.raises(CallRefused, match="submit-only"):
        rpc.Client(daemon.url).queue_task("so", "1-hello", "student", sub.name)

    assert _jobs(daemon, "1-hello") == []
    for account in ("bob", "student"):
        assert Repository(course).current("1-hello", account).status() is SubmissionStatus.SAVED


def test_submit_only_waits_for_a_grader_until_one_grades(course_and_daemon):
    course, _ = course_and_daemon
    sub = submit(course, "1-hello", "ana", zip_bytes(HELLO))
    row = grades.rebuild(course)[0]
    assert (row.status, row.grade, row.reason) == ("saved", None, "waiting for a grader")
    fsutil.write_atomic(sub.results_dir / GRADE_VMR, "-2: the report is missing\n")
    row = grades.update(course, sub)
    assert (row.status, row.grade, row.reason) == ("done", 8, "the report is missing")
