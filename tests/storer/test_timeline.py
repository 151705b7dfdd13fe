"""A job's timeline on one clock: the tester's stages placed between the storer's, each
machine's durations from its own clock, and what a tester may not claim left out."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vmchecker.contract import Stage
from vmchecker.storer import timeline
from vmchecker.storer.journal import Journal, StageMark

STORER_BEFORE = {Stage.STORED: 100.0, Stage.QUEUED: 100.01, Stage.DISPATCHED: 100.02, Stage.SENDING: 100.05,
                 Stage.ON_TESTER: 100.10}
TESTER = {Stage.RECEIVED: 100.08, Stage.SLOT_TAKEN: 100.09, Stage.EXECUTOR_STARTED: 100.2, Stage.GUEST_READY: 100.3,
          Stage.RUN_ENDED: 100.5, Stage.EXECUTOR_ENDED: 100.6, Stage.RESULTS_DURABLE: 100.61, Stage.NOTIFIED: 100.62}
STORER_AFTER = {Stage.NOTIFY_RECEIVED: 100.63, Stage.RESULTS_FETCHED: 100.66, Stage.GRADED: 100.7}


@pytest.fixture
def journal(tmp_path: Path):
    with Journal(tmp_path / "journal.db") as j:
        yield j


def done_job(journal: Journal, tester_shift: float = 0.0):
    """A job through every stage, its tester's clock ``tester_shift`` seconds off."""
    job = journal.enqueue("so", "1-hello", "bob", "2026.02.20 10.00.00", "linux", now=STORER_BEFORE[Stage.QUEUED],
                          stored=STORER_BEFORE[Stage.STORED])
    journal.mark_sent(job.id, "t1", deadline=500.0, now=STORER_BEFORE[Stage.SENDING],
                      dispatched=STORER_BEFORE[Stage.DISPATCHED])
    journal.confirm_sent(job.id, now=STORER_BEFORE[Stage.ON_TESTER])
    stages = {**{s: at + tester_shift for s, at in TESTER.items()}, **STORER_AFTER}
    return journal.mark_done(job.id, now=100.7, stages=stages)


def rows(t: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in t["stages"]}


def test_clocks_that_agree_are_shown_as_recorded_in_time_order(journal):
    job = done_job(journal)
    t = timeline.answer(journal, [job.id, "unknown-job"])
    assert list(t) == [job.id]
    t = t[job.id]
    # the tester saw the bundle before the storer journaled its confirmation: time order
    expected = sorted({**STORER_BEFORE, **TESTER, **STORER_AFTER}.items(), key=lambda kv: kv[1])
    assert [(r["stage"], r["at"]) for r in t["stages"]] == [(s.value, at) for s, at in expected]
    assert not any(r["estimated"] for r in t["stages"])
    assert "shown as recorded" in t["notes"][0]
    by = rows(t)
    assert by["stored"]["since_previous_s"] == 0 and by["graded"]["since_stored_s"] == pytest.approx(0.7)
    assert by["guest_ready"]["since_previous_s"] == pytest.approx(0.1)
    assert by["received"]["clock"] == "tester" and by["notify_received"]["clock"] == "storer"


def test_a_tester_clock_an_hour_ahead_is_placed_between_sending_and_the_notification(journal):
    t = timeline.answer(journal, [done_job(journal, tester_shift=3600.0).id])
    t = next(iter(t.values()))
    by = rows(t)
    # the storer's window (sending 100.05 .. notify received 100.63) has 0.58 s; the
    # tester's span (received .. notified) 0.54 s: 0.02 s of slack on each side
    assert by["received"]["at"] == pytest.approx(100.07)
    assert by["notified"]["at"] == pytest.approx(100.61)
    assert by["received"]["recorded"] == pytest.approx(3700.08)
    # within one machine: exactly its own clock's difference, not an estimate
    assert by["guest_ready"]["since_previous_s"] == pytest.approx(0.1) and not by["guest_ready"]["estimated"]
    # across the machines: an estimate, and said so
    assert by["notify_received"]["estimated"] and by["notify_received"]["since_previous_s"] == pytest.approx(0.02)
    assert "shifted by -3600.010 s" in t["notes"][0]
    assert [r["stage"] for r in t["stages"]].index("sending") < [r["stage"] for r in t["stages"]].index("received")


