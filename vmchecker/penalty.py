"""Late penalty and grade, computed the way the original vmchecker did.

The rules (kept from the POLITEHNICA vmchecker so that a migrated course grades the
same submission the same way):

* **late time** = upload time - deadline - the part of (deadline, upload time) that
  falls inside a holiday. Overlapping holidays are merged first, so a day covered by
  two holidays is not forgiven twice (the original subtracted each one separately).
* **late days** = late time in days, rounded up: one second late is one day late,
  exactly 24 hours late is one day, 24 hours and one second is two.
* **penalty** = ``penalty_weights[0] + ... + penalty_weights[days - 1]`` where the last
  weight repeats for every further day, capped at ``penalty_limit``.
* **grade.vmr**: a file whose content is one status word (saved, queued, running,
  done, error) is a status; otherwise every line that starts with a number
  (``-0.5: leak``, ``+1 bonus``, ``-2``, ``1.5 partial``) adjusts ``total_points`` and
  every other line is a comment. A lone ``done`` means full points.
* **grade** = min(max_points, max(0, total_points + adjustments - penalty)); only a
  ``done`` submission has one. ``max_points`` (default ``total_points``) is the
  ceiling no grade line can lift a grade above; the original had none, so a ``+90``
  line from a student's program raised the grade. Which lines a tested submission's
  ``grade.vmr`` holds is decided by :mod:`vmchecker.evidence`.

One deliberate difference: with ``hard_deadline`` an upload more than 60 s late is
refused, and the few seconds of grace the storer allows are not lateness, so a
hard-deadline assignment carries no late penalty.

Everything here is pure (no files, no clock), so the web, the grades database and the
daemon all compute the same numbers.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vmchecker.assignments import Assignment
from vmchecker.confparse import format_datetime
from vmchecker.contract import SubmissionStatus

log = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)
# A leading number as the original read it: the first word, up to a ':'.
# Plain decimals only: float() would also take "nan", "inf" and "1e9".
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_DIGITS = 6  # results are rounded to this many decimals so 0.1 + 0.2 shows as 0.3
# The grade lines come from the course's tests (and from vmchecker when a run failed)
# as much as from graders: the label names them all.
ADJUSTMENTS_LABEL = "Adjustments from the tests and graders"
WAITING_FOR_GRADER = "waiting for a grader"  # a submit_only upload nobody has graded yet
MAX_REASON = 200  # characters of a grade line's comment shown as the reason beside a grade


class Interval(Protocol):
    """Anything with a start and an end, such as :class:`vmchecker.config.Holiday`."""

    start: dt.datetime
    end: dt.datetime


# --------------------------------------------------------------------------- lateness


def _merge(intervals: Iterable[Interval]) -> list[tuple[dt.datetime, dt.datetime]]:
    """Sorted, non-overlapping (start, end) pairs covering the same time."""
    merged: list[tuple[dt.datetime, dt.datetime]] = []
    for start, end in sorted((i.start, i.end) for i in intervals if i.end > i.start):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def holiday_overlap(deadline: dt.datetime, upload_time: dt.datetime,
                    holidays: Iterable[Interval] = ()) -> dt.timedelta:
    """How much of (deadline, upload_time) falls inside the holidays, each moment once."""
    total = dt.timedelta(0)
    for start, end in _merge(holidays):
        lo, hi = max(start, deadline), min(end, upload_time)
        if hi > lo:
            total += hi - lo
    return total


def late_time(deadline: dt.datetime, upload_time: dt.datetime,
              holidays: Iterable[Interval] = ()) -> dt.timedelta:
    """Time past the deadline that counts, holidays excluded; zero if on time."""
    if upload_time <= deadline:
        return dt.timedelta(0)
    return max(dt.timedelta(0), upload_time - deadline - holiday_overlap(deadline, upload_time, holidays))


def late_days(late: dt.timedelta) -> int:
    """Late time in whole days, rounded up (exact arithmetic: no float rounding)."""
    if late <= dt.timedelta(0):
        return 0
    days, rest = divmod(late, DAY)
    return days + (1 if rest else 0)


def penalty(days: int, weights: Sequence[float], limit: float) -> float:
    """Sum of the weights of the first ``days`` days (the last weight repeats), capped.

    Weights are expected to be non-negative; then the penalty never decreases as an
    upload gets later and never exceeds ``limit``."""
    if days <= 0:
        return 0.0
    if not weights:
        raise ValueError("penalty needs at least one weight")
    listed = math.fsum(weights[:days])
    repeated = max(0, days - len(weights)) * weights[-1]
    return min(round(listed + repeated, _DIGITS), limit)


# --------------------------------------------------------------------------- grade.vmr


@dataclass(frozen=True)
class GradeLine:
    """One line of grade.vmr that changes the grade: ``-0.5: leak`` is (-0.5, 'leak')."""

    points: float
    comment: str


@dataclass(frozen=True)
class GradeFile:
    """What a results/grade.vmr says.

    ``status`` is the status word, or DONE for a grader's file; ``graded`` tells a
    grader's file (lines, possibly with adjustments) from a bare status word."""

    status: SubmissionStatus
    graded: bool = False
    lines: tuple[GradeLine, ...] = ()

    @property
    def adjustments(self) -> float:
        return round(math.fsum(line.points for line in self.lines), _DIGITS)


