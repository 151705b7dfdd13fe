"""A grader's lines in a submission's ``grade.vmr``: checked, signed, saved under the
repository lock, the earlier file kept.

In the original, teaching assistants graded by editing ``grade.vmr`` on the storer by
hand: a typo (``-0,5: leak``) silently became a comment, and the previous file was gone.
Here the web's grade form and ``vmchecker-grade`` both go through this module:

* a grader's line is a number and a reason (``-0.5: leak in list_free``,
  ``+1: nice README``), written back with an explicit sign; anything else is refused
  with an example (:func:`check_line`);
* the lines are added after the file's own (the tests' lines and vmchecker's failure
  line stay and still count: :mod:`vmchecker.penalty` sums every line and caps the grade
  at ``max_points``), under a comment that signs them: ``# graded by alice on
  2026-03-02 10:00:00``. A file that only held a status word (``done``: full points, or
  ``error``) is replaced by the lines;
* an edited file (``vmchecker-grade --edit``) is checked line by line (:func:`check_text`)
  and saved only if nobody changed the file meanwhile;
* every save first copies the file as it was to ``results/grade.vmr.N`` (1, 2, ...):
  nothing a grader or the tests wrote is lost. A recheck moves these along with the
  rest of ``results/``;
* a submission still waiting for its test run is refused: the results, when they land,
  would replace the lines. A ``submit_only`` upload is never tested and may be graded
  at once; one that ended in ``error`` may be graded by hand;
* the grades database row is refreshed after the save (the file is the truth, the
  database a cache).

The submission is the unit, never an account name: who owns it is the repository's
business (:mod:`vmchecker.repo`), so a submission of a team is graded the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmchecker import fsutil, grades, penalty
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime
from vmchecker.contract import GRADE_VMR, WAITING_STATUSES, SubmissionStatus
from vmchecker.errors import GradeRefused, VmcheckerError
from vmchecker.repo import Repository, Submission, load_submission

log = logging.getLogger(__name__)

EXAMPLE = "'-0.5: leak in list_free' or '+1: nice README'"
MAX_POINTS = 10000          # no line moves a grade further than this (a typo such as -05000)
MAX_GRADE_FILE = 64 * 1024  # bytes of an edited grade.vmr
MAX_GRADER = 64             # characters of a grader's name
HISTORY_PREFIX = GRADE_VMR + "."
_LINE_RE = re.compile(r"^\s*([+-]?)((?:\d+(?:\.\d*)?|\.\d+))\s*:\s*(.*?)\s*$")
_STARTS_AS_NUMBER = tuple("+-.0123456789")


@dataclass(frozen=True)
class Saved:
    """A grader's save: the submission, its new ``grade.vmr``, where the previous one
    was kept and the grade it now gives."""

    submission: Submission
    text: str
    earlier: Path | None
    result: penalty.GradeResult


# --------------------------------------------------------------------------- checks


def check_line(text: str) -> str:
    """A grader's line as it is written to the file (``-0.5: leak``); GradeRefused
    naming what is wrong otherwise."""
    line = text.strip()
    match = _LINE_RE.match(line)
    if not match:
        raise GradeRefused(f"{line[:80]!r} is not a grade line: write a number, a colon and a reason,"
                           f" such as {EXAMPLE}")
    sign, number, reason = match.groups()
    points = float(number)
    if not math.isfinite(points) or points > MAX_POINTS:
        raise GradeRefused(f"{line[:80]!r}: {number} points is more than a grade line may move ({MAX_POINTS})")
    if not reason:
        raise GradeRefused(f"{line[:80]!r} gives no reason: say why, as in {EXAMPLE}")
    if len(reason) > penalty.MAX_REASON:
        raise GradeRefused(f"{line[:80]!r}...: the reason is {len(reason)} characters; keep it under"
                           f" {penalty.MAX_REASON} (more detail belongs in the feedback, not the grade line)")
    if not reason.isprintable():
        raise GradeRefused(f"{line[:80]!r}: the reason holds control characters")
    return f"{sign or '+'}{number}: {reason}"


def check_grader(name: str) -> str:
    """The name that signs a grader's lines: one line of printable text."""
    name = (name or "").strip()
    if not name or len(name) > MAX_GRADER or not name.isprintable():
        raise GradeRefused(f"bad grader name {name[:MAX_GRADER]!r}: one line of at most {MAX_GRADER} characters")
    return name


