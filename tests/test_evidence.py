"""No points without evidence: every way a run can fail, the reason it is given in words
and the grade it gets; and the properties that make a grade trustworthy."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmchecker import evidence, penalty
from vmchecker.assignments import Assignment

DEADLINE = dt.datetime(2026, 3, 1, 23, 55)
ON_TIME = DEADLINE - dt.timedelta(days=1)
TASK = Assignment(id="1-hello", deadline=DEADLINE, machine="linux", total_points=10.0)


def step(**changes) -> dict:
    base = {"attempted": True, "exit_code": 0, "signal": None, "timed_out": False, "oom_killed": False,
            "timeout_s": 30, "wall_s": 0.4}
    return {**base, **changes}


def result(build=None, run=None, check=None, **changes) -> dict:
    """A result.json of a complete run, with the given steps or fields changed."""
    data = {"status": "done", "steps": {"build": build or step(), "run": run or step()}, "grade_file": True,
            "memory_mb": 512}
    if check is not None:
        data["steps"]["check"] = check
    return {**data, **changes}


def grade(text: str, task: Assignment = TASK, upload: dt.datetime = ON_TIME) -> float | None:
    return penalty.compute(task, [], upload, text).grade


# --------------------------------------------------------------------------- a complete run


@pytest.mark.parametrize("tests_wrote, expected_text, points", [
    ("", "done\n", 10),                                   # an empty grade file is full points
    ("-2: test 3 failed\n", "-2: test 3 failed\n", 8),
    ("ok: everything passed\n-0.5: style\n", "ok: everything passed\n-0.5: style\n", 9.5),
    ("+90: my own bonus\n", "+90: my own bonus\n", 10),   # the ceiling holds
    ("done", "done\n# done\n", 10),                      # a status word is never read as one
    ("error\n", "done\n# error\n", 10),
])
def test_a_complete_run_keeps_the_tests_lines(tests_wrote, expected_text, points):
    verdict = evidence.judge(result(), tests_wrote, TASK)
    assert verdict == evidence.Verdict(expected_text, None)
    assert grade(verdict.text) == points


def test_a_check_step_that_passed_counts_like_the_run():
    verdict = evidence.judge(result(check=step(timeout_s=None)), "-1: oops\n", TASK, check=True)
    assert verdict.reason is None and grade(verdict.text) == 9


# --------------------------------------------------------------------------- every failure


FAILURES = [
    (result(build=step(exit_code=2), run=step(attempted=False, exit_code=None)),
     "the build failed (exit status 2)"),
    (result(build=step(timed_out=True, exit_code=None, signal=9), run=step(attempted=False, exit_code=None)),
     "the build did not finish within 30 s and was killed"),
    (result(build=step(attempted=False, exit_code=None)), "the build did not run"),
    (result(run=step(timed_out=True, exit_code=None, signal=9)),
     "the tests did not finish within 30 s and were killed"),
    (result(run=step(timed_out=True, exit_code=None, timeout_s=None)),
     "the tests did not finish within the time limit and were killed"),
    (result(run=step(exit_code=None, signal=9)), "the tests were killed by signal 9 (SIGKILL)"),
    (result(run=step(exit_code=None, signal=11)), "the tests were killed by signal 11 (SIGSEGV)"),
    (result(run=step(exit_code=None, signal=9, oom_killed=True)),
     "the tests ran out of memory (limit 512 MB) and were killed"),
    (result(run=step(exit_code=None, signal=9, oom_killed=True), memory_mb=None),
     "the tests ran out of memory (the memory limit) and were killed"),
    (result(run=step(exit_code=3)), "the run script exited with status 3"),
    (result(run=step(exit_code=None)), "the tests ended without an exit status"),
    (result(run=step(attempted=False, exit_code=None)), "the tests did not run"),
    (result(check=step(exit_code=1)), "the check script exited with status 1"),
    (result(check=step(timed_out=True, exit_code=None)), "the check did not finish within 30 s and was killed"),
    (result(grade_file=False), "the tests wrote no grade file"),
    ({k: v for k, v in result().items() if k != "grade_file"}, "the tests wrote no grade file"),
    (result(status="error"), "the tester could not complete the run (guest or tester error)"),
    (None, "the tester sent no account of the run (result.json missing or unreadable)"),
    ("not a mapping", "the tester sent no account of the run (result.json missing or unreadable)"),
    ({"status": "done"}, "the tester sent no account of the run (result.json missing or unreadable)"),
    ({**result(), "steps": {"run": step()}}, "the tester sent no account of the build"),
]


@pytest.mark.parametrize("account, reason", FAILURES)
def test_every_failure_scores_points_on_failure_with_its_reason(account, reason):
    verdict = evidence.judge(account, "10: all tests passed\n+5: bonus\n", TASK)
    assert verdict.reason == reason
    first, *rest = verdict.text.splitlines()
    assert first == f"-10: {reason}"
    assert rest == ["# 10: all tests passed", "# +5: bonus"]   # shown, not counted
    result_ = penalty.compute(TASK, [], ON_TIME, verdict.text)
    assert (result_.grade, result_.reason) == (0, reason)


def test_no_grade_file_at_all_is_a_failure():
    verdict = evidence.judge(result(), None, TASK)
    assert verdict.text == "-10: the tests wrote no grade file\n" and grade(verdict.text) == 0


def test_a_configured_check_step_must_have_run():
    verdict = evidence.judge(result(), "", TASK, check=True)
    assert verdict.reason == "the tester sent no account of the check"


def test_the_first_failing_step_is_the_reason():
    account = result(build=step(exit_code=2), run=step(exit_code=None, signal=9), grade_file=False)
    assert evidence.judge(account, "", TASK).reason == "the build failed (exit status 2)"


def test_strange_field_types_are_no_evidence():
    for bad in ({"exit_code": "0"}, {"exit_code": True}, {"attempted": "yes"}, {"signal": 9.0, "exit_code": None}):
        assert evidence.judge(result(run=step(**bad)), "", TASK).reason is not None
    assert evidence.judge(result(grade_file="true"), "", TASK).reason == evidence.NO_GRADE_FILE
    account = result()
    before = copy.deepcopy(account)
    evidence.judge(account, "", TASK)
    assert account == before   # pure: the input is not changed


@pytest.mark.parametrize("points_on_failure, line, points", [
    (0, "-10: ", 0), (2.5, "-7.5: ", 2.5), (10, "-0: ", 10), (9.99999, "-0.00001: ", 9.99999),
])
def test_the_failure_line_brings_the_grade_to_points_on_failure(points_on_failure, line, points):
    task = dataclasses.replace(TASK, points_on_failure=points_on_failure)
    verdict = evidence.judge(result(run=step(exit_code=1)), "", task)
    assert verdict.text.startswith(line) and grade(verdict.text, task) == points


def test_late_penalty_applies_to_points_on_failure_and_stops_at_zero():
    task = dataclasses.replace(TASK, points_on_failure=3)
    text = evidence.judge(None, "", task).text
    assert grade(text, task, DEADLINE + dt.timedelta(hours=1)) == 2.5
    assert grade(text, task, DEADLINE + dt.timedelta(days=9)) == 0


# --------------------------------------------------------------------------- properties

points_st = st.decimals(min_value=0, max_value=1000, places=3).map(float)
lines_st = st.lists(st.tuples(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda x: round(x, 3)),
                              st.text(alphabet="abc :#+-.0123456789", max_size=12)), max_size=6)
failure_st = st.sampled_from([account for account, _ in FAILURES])


@given(points_st, points_st, points_st, lines_st, failure_st, st.integers(-86400, 30 * 86400))
def test_a_failure_never_gives_more_than_points_on_failure(a, b, c, lines, account, offset):
    pof, total, ceiling = sorted((a, b, c))[0], max(a, b), max(a, c)
    task = dataclasses.replace(TASK, total_points=total, points_on_failure=pof, max_points=ceiling)
    tests_wrote = "".join(f"{points:+}: {words}\n" for points, words in lines)
    verdict = evidence.judge(account, tests_wrote, task)
    got = grade(verdict.text, task, DEADLINE + dt.timedelta(seconds=offset))
    assert got is not None and 0 <= got <= pof


@given(points_st, points_st, lines_st, st.integers(-86400, 30 * 86400))
def test_no_grade_above_max_points_whatever_the_tests_wrote(total, ceiling, lines, offset):
    task = dataclasses.replace(TASK, total_points=total, max_points=ceiling)
    tests_wrote = "".join(f"{points:+}: {words}\n" for points, words in lines)
    verdict = evidence.judge(result(), tests_wrote, task)
    got = grade(verdict.text, task, DEADLINE + dt.timedelta(seconds=offset))
    assert got is not None and 0 <= got <= ceiling
