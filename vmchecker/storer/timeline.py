"""A job's timeline on one clock: what ``vmchecker-status --job`` and the web show graders.

The journal records each :class:`~vmchecker.contract.Stage` of a job on the clock of the
machine where it happened: the storer's stages on the storer's, the tester's
(:data:`~vmchecker.contract.TESTER_STAGES`, carried by its notification or its
``result.json``) on the tester's. The two clocks may differ, so:

* a duration between two stages of one machine is computed from that machine's own
  clock, exactly as recorded;
* to show both sides on one axis, each attempt's tester stages are placed on the storer's
  clock. They happened after the storer journaled ``sending`` (the upload starts) and
  before it saw ``notify_received`` (or, without a notification, ``results_fetched``). If
  the tester's times as recorded fit between the two, the clocks agree as far as can be
  told and nothing is shifted; otherwise the tester's stages are shifted so that the
  storer's window has equal slack on both sides, as NTP assumes equal delays both ways.
  Only the durations that cross from one machine to the other then depend on that
  estimate, and they are marked ``estimated``.

A job journaled before stages were recorded (an older journal) gets the moments its own
columns hold: queued, sending, on the tester and, if it ended, graded or given up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from vmchecker.contract import GRADE_VMR, STAGE_STAT_PREFIX, TESTER_STAGES, JobState, Stage
from vmchecker.repo import Submission
from vmchecker.storer.journal import Job, Journal, StageMark

log = logging.getLogger(__name__)

ORDER = {stage: n for n, stage in enumerate(Stage)}
STORER, TESTER = "storer", "tester"


def stored_at(sub: Submission) -> float | None:
    """When a submission still ``saved`` was stored: its ``grade.vmr`` says ``saved`` from
    the moment the upload (or the recheck) was made durable, and is rewritten only as the
    job moves on. None if it cannot be read."""
    try:
        return (sub.results_dir / GRADE_VMR).stat().st_mtime
    except OSError:
        return None


def _tester_stages(pairs: Mapping[str, Any], prefix: str = "") -> dict[Stage, float]:
    """The tester stages among ``prefix + stage -> time`` pairs; anything else (an unknown
    name, a storer stage a tester may not claim, a time that is not a finite number) is
    left out: a tester is only semi-trusted, and these times are only ever shown."""
    found = {}
    for stage in TESTER_STAGES:
        at = pairs.get(prefix + stage.value)
        if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) and at > 0:
            found[stage] = float(at)
    return found


def from_stats(stats: Mapping[str, Any]) -> dict[Stage, float]:
    """The tester's stages a notification carries (``at_<stage>`` stats)."""
    return _tester_stages(stats, STAGE_STAT_PREFIX)


def from_result(result: Any) -> dict[Stage, float]:
    """The executor's stages in a ``result.json`` (its ``timeline``): the timeline of a job
    whose results the storer pulled without a notification."""
    timeline = result.get("timeline") if isinstance(result, dict) else None
    return _tester_stages(timeline) if isinstance(timeline, dict) else {}


def from_columns(job: Job) -> list[StageMark]:
    """The moments an older journal row holds (no stage was recorded for it)."""
    moments = {Stage.QUEUED: job.created, Stage.SENDING: job.sent, Stage.ON_TESTER: job.confirmed,
               Stage.GRADED: job.finished if job.state is JobState.DONE else None}
    return [StageMark(stage, at, job.attempts) for stage, at in moments.items() if at is not None]


def tester_offset(storer: dict[Stage, float], tester: dict[Stage, float]) -> tuple[float, str]:
    """Seconds to add to one attempt's tester stages to put them on the storer's clock, and
    a sentence saying how that was decided (module docstring)."""
    if not tester:
        return 0.0, ""
    low_anchor = storer.get(Stage.SENDING)
    high_anchor = storer.get(Stage.NOTIFY_RECEIVED, storer.get(Stage.RESULTS_FETCHED))
    if low_anchor is None or high_anchor is None:
        return 0.0, "the tester's times are shown as recorded (no storer moment before and after them to compare)"
    low, high = low_anchor - min(tester.values()), high_anchor - max(tester.values())
    if low <= 0 <= high:
        return 0.0, ("the tester's times fit between the storer's sending and its receipt of the results:"
                     " both clocks are shown as recorded")
    offset = (low + high) / 2
    why = "" if low <= high else " (they do not fit even so: a clock was stepped meanwhile)"
    return offset, (f"the tester's clock differs from the storer's: its times are shifted by {offset:+.3f} s{why};"
                    " durations across the two machines (estimated) depend on that, the others are each"
                    " machine's own")


def build(job: Job, marks: list[StageMark]) -> dict[str, Any]:
    """The job's timeline, ordered by time on the storer's clock, with the time since the
    previous stage and since the submission was stored (XML-RPC-safe: no None)."""
    marks = marks or from_columns(job)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for attempt in sorted({m.attempt for m in marks}):
        mine = [m for m in marks if m.attempt == attempt]
        storer = {m.stage: m.at for m in mine if m.stage not in TESTER_STAGES}
        tester = {m.stage: m.at for m in mine if m.stage in TESTER_STAGES}
        offset, note = tester_offset(storer, tester)
        if note:
            notes.append(f"attempt {attempt + 1}: {note}" if job.attempts else note)
        for m in mine:
            on_tester = m.stage in TESTER_STAGES
            rows.append({"stage": m.stage.value, "attempt": attempt, "clock": TESTER if on_tester else STORER,
                         "recorded": m.at, "at": m.at + (offset if on_tester else 0.0), "shifted": bool(offset)})
    rows.sort(key=lambda r: (r["at"], ORDER[Stage(r["stage"])]))
    start = next((r["at"] for r in rows if r["stage"] == Stage.STORED), rows[0]["at"] if rows else 0.0)
    previous: dict[str, Any] | None = None
    for row in rows:
        row["since_stored_s"] = round(row["at"] - start, 6)
        if previous is None:
            row["since_previous_s"], row["estimated"] = 0.0, False
        elif previous["clock"] == row["clock"] and previous["attempt"] == row["attempt"]:
            row["since_previous_s"], row["estimated"] = round(row["recorded"] - previous["recorded"], 6), False
        else:   # across the machines: as good as the placement of the tester's stages
            row["since_previous_s"] = round(row["at"] - previous["at"], 6)
            row["estimated"] = row["shifted"] or previous["shifted"]
        previous = row
    for row in rows:
        del row["shifted"]
    return {"job_id": job.id, "course": job.course, "assignment": job.assignment, "account": job.account,
            "submission": job.submission, "state": job.state.value, "tester": job.tester or "",
            "attempts": job.attempts, "stages": rows, "notes": notes}


def answer(journal: Journal, job_ids: list[str]) -> dict[str, Any]:
    """The timelines of the jobs of ``job_ids`` the journal knows, by job id. The jobs are
    read before their stages: a job read ``done`` then has every stage its ``mark_done``
    recorded (the same transaction), never a state newer than its stages."""
    jobs = [job for job in map(journal.find, dict.fromkeys(job_ids)) if job is not None]
    marks = journal.stages([job.id for job in jobs])
    return {job.id: build(job, marks.get(job.id, [])) for job in jobs}
