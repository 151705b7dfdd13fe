"""The job journal: transitions, attempts, restart, threads, WAL, keys."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from vmchecker.contract import JOB_ID_RE, JobState, Stage
from vmchecker.errors import JobStateError, NotFound, VmcheckerError
from vmchecker.storer import timeline
from vmchecker.storer.journal import Journal, check_key
from vmchecker.storer.journal_schema import SCHEMA_VERSION
from vmchecker.storer.scheduler import Estimate


@pytest.fixture
def journal(tmp_path: Path):
    with Journal(tmp_path / "journal.db") as j:
        yield j


def enqueue(journal: Journal, account: str = "bob", now: float = 1000.0):
    return journal.enqueue("so", "1-hello", account, "2026.02.20 10.00.00", "linux", now=now)


def test_enqueue_journals_a_queued_job(journal: Journal) -> None:
    job = enqueue(journal)
    assert job.state is JobState.QUEUED
    assert (job.course, job.assignment, job.account, job.machine) == ("so", "1-hello", "bob", "linux")
    assert job.attempts == 0 and job.tester is None and job.reasons == ()
    assert journal.get(job.id) == job
    assert journal.to_dispatch() == [job]
    assert JOB_ID_RE.match(job.id) and "_" not in job.id  # safe inside a bundle name


def test_happy_path_queued_sent_done(journal: Journal) -> None:
    job = enqueue(journal)
    sent = journal.mark_sent(job.id, "t1", deadline=1300.0, now=1010.0)
    assert (sent.state, sent.tester, sent.sent, sent.deadline) == (JobState.SENT, "t1", 1010.0, 1300.0)
    assert journal.to_dispatch() == []
    assert journal.in_flight("t1") == [sent] and journal.in_flight("t2") == []
    done = journal.mark_done(job.id, tester="t1", now=1100.0)
    assert (done.state, done.finished, done.deadline) == (JobState.DONE, 1100.0, None)
    assert journal.active() == [] and journal.in_flight() == []


def test_transitions_from_the_wrong_state_change_nothing(journal: Journal) -> None:
    job = enqueue(journal)
    with pytest.raises(JobStateError, match="queued, not sent"):
        journal.mark_done(job.id)
    journal.mark_sent(job.id, "t1", deadline=2000.0)
    with pytest.raises(JobStateError, match="sent to t1, not t2"):
        journal.mark_done(job.id, tester="t2")
    with pytest.raises(JobStateError):
        journal.mark_sent(job.id, "t2", deadline=2000.0)
    assert journal.get(job.id).tester == "t1"
    journal.mark_done(job.id, tester="t1")
    for action in (
        lambda: journal.mark_done(job.id),
        lambda: journal.mark_error(job.id, "late"),
        lambda: journal.record_failure(job.id, "late", max_attempts=3),
    ):
        with pytest.raises(JobStateError):
            action()
    assert journal.get(job.id).state is JobState.DONE


def test_unknown_job_is_not_found(journal: Journal) -> None:
    with pytest.raises(NotFound):
        journal.get("nope")
    with pytest.raises(NotFound):
        journal.mark_done("nope")
    assert journal.find("nope") is None


def test_failures_requeue_until_max_attempts_then_error_with_every_reason(journal: Journal) -> None:
    job = enqueue(journal)
    reasons = ["cannot connect: refused", "no notify before the deadline", "status error: VM did not start"]
    for attempt, (tester, reason) in enumerate(zip(["t1", "t2", "t1"], reasons, strict=True), start=1):
        journal.mark_sent(job.id, tester, deadline=5000.0)
        job = journal.record_failure(job.id, reason, max_attempts=3)
        assert job.attempts == attempt
        assert job.state is (JobState.ERROR if attempt == 3 else JobState.QUEUED)
        assert job.last_error == reason
    assert job.failed_on == ("t1", "t2")
    assert len(job.reasons) == 3
    for n, (tester, reason, text) in enumerate(zip(["t1", "t2", "t1"], reasons, job.reasons, strict=True), start=1):
        assert text == f"attempt {n} on {tester}: {reason}"
    assert job.finished is not None
    assert journal.to_dispatch() == [] and journal.active() == []


def test_failure_before_send_and_mark_error(journal: Journal) -> None:
    job = enqueue(journal)
    job = journal.record_failure(job.id, "upload failed", max_attempts=3, tester="t1")
    assert (job.state, job.failed_on) == (JobState.QUEUED, ("t1",))
    job = journal.mark_error(job.id, "bundle cannot be built: tests.zip missing")
    assert job.state is JobState.ERROR
    assert job.reasons == ("attempt 1 on t1: upload failed", "bundle cannot be built: tests.zip missing")


def test_queries_order_and_overdue(journal: Journal) -> None:
    a = enqueue(journal, "a", now=100.0)
    b = enqueue(journal, "b", now=50.0)
    c = enqueue(journal, "c", now=200.0)
    assert [j.id for j in journal.to_dispatch()] == [b.id, a.id, c.id]
    assert [j.id for j in journal.to_dispatch(limit=2)] == [b.id, a.id]
    journal.mark_sent(a.id, "t1", deadline=500.0, now=300.0)
    journal.mark_sent(c.id, "t2", deadline=900.0, now=310.0)
    assert [j.id for j in journal.overdue(now=600.0)] == [a.id]
    assert [j.id for j in journal.overdue(now=1000.0)] == [a.id, c.id]
    assert [j.id for j in journal.active()] == [b.id, a.id, c.id]
    assert journal.counts() == {JobState.QUEUED: 1, JobState.SENT: 2, JobState.DONE: 0, JobState.ERROR: 0}


def test_restart_reads_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as journal:
        queued = enqueue(journal, "a", now=1000.0)
        sent = journal.mark_sent(enqueue(journal, "b", now=1001.0).id, "t1", deadline=9000.0)
        failed = enqueue(journal, "c", now=1002.0)
        journal.mark_sent(failed.id, "t2", deadline=9000.0)
        failed = journal.record_failure(failed.id, "no notify", max_attempts=3)
        journal.save_estimate("so", "t1", "1-hello", Estimate(12.5, 4, 11.0, 3, 777.0))
    with Journal(path) as journal:
        assert journal.get(queued.id) == queued
        assert journal.get(sent.id) == sent
        assert journal.get(failed.id) == failed
        assert [j.id for j in journal.to_dispatch()] == [queued.id, failed.id]
        assert journal.in_flight() == [sent]
        # a notify for a job sent before the restart is accepted with the same key
        assert check_key(journal.get(sent.id), sent.key)
        assert journal.mark_done(sent.id, tester="t1").state is JobState.DONE
        assert journal.load_estimates("so") == {("t1", "1-hello"): Estimate(12.5, 4, 11.0, 3, 777.0)}
        assert journal.load_estimates("other") == {}


def test_estimates_are_replaced_not_duplicated(journal: Journal) -> None:
    journal.save_estimate("so", "t1", "1-hello", Estimate(10.0, 1, 10.0, 1))
    journal.save_estimate("so", "t1", "1-hello", Estimate(20.0, 2, 20.0, 2))
    journal.save_estimate("so", "t2", "1-hello", Estimate(30.0, 1, None, 0, 5.0))
    assert journal.load_estimates("so") == {
        ("t1", "1-hello"): Estimate(20.0, 2, 20.0, 2),
        ("t2", "1-hello"): Estimate(30.0, 1, None, 0, 5.0),
    }


def test_wal_mode_and_full_sync(journal: Journal, tmp_path: Path) -> None:
    assert journal.journal_mode() == "wal"
    enqueue(journal)
    assert (tmp_path / "journal.db-wal").exists()
    # another connection (another process, e.g. a backup) sees the committed row
    other = sqlite3.connect(tmp_path / "journal.db")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
    finally:
        other.close()


def test_concurrent_enqueue_from_threads(journal: Journal) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(25):
                job = journal.enqueue("so", "1-hello", f"u{n}-{i}", "s", "linux")
                with lock:
                    ids.append(job.id)
        except BaseException as exc:  # collected and re-raised by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 200
    assert {j.id for j in journal.to_dispatch()} == set(ids)


def test_concurrent_transitions_only_one_wins(journal: Journal) -> None:
    """A late notify and the deadline sweeper racing on one job: exactly one succeeds."""
    jobs = [journal.mark_sent(enqueue(journal, f"u{i}").id, "t1", deadline=1.0) for i in range(40)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def notify() -> None:
        for job in jobs:
            try:
                journal.mark_done(job.id, tester="t1")
                with lock:
                    outcomes.append("done")
            except JobStateError:
                pass

    def sweep() -> None:
        for job in jobs:
            try:
                journal.record_failure(job.id, "no notify", max_attempts=3)
                with lock:
                    outcomes.append("failed")
            except JobStateError:
                pass

    threads = [threading.Thread(target=notify), threading.Thread(target=sweep)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == len(jobs)
    states = [journal.get(j.id).state for j in jobs]
    assert states.count(JobState.DONE) == outcomes.count("done")
    assert states.count(JobState.QUEUED) == outcomes.count("failed")


def test_key_is_long_and_checked(journal: Journal) -> None:
    job = enqueue(journal)
    other = enqueue(journal, "alice")
    assert len(job.key) >= 32  # token_urlsafe(32): 43 characters, 256 bits
    assert job.key != other.key
    assert check_key(job, job.key)
    assert not check_key(job, other.key)
    assert not check_key(job, job.key[:-1])
    assert not check_key(job, "")
    assert not check_key(job, None)
    assert not check_key(job, "ключ")  # non-ASCII must not raise


def test_key_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch, journal: Journal) -> None:
    import vmchecker.storer.journal as module

    calls: list[tuple[bytes, bytes]] = []
    real = module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    job = enqueue(journal)
    assert check_key(job, job.key)
    assert calls == [(job.key.encode(), job.key.encode())]


def test_unopenable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(VmcheckerError, match="missing/journal.db"):
        Journal(tmp_path / "missing" / "journal.db")


def test_a_failed_job_waits_out_its_retry_delay(tmp_path):
    from vmchecker.storer.journal import Journal

    with Journal(tmp_path / "j.db") as journal:
        job = journal.enqueue("so", "1-hello", "bob", "s", "linux", now=100.0)
        journal.mark_sent(job.id, "t1", deadline=500.0, now=101.0)
        journal.record_failure(job.id, "cannot connect", max_attempts=3, retry_delay=30.0, now=102.0)
        assert journal.to_dispatch(now=120.0) == []
        assert journal.next_due() == 132.0
        assert [j.id for j in journal.to_dispatch(now=132.0)] == [job.id]
        assert journal.next_due(after=132.0) is None   # due already: no reason to wait
        other = journal.enqueue("so", "1-hello", "carol", "s", "linux", now=103.0)
        journal.mark_sent(other.id, "t1", deadline=600.0, now=104.0)
        assert (journal.next_due(after=120.0), journal.next_due(after=132.0)) == (132.0, 600.0)   # its deadline


def test_a_send_is_in_doubt_until_confirmed(journal: Journal) -> None:
    job = enqueue(journal)
    sent = journal.mark_sent(job.id, "t1", deadline=1300.0, now=1010.0)
    assert sent.confirmed is None and journal.in_doubt() == [sent]
    confirmed = journal.confirm_sent(job.id, now=1011.0)
    assert confirmed.confirmed == 1011.0 and confirmed.state is JobState.SENT and journal.in_doubt() == []
    assert journal.confirm_sent(job.id, now=1020.0).confirmed == 1011.0   # twice: unchanged
    with pytest.raises(JobStateError, match="confirmed"):
        journal.requeue_unsent(job.id, "not found on t1")
    journal.mark_done(job.id)
    with pytest.raises(JobStateError):
        journal.confirm_sent(job.id)   # a fast notify won: nothing left to confirm


def test_an_unsent_job_is_queued_again_without_counting_an_attempt(journal: Journal) -> None:
    job = enqueue(journal)
    journal.mark_sent(job.id, "t1", deadline=1300.0, now=1010.0)
    again = journal.requeue_unsent(job.id, "not on t1")
    assert again.state is JobState.QUEUED and again.attempts == 0 and again.failed_on == () and again.reasons == ()
    assert (again.deadline, again.retry_at, again.confirmed) == (None, None, None)
    assert journal.to_dispatch() == [again] and journal.in_doubt() == []
    resent = journal.mark_sent(job.id, "t1", deadline=1400.0, now=1020.0)   # a new intent is in doubt again
    assert resent.confirmed is None and journal.in_doubt() == [resent]
    with pytest.raises(JobStateError):
        journal.requeue_unsent(enqueue(journal, "ann").id, "never sent")


def test_a_version_2_journal_is_migrated_with_its_sent_jobs_in_doubt(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as j:
        queued = enqueue(j, "ann")
        sent = j.mark_sent(enqueue(j, "bob").id, "t1", deadline=1300.0, now=1010.0)
    db = sqlite3.connect(path)   # as version 2 left it: no confirmed column
    db.execute("ALTER TABLE jobs DROP COLUMN confirmed")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with Journal(path) as j:
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [job.id for job in j.in_doubt()] == [sent.id]
        assert j.get(queued.id).state is JobState.QUEUED
        assert j.confirm_sent(sent.id, now=1020.0).confirmed == 1020.0


# The jobs table exactly as version 3 of the file had it, with no stages table.
VERSION_3 = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, key TEXT NOT NULL, course TEXT NOT NULL, assignment TEXT NOT NULL,
    account TEXT NOT NULL, submission TEXT NOT NULL, machine TEXT NOT NULL, tester TEXT, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, sent REAL, finished REAL, deadline REAL,
    reasons TEXT NOT NULL DEFAULT '[]', failed_on TEXT NOT NULL DEFAULT '[]', last_error TEXT NOT NULL DEFAULT '',
    retry_at REAL, confirmed REAL);
CREATE INDEX jobs_state ON jobs (state, created);
CREATE TABLE estimates (course TEXT NOT NULL, tester TEXT NOT NULL, assignment TEXT NOT NULL, mean REAL NOT NULL,
    count INTEGER NOT NULL, measured REAL, measured_count INTEGER NOT NULL DEFAULT 0, penalised_at REAL,
    updated REAL NOT NULL, PRIMARY KEY (course, tester, assignment));
INSERT INTO jobs (id, key, course, assignment, account, submission, machine, tester, state, created, sent,
    finished, confirmed) VALUES
    ('old-done', 'k1', 'so', '1-hello', 'ann', '2026.02.20 10.00.00', 'linux', 't1', 'done', 1000, 1001, 1005, 1002),
    ('old-queued', 'k2', 'so', '1-hello', 'bob', '2026.02.20 10.00.00', 'linux', NULL, 'queued', 1010, NULL, NULL,
     NULL);
INSERT INTO estimates VALUES ('so', 't1', '1-hello', 4.0, 1, NULL, 0, NULL, 1005);
PRAGMA user_version=3;
"""


