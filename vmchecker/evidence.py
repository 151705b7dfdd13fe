"""No points without evidence: the final ``grade.vmr`` of a tested submission.

A grade is earned by a run that completed, not by the absence of a complaint. The
tester sends two things this module weighs: its account of the job (``result.json``:
how each step ended) and the grade lines the course's tests wrote (the tester's
``grade.vmr``, read from a place student code cannot write). Full points, or what the
tests' lines make of them, need all of:

* the build exited 0;
* the run was attempted and exited 0: not timed out, not killed by a signal or for
  memory;
* the check step, where the machine has one (or where the tester ran one), exited 0;
* a grade file was written (``grade_file``; an empty one means full points);
* the job as a whole is ``done``.

Anything else gives exactly ``points_on_failure`` (before the late penalty): the final
file starts with one line ``-<total_points - points_on_failure>: <reason in words>``,
and every line the tests wrote follows as a comment (``# -5: test 2 failed``), shown
but not counted. A grader may still edit the file by hand. A missing or unreadable
``result.json`` is no evidence at all. Status words in the tests' file (``done``)
are never taken for a grade.

Pure: no files, no clock. The storer calls :func:`judge` when results land.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from vmchecker.assignments import Assignment
from vmchecker.contract import RESULT_JSON, ResultStatus

log = logging.getLogger(__name__)

NO_ACCOUNT = f"the tester sent no account of the run ({RESULT_JSON} missing or unreadable)"
NOT_COMPLETED = "the tester could not complete the run (guest or tester error)"
NO_GRADE_FILE = "the tests wrote no grade file"
DONE_LINE = "done"
COMMENT = "# "

# How each step is named in a reason, and the verb that agrees with it.
_STEPS = {"build": ("the build", "was"), "run": ("the tests", "were"), "check": ("the check", "was")}


@dataclass(frozen=True)
class Verdict:
    """The final ``grade.vmr`` text and, when points were withheld, why (else None)."""

    text: str
    reason: str | None = None


def judge(result: Any, grade_text: str | None, assignment: Assignment, *, check: bool = False) -> Verdict:
    """Weigh the tester's ``result.json`` (parsed; anything else is no evidence) and the
    tests' grade text (None: no grade file arrived). ``check``: the machine has a check
    step, so its account is required."""
    reason = failure_reason(result, check=check)
    if reason is None and grade_text is None:
        reason = NO_GRADE_FILE
    if reason is not None:
        return Verdict(failed(assignment, reason, grade_text), reason)
    return Verdict(passed(grade_text or ""))


def failure_reason(result: Any, *, check: bool = False) -> str | None:
    """Why ``result`` (a parsed ``result.json``) does not earn full points, or None."""
    if not isinstance(result, Mapping):
        return NO_ACCOUNT
    steps = result.get("steps")
    if not isinstance(steps, Mapping):
        return NO_ACCOUNT
    memory = result.get("memory_mb")
    memory_mb = memory if _is_int(memory) else None
    names = ["build", "run"] + (["check"] if check or "check" in steps else [])
    for name in names:
        why = step_failure(name, steps.get(name), memory_mb)
        if why is not None:
            return why
    if result.get("status") != ResultStatus.DONE.value:
        return NOT_COMPLETED
    if result.get("grade_file") is not True:
        return NO_GRADE_FILE
    return None


def step_failure(name: str, step: Any, memory_mb: int | None = None) -> str | None:
    """Why one step (``build``, ``run``, ``check``) did not complete, in words; None if it did."""
    what, was = _STEPS[name]
    if not isinstance(step, Mapping):
        return f"the tester sent no account of {what}"
    if step.get("attempted") is not True:
        return f"{what} did not run"
    if step.get("timed_out") is True:
        limit = step.get("timeout_s")
        within = f"within {_number(limit)} s" if _is_number(limit) else "within the time limit"
        return f"{what} did not finish {within} and {was} killed"
    if step.get("oom_killed") is True:
        limit = f"limit {memory_mb} MB" if memory_mb is not None else "the memory limit"
        return f"{what} ran out of memory ({limit}) and {was} killed"
    signum = step.get("signal")
    if _is_int(signum):
        return f"{what} {was} killed by signal {signum}{_signal_name(signum)}"
    code = step.get("exit_code")
    if not _is_int(code):
        return f"{what} ended without an exit status"
    if code != 0:
        return {"build": f"the build failed (exit status {code})",
                "run": f"the run script exited with status {code}",
                "check": f"the check script exited with status {code}"}[name]
    return None


def failed(assignment: Assignment, reason: str, grade_text: str | None) -> str:
    """The failure line that brings the grade to ``points_on_failure``, then the tests'
    own lines as comments."""
    lines = [f"-{_difference(assignment.total_points, assignment.points_on_failure)}: {reason}"]
    lines += [COMMENT + line.rstrip() for line in (grade_text or "").splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def passed(grade_text: str) -> str:
    """The tests' lines as they wrote them; ``done`` (full points) when they wrote none.
    A lone status word is shown as a comment, never read as a status."""
    text = grade_text.strip()
    if not text:
        return DONE_LINE + "\n"
    if len(text.split()) == 1 and text[0] not in "+-.0123456789":
        return f"{DONE_LINE}\n{COMMENT}{text}\n"
    return text + "\n"


# --------------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _decimal(value: float) -> Decimal:
    return Decimal(repr(float(value)))   # the shortest decimal that reads back as value


def _number(value: float) -> str:
    """A number as a grade line reads it back: plain decimals, no exponent (``1e-05``
    would not parse as a grade line and the deduction would be lost)."""
    return format(_decimal(value).normalize(), "f")


def _difference(total: float, kept: float) -> str:
    """``total - kept`` (at least 0) computed in decimal, as the config wrote them:
    10 - 9.99999 is 0.00001, not binary floating point's 0.000009999999999621."""
    return format(max(Decimal(0), _decimal(total) - _decimal(kept)).normalize(), "f")


def _signal_name(signum: int) -> str:
    try:
        return f" ({signal.Signals(signum).name})"
    except ValueError:
        return ""