def test_without_a_notification_the_fetch_bounds_the_tester_stages(journal):
    job = journal.enqueue("so", "1-hello", "bob", "s", "linux", now=10.0, stored=9.0)
    journal.mark_sent(job.id, "t1", deadline=500.0, now=11.0)
    job = journal.mark_done(job.id, now=20.0, stages={Stage.EXECUTOR_STARTED: 1012.0, Stage.EXECUTOR_ENDED: 1015.0,
                                                       Stage.RESULTS_FETCHED: 19.0, Stage.GRADED: 20.0})
    by = rows(timeline.build(job, journal.stages([job.id])[job.id]))
    assert by["executor_started"]["at"] == pytest.approx(13.5) and by["executor_ended"]["at"] == pytest.approx(16.5)


def test_a_retried_job_shows_each_attempt(journal):
    job = journal.enqueue("so", "1-hello", "bob", "s", "linux", now=10.0, stored=9.0)
    journal.mark_sent(job.id, "t1", deadline=500.0, now=11.0, dispatched=10.5)
    journal.record_failure(job.id, "down", max_attempts=3, now=12.0)
    journal.mark_sent(job.id, "t2", deadline=500.0, now=13.0, dispatched=12.5)
    job = journal.mark_done(job.id, now=20.0, stages={Stage.GRADED: 20.0})
    t = timeline.build(job, journal.stages([job.id])[job.id])
    assert [(r["stage"], r["attempt"]) for r in t["stages"]] == [
        ("stored", 0), ("queued", 0), ("dispatched", 0), ("sending", 0), ("dispatched", 1), ("sending", 1),
        ("graded", 1)]


def test_a_tester_cannot_claim_a_storer_stage_or_an_odd_time():
    stats = {"at_received": 5.0, "at_graded": 6.0, "at_queued": 1.0, "at_run_ended": math.nan,
             "at_guest_ready": True, "at_build_ended": "7", "at_notified": -1.0, "at_executor_ended": 8, "tester": "t1"}
    assert timeline.from_stats(stats) == {Stage.RECEIVED: 5.0, Stage.EXECUTOR_ENDED: 8.0}
    result = {"timeline": {"executor_started": 3.0, "notify_received": 4.0, "bogus": 5.0}}
    assert timeline.from_result(result) == {Stage.EXECUTOR_STARTED: 3.0}
    assert timeline.from_result({"timeline": [1, 2]}) == {} and timeline.from_result(None) == {}


def test_stage_marks_of_unknown_names_are_left_out(journal):
    job = done_job(journal)
    journal._db.execute("INSERT INTO stages VALUES (?, 0, 'from_the_future', 1.0)", (job.id,))
    assert all(isinstance(m, StageMark) and m.stage in Stage for m in journal.stages([job.id])[job.id])


def test_a_job_read_done_has_every_stage_its_landing_recorded(journal, monkeypatch):
    """The job finishing between the two reads of answer() must not give a done job
    without its last stages (what a caller waiting for done would then take as final)."""
    job = journal.enqueue("so", "1-hello", "bob", "s", "linux", now=10.0, stored=9.0)
    journal.mark_sent(job.id, "t1", deadline=500.0, now=11.0)
    real = journal.stages

    def then_done(ids):
        found = real(ids)
        journal.mark_done(job.id, now=20.0, stages={Stage.GRADED: 20.0})
        return found

    monkeypatch.setattr(journal, "stages", then_done)
    t = timeline.answer(journal, [job.id])[job.id]
    assert t["state"] == "sent" or "graded" in rows(t)
    monkeypatch.undo()
    t = timeline.answer(journal, [job.id])[job.id]
    assert t["state"] == "done" and "graded" in rows(t)
