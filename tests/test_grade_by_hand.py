"""A grader's lines in grade.vmr: checked, signed, added after the tests' lines, the
earlier file kept, the grades database following; and ``vmchecker-grade`` from the shell
(``--add``, a refused line, ``--edit`` with an editor that is a script)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import HELLO_C, write_course, zip_bytes
from vmchecker import config, fsutil, grades, grading, submit
from vmchecker.contract import GRADE_VMR, SubmissionStatus
from vmchecker.errors import GradeRefused

REPO = Path(__file__).resolve().parents[1]
ON_TIME = dt.datetime(2026, 2, 20, 12, 0)
WHEN = dt.datetime(2026, 3, 2, 10, 0)
TESTS_LINES = "-2: test 3 failed\n"


@pytest.fixture
def course(tmp_path, monkeypatch) -> config.CourseConfig:
    path = write_course(tmp_path, extra={"assignments": {
        "2-essay": {"deadline": "2026-03-01 23:55:00", "machine": "linux", "submit_only": True, "order": 2},
        "1-hello": {"max_points": 11}}})
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    return config.load_course(path)


def graded(course, account="bob", grade=TESTS_LINES, assignment="1-hello"):
    sub = submit.submit(course, assignment, account, zip_bytes({"hello.c": HELLO_C}), upload_time=ON_TIME,
                        skip_time_checks=True)
    if grade is not None:
        fsutil.write_atomic(sub.results_dir / GRADE_VMR, grade)
    return sub


def row(course, account="bob", assignment="1-hello"):
    return {(r.assignment, r.account): r for r in grades.rows(course)}[(assignment, account)]


# --------------------------------------------------------------------------- the lines


@pytest.mark.parametrize("given, written", [
    ("-0.5: leak in list_free", "-0.5: leak in list_free"),
    ("  +1 :  nice README ", "+1: nice README"),
    ("2: extra test", "+2: extra test"),
    ("-.5: style", "-.5: style"),
])
def test_a_line_is_a_number_and_a_reason(given, written):
    assert grading.check_line(given) == written


@pytest.mark.parametrize("given, says", [
    ("-0,5: leak", "is not a grade line"),
    ("leak -0.5", "is not a grade line"),
    ("-0.5 leak", "is not a grade line"),
    ("-0.5:", "gives no reason"),
    ("-1e9: huge", "is not a grade line"),
    ("-20000: typo", "more than a grade line may move"),
    ("-1: " + "x" * 300, "keep it under"),
    ("-1: bell\x07", "control characters"),
])
def test_a_bad_line_is_refused_saying_why(given, says):
    with pytest.raises(GradeRefused) as refused:
        grading.check_line(given)
    assert says in refused.value.message


def test_lines_are_added_after_the_tests_signed_and_the_earlier_file_kept(course):
    sub = graded(course)
    saved = grading.add_lines(course, sub, ["-0.5: leak in list_free", "+1: nice README"], "alice", now=WHEN)
    text = (sub.results_dir / GRADE_VMR).read_text()
    assert text == ("-2: test 3 failed\n# graded by alice on 2026-03-02 10:00:00\n"
                    "-0.5: leak in list_free\n+1: nice README\n")
    assert saved.earlier == sub.results_dir / "grade.vmr.1" and saved.earlier.read_text() == TESTS_LINES
    assert saved.result.grade == 8.5                     # 10 - 2 - 0.5 + 1
    assert row(course).grade == 8.5 and row(course).reason == "test 3 failed"

    again = grading.add_lines(course, sub, ["+5: great design"], "carol", now=WHEN)
    assert again.earlier.name == "grade.vmr.2" and again.earlier.read_text() == text
    assert again.result.grade == 11                      # the ceiling (max_points 11) holds
    assert [p.name for p in grading.earlier_versions(sub)] == ["grade.vmr.1", "grade.vmr.2"]
    assert row(course).grade == 11


def test_a_lone_status_word_is_replaced_by_the_lines(course):
    sub = graded(course, grade="done\n")
    saved = grading.add_lines(course, sub, ["-1: no error checks"], "alice", now=WHEN)
    assert saved.text == "# graded by alice on 2026-03-02 10:00:00\n-1: no error checks\n"
    assert saved.result.grade == 9 and saved.earlier.read_text() == "done\n"


def test_a_submission_still_being_tested_is_refused_and_left_alone(course):
    sub = graded(course, grade=None)
    sub.set_status(SubmissionStatus.QUEUED)
    with pytest.raises(GradeRefused, match="still being tested"):
        grading.add_lines(course, sub, ["-1: x"], "alice")
    assert sub.grade_text() == "queued\n" and grading.earlier_versions(sub) == []


def test_a_submit_only_upload_is_graded_at_once(course):
    sub = graded(course, assignment="2-essay", grade=None)
    assert sub.status() is SubmissionStatus.SAVED
    saved = grading.add_lines(course, sub, ["-3: too short"], "alice", now=WHEN)
    assert saved.result.grade == 7 and row(course, assignment="2-essay").status == "done"


def test_one_bad_line_refuses_all_of_them(course):
    sub = graded(course)
    with pytest.raises(GradeRefused):
        grading.add_lines(course, sub, ["-1: fine", "oops"], "alice")
    assert sub.grade_text() == TESTS_LINES and grading.earlier_versions(sub) == []


@pytest.mark.parametrize("text, says", [
    ("", "is empty"),
    ("queued\n", "is a status"),
    ("-2: test 3 failed\n-0,5: leak\n", "line 2"),
])
def test_an_edited_file_is_checked(text, says):
    with pytest.raises(GradeRefused, match=says):
        grading.check_text(text)


def test_an_edit_is_refused_when_the_file_changed_meanwhile(course):
    sub = graded(course)
    with pytest.raises(GradeRefused, match="changed while you edited"):
        grading.replace_text(course, sub, "-1: mine\n", "alice", expected="something else\n")
    assert sub.grade_text() == TESTS_LINES
    assert grading.replace_text(course, sub, TESTS_LINES, "alice", expected=TESTS_LINES) is None   # no change


# --------------------------------------------------------------------------- vmchecker-grade


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmchecker.cli.grade", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def test_cli_add_changes_the_grade_and_keeps_the_earlier_file(course):
    sub = graded(course)
    done = run("so", "1-hello", "bob", "--add", "-0.5: leak in list_free", "--add", "+1: nice README",
               "--grader", "Alice Smith")
    assert done.returncode == 0, done.stderr
    assert "grade: 8.5 / 10" in done.stdout and "grade.vmr.1" in done.stdout
    text = sub.grade_text()
    assert text.startswith(TESTS_LINES + "# graded by Alice Smith on ")
    assert text.endswith("-0.5: leak in list_free\n+1: nice README\n")
    assert (sub.results_dir / "grade.vmr.1").read_text() == TESTS_LINES
    assert row(course).grade == 8.5

    shown = run("so", "1-hello", "bob")
    assert shown.returncode == 0 and "-0.5: leak in list_free" in shown.stdout
    assert "Grade" in shown.stdout and "8.5 / 10" in shown.stdout and "grade.vmr.1" in shown.stdout


def test_cli_grader_defaults_to_the_login_name(course):
    sub = graded(course)
    done = run("so", "1-hello", "bob", "--add", "+1: bonus", env={"USER": "tina", "LOGNAME": "tina"})
    assert done.returncode == 0, done.stderr
    assert "# graded by tina on " in sub.grade_text()


def test_cli_a_bad_line_is_refused_with_a_clear_error_and_changes_nothing(course):
    sub = graded(course)
    grades.rebuild(course)
    done = run("so", "1-hello", "bob", "--add", "+1: fine", "--add", "-0,5: leak")
    assert done.returncode == GradeRefused.exit_code
    assert done.stderr.strip() == ("vmchecker-grade: '-0,5: leak' is not a grade line: write a number, a colon and"
                                   " a reason, such as '-0.5: leak in list_free' or '+1: nice README'")
    assert sub.grade_text() == TESTS_LINES and not (sub.results_dir / "grade.vmr.1").exists()
    assert row(course).grade == 8


def test_cli_edit_opens_the_editor_on_a_copy_and_saves_what_it_left(course, tmp_path):
    sub = graded(course)
    editor = tmp_path / "editor.sh"   # appends a line to the file it is given, as a grader would
    editor.write_text("#!/bin/sh\nprintf -- '-1.5: off-by-one in parse\\n' >> \"$1\"\n")
    editor.chmod(0o755)
    done = run("so", "1-hello", "bob", "--edit", "--grader", "alice", env={"EDITOR": str(editor), "VISUAL": ""})
    assert done.returncode == 0, done.stderr
    text = sub.grade_text()
    assert text.startswith(TESTS_LINES + "-1.5: off-by-one in parse\n# edited by alice on ")
    assert (sub.results_dir / "grade.vmr.1").read_text() == TESTS_LINES
    assert row(course).grade == 6.5 and "grade: 6.5 / 10" in done.stdout


def test_cli_edit_that_breaks_the_file_saves_nothing_and_keeps_the_copy(course, tmp_path):
    sub = graded(course)
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\necho '-0,5: leak' >> \"$1\"\n")
    editor.chmod(0o755)
    done = run("so", "1-hello", "bob", "--edit", env={"EDITOR": str(editor), "VISUAL": ""})
    assert done.returncode == GradeRefused.exit_code
    assert "line 2: '-0,5: leak' starts like a grade line" in done.stderr
    kept = Path(done.stderr.rsplit("your version is kept in ", 1)[1].rstrip(")\n"))
    try:
        assert kept.read_text() == TESTS_LINES + "-0,5: leak\n"
    finally:
        kept.unlink()
    assert sub.grade_text() == TESTS_LINES and grading.earlier_versions(sub) == []


def test_cli_an_editor_that_fails_saves_nothing(course):
    sub = graded(course)
    done = run("so", "1-hello", "bob", "--edit", env={"EDITOR": "false", "VISUAL": ""})
    assert done.returncode == GradeRefused.exit_code and "nothing was saved" in done.stderr
    assert sub.grade_text() == TESTS_LINES