def check_text(text: str) -> str:
    """An edited ``grade.vmr``, as it will be saved (one final newline). Every line that
    starts like a number must be a grade line the grade reads (``-0,5: leak`` would
    otherwise become a comment and the points silently lost); other lines are comments.
    A lone status word other than ``done`` is refused: it would make the submission
    waiting or failed again."""
    if len(text.encode("utf-8", errors="replace")) > MAX_GRADE_FILE:
        raise GradeRefused(f"the grade file is larger than {MAX_GRADE_FILE} bytes")
    content = text.strip()
    if not content:
        raise GradeRefused("the grade file is empty: write 'done' for full points, or grade lines such as"
                           f" {EXAMPLE}")
    if len(content.split()) == 1 and content.lower() in {s.value for s in SubmissionStatus} - {"done"}:
        raise GradeRefused(f"{content!r} alone is a status, not a grade: write grade lines such as {EXAMPLE}")
    for number, line in enumerate(content.splitlines(), 1):
        stripped = line.strip()
        if not stripped.startswith(_STARTS_AS_NUMBER):
            continue
        parsed = penalty.grade_line(stripped)
        if parsed is None:
            raise GradeRefused(f"line {number}: {stripped[:80]!r} starts like a grade line but its number is not"
                               f" one (write plain decimals with a point: {EXAMPLE}; start a comment with '#')")
        if abs(parsed.points) > MAX_POINTS:
            raise GradeRefused(f"line {number}: {stripped[:80]!r} moves the grade by more than {MAX_POINTS}")
    return content + "\n"


def check_gradable(course: CourseConfig, sub: Submission) -> None:
    """Refuse a submission whose test run has not ended: its results would replace the
    lines when they land."""
    status = sub.status()
    task = course.assignment(sub.assignment)
    if status in WAITING_STATUSES and not task.submit_only:
        raise GradeRefused(f"{sub.assignment}/{sub.account}/{sub.name} is still being tested (status"
                           f" {status.value}): grade it once its results are in, which would otherwise replace"
                           " your lines")


# --------------------------------------------------------------------------- saving


def signature(grader: str, when: dt.datetime, verb: str = "graded") -> str:
    return f"# {verb} by {check_grader(grader)} on {format_datetime(when)}"


def add_lines(course: CourseConfig, sub: Submission, lines: Iterable[str], grader: str,
              now: dt.datetime | None = None) -> Saved:
    """Add a grader's ``lines`` to ``sub``'s ``grade.vmr``, signed by ``grader``."""
    checked = [check_line(line) for line in lines if line.strip()]
    if not checked:
        raise GradeRefused(f"no grade line given: write one such as {EXAMPLE}")
    block = "\n".join([signature(grader, now or _now()), *checked]) + "\n"

    def new_text(old: str | None) -> str:
        if not penalty.parse_grade_vmr(old).graded:   # nothing yet, or a lone status word
            return block
        return old.rstrip("\n") + "\n" + block

    return _save(course, sub, new_text)


def replace_text(course: CourseConfig, sub: Submission, text: str, grader: str, expected: str | None,
                 now: dt.datetime | None = None) -> Saved | None:
    """Save an edited ``grade.vmr`` (``vmchecker-grade --edit``), signed at its end;
    ``expected`` is the file the edit started from: if it changed meanwhile, GradeRefused.
    None when the edit changed nothing (nothing is written)."""
    checked = check_text(text)
    if checked == (expected or "").strip() + "\n":
        return None
    signed = checked + signature(grader, now or _now(), "edited") + "\n"

    def new_text(old: str | None) -> str:
        if (old or "") != (expected or ""):
            raise GradeRefused(f"{GRADE_VMR} of {sub.assignment}/{sub.account}/{sub.name} changed while you edited"
                               " it: nothing was saved; edit it again")
        return signed

    return _save(course, sub, new_text)


def earlier_versions(sub: Submission) -> list[Path]:
    """``results/grade.vmr.1``, ``.2``, ...: the file before each grader's save, oldest first."""
    return [p for _, p in sorted(_numbered(sub.results_dir))]


def _save(course: CourseConfig, sub: Submission, new_text: Callable[[str | None], str]) -> Saved:
    """Under the assignment's lock: read the submission again, check it may be graded,
    keep the file as it was, write the new one. The grades database follows."""
    with Repository(course).lock(sub.assignment):
        sub = load_submission(sub.path)
        check_gradable(course, sub)
        old = sub.grade_text()
        text = new_text(old)
        sub.results_dir.mkdir(exist_ok=True)
        earlier = None
        if old is not None:
            number = max((n for n, _ in _numbered(sub.results_dir)), default=0) + 1
            earlier = fsutil.write_atomic(sub.results_dir / f"{HISTORY_PREFIX}{number}", old)
        fsutil.write_atomic(sub.results_dir / GRADE_VMR, text)
    log.info("%s/%s/%s graded by hand (earlier file kept as %s)", sub.assignment, sub.account, sub.name,
             earlier.name if earlier else "-")
    try:
        grades.update(course, sub)
    except VmcheckerError as exc:   # a cache: the next rebuild fills it
        log.warning("grades database not updated for %s: %s", sub.path, exc.message)
    result = penalty.compute(course.assignment(sub.assignment), course.course.holidays, sub.upload_time, text)
    return Saved(sub, text, earlier, result)


def _numbered(results: Path) -> list[tuple[int, Path]]:
    if not results.is_dir():
        return []
    found = []
    for path in results.iterdir():
        suffix = path.name.removeprefix(HISTORY_PREFIX)
        if path.name.startswith(HISTORY_PREFIX) and suffix.isdigit() and not path.is_symlink():
            found.append((int(suffix), path))
    return found


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)
