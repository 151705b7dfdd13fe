"""Waiting for stored submissions' results: ``vmchecker-submit --wait`` and
``vmchecker-resubmit --wait``, and the verdict a script reads from their exit status.

The repository is what is waited on: a submission's ``grade.vmr`` says saved, queued or
running until its results land, then holds its grade (or ``error``). The storer daemon's
``status()`` is asked only to say, meanwhile, where the job is (its place in the queue,
the tester running it, the estimated finish); a daemon that does not answer delays
nothing but that line (it queues every saved submission when it is back).

The verdict (:class:`Verdict`, whose value is the exit status):

* ``PASSED`` (0): graded, the build and the run completed (the tester's account of the
  run, ``result.json``, says so) and no grade line took points away; a late penalty does
  not count;
* ``FAILED`` (1): graded, but the build failed, the run did not complete, or the tests'
  lines took points away;
* ``ERROR`` (2): the job ended in error (its reasons are in ``vmchecker-stderr.vmr``), the
  assignment is never tested (``submit_only``), or the command failed (the upload was
  refused...);
* ``TIMED_OUT`` (3): no results within the timeout; the job goes on.

Progress goes to a stream of its own (stderr): on a terminal one line rewritten in
place, elsewhere one line per change of a job's place (state, position, tester), so a
log stays short. Results and the grade go to stdout.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vmchecker import evidence, penalty, rpc
from vmchecker.config import CourseConfig
from vmchecker.contract import (
    GRADE_VMR,
    RESULT_JSON,
    RUN_KM,
    STEP_FILES,
    VMCHECKER_STDERR,
    WAITING_STATUSES,
    SubmissionStatus,
)
from vmchecker.errors import RpcError
from vmchecker.repo import Submission, load_submission

log = logging.getLogger(__name__)

POLL_S = 1.0              # between looks at the repository and the daemon
STATUS_TIMEOUT = 2.0      # one status() call never holds the wait longer
SHOWN_BYTES = 4096        # of each result file printed; the rest is in the submission's folder
MAX_RESULT_JSON = 1024 * 1024
_FIRST = [name for step in ("build", "run", "check") for name in STEP_FILES[step]] + [RUN_KM, VMCHECKER_STDERR]


class Verdict(enum.IntEnum):
    """How a waited-for submission ended; the value is the command's exit status."""

    PASSED = 0
    FAILED = 1
    ERROR = 2
    TIMED_OUT = 3


@dataclass(frozen=True)
class Outcome:
    submission: Submission
    verdict: Verdict
    reason: str = ""                          # why it failed, erred or timed out
    result: penalty.GradeResult | None = None  # the grade, once there is one


# --------------------------------------------------------------------------- verdict


def judge(course: CourseConfig, sub: Submission) -> Outcome | None:
    """The submission's outcome, or None while its results are awaited."""
    task = course.assignment(sub.assignment)
    if task.submit_only:
        return Outcome(sub, Verdict.ERROR, f"{sub.assignment} is never tested: a grader grades it by hand")
    status = sub.status()
    if status in WAITING_STATUSES:
        return None
    if status is SubmissionStatus.ERROR:
        return Outcome(sub, Verdict.ERROR, _first_reason(sub.results_dir / VMCHECKER_STDERR))
    text = sub.grade_text()
    result = penalty.compute(task, course.course.holidays, sub.upload_time, text)
    account = sub.results_dir / RESULT_JSON
    if account.exists():
        machine = course.machines.get(task.machine)
        why = evidence.failure_reason(_read_json(account), check=bool(machine and machine.check_script))
        if why is not None:
            return Outcome(sub, Verdict.FAILED, why, result)
    parsed = penalty.parse_grade_vmr(text)
    if parsed.adjustments < 0:
        return Outcome(sub, Verdict.FAILED, penalty.deduction_reason(parsed) or "the tests took points away",
                       result)
    return Outcome(sub, Verdict.PASSED, "", result)