def grade_line(line: str) -> GradeLine | None:
    """The grade line ``line`` is, or None when it is a comment (no leading number)."""
    words = line.split(None, 1)
    if not words:
        return None
    head, _, tail = words[0].partition(":")
    if not _NUMBER_RE.match(head):
        return None
    comment = (tail + (" " + words[1] if len(words) > 1 else "")).strip()
    return GradeLine(float(head), comment)


def parse_grade_vmr(text: str | None) -> GradeFile:
    """Read a grade.vmr. Missing or empty means SAVED (nothing has happened yet)."""
    content = (text or "").strip()
    if not content:
        return GradeFile(SubmissionStatus.SAVED)
    if len(content.split()) == 1:
        try:
            return GradeFile(SubmissionStatus(content.lower()))
        except ValueError:
            pass  # a single number or word: a (tiny) grader's file
    lines = tuple(g for g in map(grade_line, content.splitlines()) if g is not None)
    return GradeFile(SubmissionStatus.DONE, graded=True, lines=lines)


# --------------------------------------------------------------------------- grade


@dataclass(frozen=True)
class GradeResult:
    """Everything the web and the grades table show about one submission's grade."""

    status: SubmissionStatus
    grade: float | None
    late_days: int
    penalty: float
    adjustments: float
    total_points: float
    max_points: float
    reason: str | None          # why points were lost (the first deducting line's comment),
                                # or WAITING_FOR_GRADER
    upload_time: dt.datetime
    deadline: dt.datetime
    late: dt.timedelta          # late time after holidays
    holidays: dt.timedelta      # the part of (deadline, upload) forgiven as holidays
    hard_deadline: bool = False


def compute(assignment: Assignment, holidays: Iterable[Interval], upload_time: dt.datetime,
            grade_text: str | None) -> GradeResult:
    """Late days, penalty and (for a done submission) the grade of one upload."""
    holidays = list(holidays)
    deadline = assignment.deadline
    late = late_time(deadline, upload_time, holidays)
    forgiven = holiday_overlap(deadline, upload_time, holidays) if upload_time > deadline else dt.timedelta(0)
    days = late_days(late)
    points = 0.0 if assignment.hard_deadline else penalty(days, assignment.penalty_weights,
                                                          assignment.penalty_limit)
    parsed = parse_grade_vmr(grade_text)
    grade = reason = None
    if parsed.status is SubmissionStatus.DONE:
        # rounded before the ceiling, so rounding can never lift a grade above it
        grade = min(assignment.ceiling, round(max(0.0, assignment.total_points + parsed.adjustments - points),
                                              _DIGITS))
        if grade < assignment.ceiling:
            reason = deduction_reason(parsed)
    elif assignment.submit_only and parsed.status is not SubmissionStatus.ERROR:
        reason = WAITING_FOR_GRADER   # never tested: only a grader's grade.vmr moves it on
    return GradeResult(
        status=parsed.status, grade=grade, late_days=days, penalty=points,
        adjustments=parsed.adjustments, total_points=assignment.total_points,
        max_points=assignment.ceiling, reason=reason, upload_time=upload_time, deadline=deadline, late=late, holidays=forgiven,
        hard_deadline=assignment.hard_deadline,
    )


def deduction_reason(parsed: GradeFile) -> str | None:
    """The comment of the first line that takes points away (a failed run's reason, or
    the tests' or a grader's first complaint): the short reason shown beside a grade."""
    for line in parsed.lines:
        if line.points < 0:
            comment = line.comment
            return (comment[:MAX_REASON - 3] + "...") if len(comment) > MAX_REASON else (comment or None)
    return None


# --------------------------------------------------------------------------- display


def format_points(value: float) -> str:
    """``2``, ``0.5``, ``7.25``: no trailing zeros, at most two decimals."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_duration(delta: dt.timedelta) -> str:
    """``2 days 3 hours 4 minutes 5 seconds`` (zero parts left out)."""
    seconds = int(abs(delta).total_seconds())
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts) or "0 seconds"


def breakdown(result: GradeResult) -> list[tuple[str, str]]:
    """(label, value) rows explaining a grade: what the web shows under a submission."""
    rows = [("Upload time", format_datetime(result.upload_time)),
            ("Deadline", format_datetime(result.deadline))]
    offset = result.upload_time - result.deadline
    if offset <= dt.timedelta(0):
        rows.append(("Submitted", f"{format_duration(offset)} before the deadline"
                     if offset else "exactly at the deadline"))
    else:
        rows.append(("Submitted", f"{format_duration(offset)} after the deadline"))
        if result.holidays:
            rows.append(("Holidays not counted", format_duration(result.holidays)))
    rows.append(("Late days", str(result.late_days)))
    if not result.hard_deadline:
        rows.append(("Late penalty", format_points(result.penalty)))
    if result.grade is None:
        rows.append(("Status", result.status.value))
    else:
        rows.append((ADJUSTMENTS_LABEL, ("+" if result.adjustments > 0 else "") + format_points(result.adjustments)))
        rows.append(("Grade", f"{format_points(result.grade)} / {format_points(result.total_points)}"))
    return rows


def describe(result: GradeResult) -> str:
    """The breakdown as aligned text lines."""
    rows = breakdown(result)
    width = max(len(label) for label, _ in rows)
    return "".join(f"{label:<{width}} : {value}\n" for label, value in rows)
