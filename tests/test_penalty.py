"""Late penalty and grade: the original vmchecker's examples, plus properties."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmchecker import penalty
from vmchecker.assignments import Assignment
from vmchecker.config import Holiday
from vmchecker.contract import SubmissionStatus

DEADLINE = dt.datetime(2026, 3, 1, 23, 55)
SECOND = dt.timedelta(seconds=1)
DAY = dt.timedelta(days=1)


def _assignment(**changes) -> Assignment:
    base = Assignment(id="1-hello", deadline=DEADLINE, machine="linux", total_points=10.0,
                      penalty_weights=[0.5, 0.5, 1.0], penalty_limit=4.0)
    return dataclasses.replace(base, **changes)


def _days(upload, holidays=()):
    return penalty.late_days(penalty.late_time(DEADLINE, upload, holidays))


# --------------------------------------------------------------------------- late days


@pytest.mark.parametrize("upload, days", [
    (DEADLINE - DAY, 0),
    (DEADLINE, 0),                        # exactly at the deadline is on time
    (DEADLINE + SECOND, 1),               # one second late is one day late
    (DEADLINE + DAY, 1),                  # exactly 24 h late is still one day
    (DEADLINE + DAY + SECOND, 2),
    (DEADLINE + 3 * DAY, 3),
    (DEADLINE + 2 * DAY + dt.timedelta(hours=1), 3),
])
def test_late_days_round_up(upload, days):
    assert _days(upload) == days


def test_late_time_is_zero_when_on_time():
    assert penalty.late_time(DEADLINE, DEADLINE - DAY) == dt.timedelta(0)


# --------------------------------------------------------------------------- penalty


@pytest.mark.parametrize("days, expected", [
    (0, 0.0),
    (1, 0.5),
    (2, 1.0),
    (3, 2.0),                              # 0.5 + 0.5 + 1
    (4, 3.0),                              # the last weight repeats
    (5, 4.0),
    (6, 4.0),                              # capped at penalty_limit
    (100, 4.0),
])
def test_penalty_weights_repeat_and_cap(days, expected):
    assert penalty.penalty(days, [0.5, 0.5, 1], 4) == expected


def test_penalty_original_examples():
    # the original's "linear" example: 0.25 per day up to 3
    assert penalty.penalty(5, [0.25], 3) == 1.25
    assert penalty.penalty(20, [0.25], 3) == 3
    # "fixed deadline": 1, 1, 1 then 7 per day, capped at 10
    assert penalty.penalty(3, [1, 1, 1, 7], 10) == 3
    assert penalty.penalty(4, [1, 1, 1, 7], 10) == 10


def test_penalty_sums_exactly():
    assert penalty.penalty(3, [0.1], 10) == 0.3


# --------------------------------------------------------------------------- holidays


def test_holiday_inside_late_interval_is_not_counted():
    holiday = Holiday(start=DEADLINE + DAY, end=DEADLINE + 3 * DAY)
    upload = DEADLINE + 4 * DAY
    assert penalty.late_time(DEADLINE, upload, [holiday]) == 2 * DAY
    assert _days(upload, [holiday]) == 2


def test_holiday_covering_the_whole_delay_means_on_time():
    holiday = Holiday(start=DEADLINE - DAY, end=DEADLINE + 2 * DAY)
    assert _days(DEADLINE + DAY, [holiday]) == 0
    assert _days(DEADLINE + 2 * DAY + SECOND, [holiday]) == 1


def test_holiday_after_upload_or_before_deadline_changes_nothing():
    later = Holiday(start=DEADLINE + 5 * DAY, end=DEADLINE + 6 * DAY)
    earlier = Holiday(start=DEADLINE - 5 * DAY, end=DEADLINE - DAY)
    assert _days(DEADLINE + 2 * DAY, [later, earlier]) == 2


def test_overlapping_holidays_are_subtracted_once():
    a = Holiday(start=DEADLINE + DAY, end=DEADLINE + 3 * DAY)
    b = Holiday(start=DEADLINE + 2 * DAY, end=DEADLINE + 4 * DAY)   # overlaps a by a day
    upload = DEADLINE + 5 * DAY
    assert penalty.holiday_overlap(DEADLINE, upload, [a, b]) == 3 * DAY
    assert penalty.late_time(DEADLINE, upload, [a, b]) == 2 * DAY
    # the same holiday listed twice forgives it once
    assert penalty.late_time(DEADLINE, upload, [a, a]) == 3 * DAY


# --------------------------------------------------------------------------- grade.vmr


@pytest.mark.parametrize("word, status", [
    ("saved", SubmissionStatus.SAVED), ("queued\n", SubmissionStatus.QUEUED), ("  running  ", SubmissionStatus.RUNNING),
    ("error", SubmissionStatus.ERROR), ("done", SubmissionStatus.DONE), ("", SubmissionStatus.SAVED), (None, SubmissionStatus.SAVED),
])
def test_one_word_is_a_status(word, status):
    parsed = penalty.parse_grade_vmr(word)
    assert parsed.status is status
    assert not parsed.graded
    assert parsed.adjustments == 0


def test_grader_lines_adjust_and_comments_do_not():
    text = (
        "Grader: bob\n"
        "-0.5: leak on line 234\n"
        "+1 bonus for tests\n"
        "-2\n"
        "1.5 partial credit\n"
        "\n"
        "nice work overall, 3 tests fail\n"
        "-0.25:no space after colon\n"
        "nan: not a number\n"
        "1e3 not a plain decimal\n"
    )
    parsed = penalty.parse_grade_vmr(text)
    assert parsed.status is SubmissionStatus.DONE and parsed.graded
    assert [line.points for line in parsed.lines] == [-0.5, 1.0, -2.0, 1.5, -0.25]
    assert parsed.lines[0].comment == "leak on line 234"
    assert parsed.adjustments == -0.25


def test_single_number_is_a_grade_line_not_a_status():
    parsed = penalty.parse_grade_vmr("-2\n")
    assert parsed.status is SubmissionStatus.DONE and parsed.adjustments == -2


# --------------------------------------------------------------------------- compute


def test_done_on_time_is_full_points():
    r = penalty.compute(_assignment(), [], DEADLINE - DAY, "done\n")
    assert (r.status, r.grade, r.late_days, r.penalty) == (SubmissionStatus.DONE, 10.0, 0, 0.0)


def test_grade_is_points_plus_adjustments_minus_penalty():
    r = penalty.compute(_assignment(), [], DEADLINE + 2 * DAY + SECOND, "-1: leak\n+0.5 style\n")
    assert (r.late_days, r.penalty, r.adjustments) == (3, 2.0, -0.5)
    assert r.grade == 7.5


def test_grade_never_below_zero():
    r = penalty.compute(_assignment(), [], DEADLINE + 10 * DAY, "-9: does not build\n")
    assert r.grade == 0.0


def test_no_grade_above_max_points():
    assert penalty.compute(_assignment(), [], DEADLINE, "+90: I wrote my own grade\n").grade == 10
    bonus = _assignment(max_points=12.0)
    assert penalty.compute(bonus, [], DEADLINE, "+1: bonus\n").grade == 11
    assert penalty.compute(bonus, [], DEADLINE, "+5: bonus\n").grade == 12
    capped = _assignment(max_points=8.0)   # a ceiling below total_points also holds
    assert penalty.compute(capped, [], DEADLINE, "done").grade == 8


def test_reason_is_the_first_deducting_line_when_below_the_ceiling():
    r = penalty.compute(_assignment(), [], DEADLINE, "+1: style\n-3: test 2 failed\n-1: leak\n")
    assert (r.grade, r.reason) == (7, "test 2 failed")
    assert penalty.compute(_assignment(), [], DEADLINE, "done").reason is None
    # points lost and won back: at the ceiling, nothing to explain
    assert penalty.compute(_assignment(), [], DEADLINE, "-1: leak\n+1: bonus\n").reason is None
    # lost to lateness alone: no line to quote (the breakdown shows the penalty)
    assert penalty.compute(_assignment(), [], DEADLINE + DAY, "done").reason is None
    assert penalty.compute(_assignment(), [], DEADLINE, "queued").reason is None


def test_status_other_than_done_has_no_grade_but_has_lateness():
    r = penalty.compute(_assignment(), [], DEADLINE + SECOND, "queued")
    assert r.status is SubmissionStatus.QUEUED and r.grade is None
    assert (r.late_days, r.penalty) == (1, 0.5)


def test_holidays_reach_compute():
    holiday = Holiday(start=DEADLINE, end=DEADLINE + 3 * DAY)
    r = penalty.compute(_assignment(), [holiday], DEADLINE + 3 * DAY + SECOND, "done")
    assert (r.late_days, r.penalty, r.grade) == (1, 0.5, 9.5)
    assert r.holidays == 3 * DAY


def test_hard_deadline_grace_carries_no_penalty():
    r = penalty.compute(_assignment(hard_deadline=True), [], DEADLINE + 30 * SECOND, "done")
    assert r.late_days == 1 and r.penalty == 0 and r.grade == 10


def test_breakdown_shows_times_days_penalty_grade():
    holiday = Holiday(start=DEADLINE + DAY, end=DEADLINE + 2 * DAY)
    r = penalty.compute(_assignment(), [holiday], DEADLINE + 3 * DAY + dt.timedelta(hours=2), "-1: leak")
    rows = dict(penalty.breakdown(r))
    assert rows["Upload time"] == "2026-03-05 01:55:00"
    assert rows["Deadline"] == "2026-03-01 23:55:00"
    assert rows["Submitted"] == "3 days 2 hours after the deadline"
    assert rows["Holidays not counted"] == "1 day"
    assert rows["Late days"] == "3"
    assert rows["Late penalty"] == "2"
    assert rows["Adjustments from the tests and graders"] == "-1"
    assert rows["Grade"] == "7 / 10"
    lines = penalty.describe(r).splitlines()
    assert len(lines) == len(rows) and len({line.index(" : ") for line in lines}) == 1  # aligned
    assert any(line.startswith("Late penalty ") and line.endswith(" : 2") for line in lines)


def test_breakdown_before_deadline_and_ungraded():
    r = penalty.compute(_assignment(), [], DEADLINE - dt.timedelta(minutes=5, seconds=1), "running")
    rows = dict(penalty.breakdown(r))
    assert rows["Submitted"] == "5 minutes 1 second before the deadline"
    assert rows["Status"] == "running"
    assert "Grade" not in rows


# --------------------------------------------------------------------------- properties

weights_st = st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=6)
limit_st = st.floats(min_value=0, max_value=50, allow_nan=False)
offset_st = st.integers(min_value=-10 * 86400, max_value=60 * 86400)
holidays_st = st.lists(
    st.tuples(st.integers(-5 * 86400, 60 * 86400), st.integers(0, 20 * 86400)).map(
        lambda t: Holiday(start=DEADLINE + dt.timedelta(seconds=t[0]),
                          end=DEADLINE + dt.timedelta(seconds=t[0] + t[1]))),
    max_size=4,
)


def _penalty_at(offset, weights, limit, holidays):
    upload = DEADLINE + dt.timedelta(seconds=offset)
    return penalty.penalty(penalty.late_days(penalty.late_time(DEADLINE, upload, holidays)), weights, limit)


@given(offset_st, offset_st, weights_st, limit_st, holidays_st)
def test_penalty_monotonic_in_upload_time(a, b, weights, limit, holidays):
    early, late = sorted((a, b))
    assert _penalty_at(early, weights, limit, holidays) <= _penalty_at(late, weights, limit, holidays)


@given(offset_st, weights_st, limit_st, holidays_st)
def test_penalty_never_exceeds_cap(offset, weights, limit, holidays):
    assert 0 <= _penalty_at(offset, weights, limit, holidays) <= limit


@given(offset_st, holidays_st)
def test_late_days_never_more_than_without_holidays(offset, holidays):
    upload = DEADLINE + dt.timedelta(seconds=offset)
    assert _days(upload, holidays) <= _days(upload)


@given(offset_st, weights_st, limit_st,
       st.floats(min_value=0, max_value=100, allow_nan=False),
       st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False).map(lambda x: round(x, 2)), max_size=5))
def test_grade_never_negative(offset, weights, limit, total, adjustments):
    text = "".join(f"{x:+.2f}: line\n" for x in adjustments) + "graded\n"
    a = _assignment(penalty_weights=weights, penalty_limit=limit, total_points=total)
    r = penalty.compute(a, [], DEADLINE + dt.timedelta(seconds=offset), text)
    assert r.status is SubmissionStatus.DONE
    assert r.grade is not None and r.grade >= 0


@given(offset_st, st.floats(min_value=0, max_value=100, allow_nan=False),
       st.floats(min_value=0, max_value=200, allow_nan=False),
       st.lists(st.floats(min_value=-1000, max_value=1000, allow_nan=False).map(lambda x: round(x, 2)), max_size=5))
def test_no_grade_above_max_points_ever(offset, total, ceiling, adjustments):
    text = "".join(f"{x:+.2f}: line\n" for x in adjustments) + "graded\n"
    a = _assignment(total_points=total, max_points=ceiling)
    r = penalty.compute(a, [], DEADLINE + dt.timedelta(seconds=offset), text)
    assert r.grade is not None and 0 <= r.grade <= ceiling