def _read_json(path: Path) -> Any:
    try:
        if path.is_symlink() or path.stat().st_size > MAX_RESULT_JSON:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _first_reason(path: Path) -> str:
    """The first reason vmchecker-stderr.vmr gives for an error (the job was given up)."""
    try:
        lines = [line.strip(" -") for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    reasons = [line for line in lines if not line.endswith(":")]
    return reasons[0][:300] if reasons else "the job ended in error"


# --------------------------------------------------------------------------- waiting


def wait(course: CourseConfig, subs: Sequence[Submission], timeout: float, progress: TextIO, *,
         poll: float = POLL_S, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> list[Outcome]:
    """Wait until every one of ``subs`` has an outcome, or ``timeout`` seconds pass (the
    rest are then TIMED_OUT); outcomes in the order of ``subs``."""
    deadline = clock() + timeout
    pending = {sub.path: sub for sub in subs}
    done: dict[Path, Outcome] = {}
    shown = Progress(progress)
    try:
        while True:
            for path in list(pending):
                outcome = judge(course, load_submission(path))
                if outcome is not None:
                    done[path] = outcome
                    del pending[path]
            if not pending:
                break
            left = deadline - clock()
            if left <= 0:
                for path, sub in pending.items():
                    done[path] = Outcome(sub, Verdict.TIMED_OUT,
                                         f"no results within {timeout:g} s; the job goes on (vmchecker-status"
                                         f" {course.id}, and vmchecker-grades {course.id} once it is graded)")
                break
            shown.update([load_submission(path) for path in pending], _queue(course))
            sleep(min(poll, left))
    finally:
        shown.close()
    return [done[sub.path] for sub in subs]


def _queue(course: CourseConfig) -> dict[tuple[str, str, str], dict] | None:
    """The daemon's active jobs of the course by (assignment, account, submission); None
    when it does not answer."""
    try:
        answer = rpc.Client(course.storer.daemon, STATUS_TIMEOUT).status()
    except RpcError as exc:
        log.debug("no queue information: %s", exc.message)
        return None
    jobs = answer.get("jobs") if isinstance(answer, dict) else None
    found = {}
    for job in jobs if isinstance(jobs, list) else []:
        if isinstance(job, dict) and job.get("course") == course.id:
            found[(job.get("assignment"), job.get("account"), job.get("submission"))] = job
    return found


def where(sub: Submission, queue: dict[tuple[str, str, str], dict] | None, now: float) -> tuple[str, str]:
    """Where the submission's job is, in words: (the place, which changes rarely; the
    estimate, which moves with every look)."""
    label = f"{sub.assignment}/{sub.account}"
    if queue is None:
        return f"{label}: {sub.status().value}; the storer daemon is not answering", ""
    job = queue.get((sub.assignment, sub.account, sub.name))
    if job is None:
        return f"{label}: {sub.status().value}", ""
    position, tester = job.get("position"), job.get("tester")
    if isinstance(position, int) and not isinstance(position, bool) and position > 0:
        place = f"{label}: position {position} in the queue"
    elif tester:
        place = f"{label}: being tested on {tester}"
    else:
        place = f"{label}: {job.get('state') or sub.status().value}"
    finish = job.get("estimated_finish")
    if isinstance(finish, (int, float)) and not isinstance(finish, bool) and finish > 0:
        left = max(0, round(finish - now))
        return place, f"results expected around {time.strftime('%H:%M:%S', time.localtime(finish))} (in {left} s)"
    return place, ""


class Progress:
    """Where each job is: one line rewritten on a terminal, else a line per change."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.last: dict[Path, str] = {}
        self.drawn = False

    def update(self, pending: Sequence[Submission], queue: dict | None) -> None:
        now = time.time()
        lines = [(sub, *where(sub, queue, now)) for sub in pending]
        if self.tty:
            text = "; ".join(", ".join(filter(None, (place, estimate))) for _, place, estimate in lines)
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r" + text[:width] + "\x1b[K")
            self.drawn = True
        else:
            for sub, place, estimate in lines:
                if self.last.get(sub.path) != place:
                    self.last[sub.path] = place
                    self.out.write(", ".join(filter(None, (place, estimate))) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()


# --------------------------------------------------------------------------- report


def result_files(sub: Submission) -> list[Path]:
    """The result files to print, steps first, ``grade.vmr`` last; the assignment's
    ``ignored_vmrs`` stay in the folder (the web shows them to admins only)."""
    folder = sub.results_dir
    if not folder.is_dir():
        return []
    names = {p.name for p in folder.glob("*.vmr") if p.is_file() and not p.is_symlink()} - {GRADE_VMR}
    ordered = [n for n in _FIRST if n in names] + sorted(names - set(_FIRST))
    return [folder / n for n in ordered] + ([folder / GRADE_VMR] if (folder / GRADE_VMR).is_file() else [])


def _status_word(path: Path) -> bool:
    """Whether a grade.vmr holds a status word other than ``done`` (no grade to show)."""
    words = path.read_text(errors="replace").split()
    return len(words) == 1 and words[0].lower() in {s.value for s in WAITING_STATUSES} | {SubmissionStatus.ERROR.value}


def report(course: CourseConfig, outcome: Outcome, out: TextIO) -> None:
    """The result files (each cut at :data:`SHOWN_BYTES`), the grade and the verdict."""
    sub = outcome.submission
    hidden = set(course.assignment(sub.assignment).ignored_vmrs)
    out.write(f"=== {course.id}/{sub.assignment}/{sub.account}/{sub.name}: {sub.results_dir}\n")
    if outcome.verdict is not Verdict.TIMED_OUT:
        for path in result_files(sub):
            if path.name in hidden or (path.name == GRADE_VMR and _status_word(path)):
                continue
            with open(path, "rb") as f:
                raw = f.read(SHOWN_BYTES + 1)
            if not raw.strip():
                continue
            text = raw[:SHOWN_BYTES].decode("utf-8", errors="replace")
            out.write(f"--- {path.name}\n{text}" + ("" if text.endswith("\n") else "\n"))
            if len(raw) > SHOWN_BYTES:
                out.write(f"[cut: the first {SHOWN_BYTES} bytes of {path.stat().st_size}]\n")
    if outcome.result is not None and outcome.result.grade is not None:
        out.write(penalty.describe(outcome.result))
    word = outcome.verdict.name.lower().replace("_", " ")
    out.write(f"{word}: {outcome.reason}\n" if outcome.reason else f"{word}\n")
