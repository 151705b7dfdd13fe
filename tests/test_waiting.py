"""vmchecker.waiting without a daemon: the verdict read from a submission's files, and
how progress is shown on a terminal and elsewhere (the real daemon and tester are in
tests/test_wait.py)."""

from __future__ import annotations

import io
import json

import pytest

from tests.util import HELLO_C, write_course, zip_bytes
from vmchecker import config, fsutil, submit, waiting
from vmchecker.contract import GRADE_VMR, RESULT_JSON, SubmissionStatus
from vmchecker.waiting import Verdict


@pytest.fixture
def course(tmp_path, monkeypatch) -> config.CourseConfig:
    path = write_course(tmp_path, extra={"assignments": {
        "1-hello": {"deadline": "2099-03-01 23:55:00"},
        "2-essay": {"deadline": "2099-03-01 23:55:00", "machine": "linux", "submit_only": True}}})
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    return config.load_course(path)


def stored(course, grade: str | None = None, result: dict | None = None, assignment: str = "1-hello"):
    sub = submit.submit(course, assignment, "bob", zip_bytes({"hello.c": HELLO_C}), skip_time_checks=True)
    if grade is not None:
        fsutil.write_atomic(sub.results_dir / GRADE_VMR, grade)
    if result is not None:
        fsutil.write_atomic(sub.results_dir / RESULT_JSON, json.dumps(result))
    return sub


STEPS_OK = {"build": {"attempted": True, "exit_code": 0}, "run": {"attempted": True, "exit_code": 0}}


@pytest.mark.parametrize("grade, result, verdict, reason", [
    ("done\n", {"status": "done", "grade_file": True, "steps": STEPS_OK}, Verdict.PASSED, ""),
    ("-1: a\n+1: b\n", None, Verdict.PASSED, ""),
    ("-0: the build failed (exit status 2)\n", {"status": "done", "grade_file": True,
     "steps": {**STEPS_OK, "build": {"attempted": True, "exit_code": 2}}}, Verdict.FAILED,
     "the build failed (exit status 2)"),
    ("-2: test 3 failed\n", None, Verdict.FAILED, "test 3 failed"),
    ("error\n", None, Verdict.ERROR, "the job ended in error"),
])
def test_the_verdict_comes_from_the_submissions_files(course, grade, result, verdict, reason):
    outcome = waiting.judge(course, stored(course, grade, result))
    assert (outcome.verdict, outcome.reason) == (verdict, reason)


def test_a_waiting_submission_has_no_verdict_and_a_submit_only_one_is_an_error(course):
    assert waiting.judge(course, stored(course)) is None
    outcome = waiting.judge(course, stored(course, assignment="2-essay"))
    assert outcome.verdict is Verdict.ERROR and "never tested" in outcome.reason


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_on_a_terminal_and_a_line_per_change_elsewhere(course):
    sub = stored(course)
    sub.set_status(SubmissionStatus.QUEUED)
    queued = {("1-hello", "bob", sub.name): {"position": 2, "estimated_finish": 4102444800.0, "tester": ""}}
    sent = {("1-hello", "bob", sub.name): {"position": 0, "estimated_finish": 4102444801.0, "tester": "t1"}}
    log = io.StringIO()
    shown = waiting.Progress(log)
    for queue in (queued, queued, None, sent, sent):
        shown.update([sub], queue)
    shown.close()
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "1-hello/bob: position 2 in the queue", "1-hello/bob: queued; the storer daemon is not answering",
        "1-hello/bob: being tested on t1"]
    assert "results expected around " in lines[0]
    tty = Terminal()
    shown = waiting.Progress(tty)
    shown.update([sub], queued)
    shown.update([sub], sent)
    shown.close()
    assert tty.getvalue().count("\r") == 3 and "\n" not in tty.getvalue()
    assert tty.getvalue().endswith("\r\x1b[K")


def test_a_wait_that_sees_no_change_times_out(course):
    sub = stored(course)
    now = [0.0]
    outcomes = waiting.wait(course, [sub], 3, io.StringIO(), clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert [o.verdict for o in outcomes] == [Verdict.TIMED_OUT] and "within 3 s" in outcomes[0].reason