def test_a_version_3_journal_keeps_its_rows_and_gains_timelines(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.executescript(VERSION_3)
    db.close()
    with Journal(path) as j:
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        done, queued = j.get("old-done"), j.get("old-queued")
        assert (done.state, done.tester, done.confirmed, done.finished) == (JobState.DONE, "t1", 1002, 1005)
        assert queued.state is JobState.QUEUED and j.load_estimates("so")[("t1", "1-hello")].mean == 4.0
        assert j.stages(["old-done", "old-queued"]) == {}
        # an old job's timeline is what its own columns hold
        old = timeline.build(done, [])
        assert [(r["stage"], r["at"]) for r in old["stages"]] == [("queued", 1000), ("sending", 1001),
                                                                   ("on_tester", 1002), ("graded", 1005)]
        # the old queued job moves on with its stages recorded
        j.mark_sent("old-queued", "t1", deadline=2000.0, now=1020.0, dispatched=1019.0)
        j.confirm_sent("old-queued", now=1021.0)
        j.mark_done("old-queued", now=1030.0, stages={Stage.GRADED: 1030.0})
        assert [(m.stage, m.at) for m in j.stages(["old-queued"])["old-queued"]] == [
            (Stage.DISPATCHED, 1019.0), (Stage.SENDING, 1020.0), (Stage.ON_TESTER, 1021.0), (Stage.GRADED, 1030.0)]
    with Journal(path) as j:   # opening the migrated file again changes nothing
        assert len(j.stages(["old-queued"])["old-queued"]) == 4 and j.get("old-done").state is JobState.DONE


def test_transitions_record_the_stages_of_each_attempt(journal: Journal) -> None:
    job = journal.enqueue("so", "1-hello", "bob", "2026.02.20 10.00.00", "linux", now=1000.0, stored=999.5)
    journal.mark_sent(job.id, "t1", deadline=1300.0, now=1002.0, dispatched=1001.0)
    journal.record_failure(job.id, "tester down", max_attempts=3, now=1003.0)
    journal.mark_sent(job.id, "t2", deadline=1300.0, now=1005.0, dispatched=1004.0)
    journal.confirm_sent(job.id, now=1006.0)
    journal.confirm_sent(job.id, now=1007.0)   # a second confirmation records nothing new
    journal.mark_done(job.id, now=1010.0, stages={Stage.RUN_ENDED: 1008.0, Stage.GRADED: 1010.0})
    marks = [(m.attempt, m.stage.value, m.at) for m in journal.stages([job.id, "no-such-job"])[job.id]]
    assert marks == [(0, "stored", 999.5), (0, "queued", 1000.0), (0, "dispatched", 1001.0), (0, "sending", 1002.0),
                     (1, "dispatched", 1004.0), (1, "sending", 1005.0), (1, "on_tester", 1006.0),
                     (1, "run_ended", 1008.0), (1, "graded", 1010.0)]
