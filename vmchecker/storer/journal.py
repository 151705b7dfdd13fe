"""The storer daemon's durable job journal (SQLite in WAL mode).

Every job the daemon accepts is a row here before ``queue_task`` answers, and every
move of a job is one named function that changes the row in one transaction
(STYLE habit 4). After a restart the daemon reads everything back from the file:
it dispatches the ``queued`` jobs again and keeps waiting for the ``sent`` ones,
whose key and tester are still here, so a ``notify`` for a job sent before the
restart is accepted.

States (:class:`~vmchecker.contract.JobState`, stored as its string):

* ``queued`` -- journaled, not (or no longer) on a tester; the dispatcher sends it;
* ``sent``   -- the bundle is on ``tester``, waiting for ``notify`` until ``deadline``;
  until ``confirmed`` is set it is only *in doubt*: the intent to send was journaled, but
  the daemon may have died before the bundle was renamed into the tester's queue;
* ``done``   -- results pulled into the repository;
* ``error``  -- given up; ``reasons`` holds every failure, for ``vmchecker-stderr.vmr``.

Transitions: :meth:`Journal.enqueue` (-> queued), :meth:`Journal.mark_sent`
(queued -> sent, in doubt), :meth:`Journal.confirm_sent` (the bundle is on the tester),
:meth:`Journal.requeue_unsent` (in doubt -> queued: it never reached the tester, no attempt
counted), :meth:`Journal.record_failure` (queued/sent -> queued with one more
attempt, or -> error once ``max_attempts`` is reached), :meth:`Journal.mark_done`
(sent -> done), :meth:`Journal.mark_error` (queued/sent -> error). A transition from
the wrong state raises :class:`~vmchecker.errors.JobStateError` and changes nothing, so
two threads racing on one job (a late ``notify`` against the deadline sweeper) cannot both win.

Order for the dispatcher: ``mark_sent`` *before* the upload, ``confirm_sent`` after the
rename on the tester, ``record_failure`` if the upload fails. A fast ``notify`` then always
finds the job ``sent``; a crash between the two leaves it in doubt, and the next start
resolves it at once (:meth:`Journal.in_doubt`): confirmed if the tester holds it, else
queued again.

Concurrency: ONE connection shared by all threads, serialised by a lock. The
daemon's XML-RPC server starts a thread per request, so per-thread connections
would be opened and leaked per call; SQLite admits one writer at a time anyway.
Writes use ``BEGIN IMMEDIATE`` and a busy timeout so another process holding the
file (a second reader such as a backup) delays a write instead of failing it.

Timeline: the transitions also record when each :class:`~vmchecker.contract.Stage`
happened, in their own transaction (no extra write on the job's path); :meth:`Journal.stages`
reads them back, :mod:`vmchecker.storer.timeline` puts them on one clock.

The file itself (tables, version, migrations, WAL and ``synchronous=FULL``) is
:mod:`vmchecker.storer.journal_schema`.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmchecker.contract import JobState, Stage
from vmchecker.errors import JobStateError, NotFound, VmcheckerError
from vmchecker.storer.journal_schema import connect, insert_stages, migrate, select_stages
from vmchecker.storer.scheduler import Estimate

log = logging.getLogger(__name__)

KEY_BYTES = 32  # secrets.token_urlsafe(32): 256 bits, 43 characters

ACTIVE = (JobState.QUEUED, JobState.SENT)
_STAGE_NAMES = frozenset(stage.value for stage in Stage)


@dataclass(frozen=True)
class Job:
    """One journal row, read-only. Times are seconds since the epoch."""

    id: str
    key: str
    course: str
    assignment: str
    account: str
    submission: str
    machine: str
    tester: str | None
    state: JobState
    attempts: int
    created: float
    sent: float | None
    finished: float | None
    deadline: float | None
    reasons: tuple[str, ...]
    failed_on: tuple[str, ...]
    last_error: str
    retry_at: float | None = None
    confirmed: float | None = None  # when the bundle was known to be on the tester

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values: dict[str, Any] = dict(row)
        values["state"] = JobState(values["state"])
        values["reasons"] = tuple(json.loads(values["reasons"]))
        values["failed_on"] = tuple(json.loads(values["failed_on"]))
        return cls(**values)


@dataclass(frozen=True)
class StageMark:
    """When a stage happened: ``at`` on the clock of its machine (the tester's for
    ``TESTER_STAGES``); ``attempt``: how many attempts had failed before."""

    stage: Stage
    at: float
    attempt: int


def new_job_id(now: float | None = None) -> str:
    """A url-safe id that sorts by creation time: ``20261122T101530-<16 hex>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(8)}"


def new_key() -> str:
    """A job's notify key: 256 random bits, url-safe text."""
    return secrets.token_urlsafe(KEY_BYTES)


def check_key(job: Job, key: object) -> bool:
    """Whether ``key`` is the job's key, compared in constant time."""
    if not isinstance(key, str):
        return False
    return hmac.compare_digest(job.key.encode("utf-8"), key.encode("utf-8", "surrogatepass"))


class Journal:
    """The journal file. Every method is safe to call from any thread."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path)
            with self._write():
                migrate(self._db)
        except sqlite3.Error as exc:
            raise VmcheckerError(f"{self.path}: cannot open the job journal: {exc}") from None
        log.info("journal %s open", self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also after a failed COMMIT (disk full, I/O error)
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _fetch(db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r} in the journal")
        return Job.from_row(row)

    @staticmethod
    def _expect(job: Job, states: tuple[JobState, ...], action: str) -> None:
        if job.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise JobStateError(f"cannot {action} job {job.id}: it is {job.state.value}, not {allowed}")

    # ------------------------------------------------------------------ transitions

    def enqueue(
        self, course: str, assignment: str, account: str, submission: str, machine: str, *, now: float | None = None,
        stored: float | None = None,
    ) -> Job:
        """Journal a new job as ``queued`` (durable when this returns) and return it;
        ``stored``: when its submission was stored."""
        now = time.time() if now is None else now
        job_id, key = new_job_id(now), new_key()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, key, course, assignment, account, submission, machine, state, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, key, course, assignment, account, submission, machine, JobState.QUEUED.value, now),
            )
            job = self._fetch(db, job_id)
            insert_stages(db, job.id, job.attempts, {Stage.STORED: stored, Stage.QUEUED: now})
        log.info("job %s queued: %s/%s/%s/%s", job_id, course, assignment, account, submission)
        return job

    def mark_sent(self, job_id: str, tester: str, deadline: float, *, now: float | None = None,
                  dispatched: float | None = None) -> Job:
        """queued -> sent to ``tester``, in doubt until :meth:`confirm_sent`; a ``notify`` is
        expected before ``deadline``. Journaled before the upload, so a notify never
        finds the job still queued. ``dispatched``: when the scheduler chose the tester."""
        now = time.time() if now is None else now
        with self._write() as db:
            self._expect(self._fetch(db, job_id), (JobState.QUEUED,), "send")
            db.execute(
                "UPDATE jobs SET state = ?, tester = ?, sent = ?, deadline = ?, confirmed = NULL WHERE id = ?",
                (JobState.SENT.value, tester, now, deadline, job_id),
            )
            job = self._fetch(db, job_id)
            insert_stages(db, job.id, job.attempts, {Stage.DISPATCHED: dispatched, Stage.SENDING: now})
        log.info("job %s sent to %s (attempt %d), notify due by %.0f", job_id, tester, job.attempts + 1, deadline)
        return job

    def confirm_sent(self, job_id: str, *, now: float | None = None) -> Job:
        """A sent job's bundle is on its tester (renamed into queue/, or already run
        there): no longer in doubt. Confirming twice changes nothing."""
        now = time.time() if now is None else now
        with self._write() as db:
            job = self._fetch(db, job_id)
            self._expect(job, (JobState.SENT,), "confirm the sending of")
            if job.confirmed is None:
                db.execute("UPDATE jobs SET confirmed = ? WHERE id = ?", (now, job_id))
                job = self._fetch(db, job_id)
                insert_stages(db, job.id, job.attempts, {Stage.ON_TESTER: now})
        log.info("job %s is on %s", job_id, job.tester)
        return job

    def requeue_unsent(self, job_id: str, why: str) -> Job:
        """sent, in doubt -> queued, due at once: the bundle never reached the tester
        (the daemon died before the rename). Not a failed attempt and not the tester's
        fault, so nothing is counted and ``failed_on`` is unchanged."""
        with self._write() as db:
            job = self._fetch(db, job_id)
            self._expect(job, (JobState.SENT,), "send again")
            if job.confirmed is not None:
                raise JobStateError(f"cannot send job {job_id} again: {job.tester} confirmed it holds it")
            db.execute(
                "UPDATE jobs SET state = ?, deadline = NULL, sent = NULL, retry_at = NULL WHERE id = ?",
                (JobState.QUEUED.value, job_id),
            )
            job = self._fetch(db, job_id)
        log.info("job %s never reached %s (%s): queued again", job_id, job.tester, why)
        return job

    def record_failure(
        self, job_id: str, reason: str, *, max_attempts: int, tester: str | None = None, retry_delay: float = 0.0,
        now: float | None = None,
    ) -> Job:
        """One attempt failed: back to ``queued`` with ``attempts + 1``, or ``error``
        once ``max_attempts`` attempts have failed. Every reason is kept.

        ``tester`` is the tester that failed (default: the job's current one); it is
        added to :attr:`Job.failed_on` so the retry can avoid it. The job is not
        dispatched again before ``retry_delay`` seconds, so a tester that is down for a
        minute does not use up every attempt in a fraction of a second."""
        now = time.time() if now is None else now
        with self._write() as db:
            job = self._fetch(db, job_id)
            self._expect(job, ACTIVE, "record a failure of")
            tester = tester or job.tester
            attempts = job.attempts + 1
            text = f"attempt {attempts}" + (f" on {tester}" if tester else "") + f": {reason}"
            reasons = [*job.reasons, text]
            failed_on = [*job.failed_on, tester] if tester and tester not in job.failed_on else list(job.failed_on)
            state = JobState.ERROR if attempts >= max_attempts else JobState.QUEUED
            db.execute(
                "UPDATE jobs SET state = ?, attempts = ?, reasons = ?, failed_on = ?, last_error = ?,"
                " deadline = NULL, finished = ?, retry_at = ? WHERE id = ?",
                (state.value, attempts, json.dumps(reasons), json.dumps(failed_on), reason,
                 now if state is JobState.ERROR else None, now + retry_delay if retry_delay > 0 else None, job_id),
            )
            job = self._fetch(db, job_id)
        log.warning("job %s %s: %s", job_id, "failed for good" if state is JobState.ERROR else "will be resent", text)
        return job

    def mark_done(self, job_id: str, *, tester: str | None = None, now: float | None = None,
                  stages: Mapping[Stage, float] | None = None) -> Job:
        """sent -> done. With ``tester``, refuse unless the job was sent to that
        tester (a late ``notify`` from a tester that already lost the job). ``stages``: the
        tester's and the landing's moments of this attempt, recorded with it."""
        now = time.time() if now is None else now
        with self._write() as db:
            job = self._fetch(db, job_id)
            self._expect(job, (JobState.SENT,), "finish")
            if tester is not None and job.tester != tester:
                raise JobStateError(f"cannot finish job {job_id}: it was sent to {job.tester}, not {tester}")
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, deadline = NULL WHERE id = ?",
                (JobState.DONE.value, now, job_id),
            )
            job = self._fetch(db, job_id)
            insert_stages(db, job.id, job.attempts, stages or {})
        log.info("job %s done on %s", job_id, job.tester)
        return job

    def mark_error(self, job_id: str, reason: str, *, now: float | None = None) -> Job:
        """queued/sent -> error at once (a failure no retry can mend, e.g. a bad bundle)."""
        now = time.time() if now is None else now
        with self._write() as db:
            job = self._fetch(db, job_id)
            self._expect(job, ACTIVE, "fail")
            db.execute(
                "UPDATE jobs SET state = ?, reasons = ?, last_error = ?, finished = ?, deadline = NULL WHERE id = ?",
                (JobState.ERROR.value, json.dumps([*job.reasons, reason]), reason, now, job_id),
            )
            job = self._fetch(db, job_id)
        log.warning("job %s failed for good: %s", job_id, reason)
        return job

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`NotFound` if there is none."""
        with self._lock:
            return self._fetch(self._db, job_id)

    def find(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def find_active(self, course: str, assignment: str, account: str, submission: str) -> Job | None:
        """The newest queued or sent job of one submission, if there is one."""
        rows = self._read(
            "SELECT * FROM jobs WHERE course = ? AND assignment = ? AND account = ? AND submission = ?"
            " AND state IN (?, ?) ORDER BY created DESC, id DESC LIMIT 1",
            (course, assignment, account, submission, *(s.value for s in ACTIVE)),
        )
        return Job.from_row(rows[0]) if rows else None

    def to_dispatch(self, limit: int | None = None, now: float | None = None) -> list[Job]:
        """Queued jobs due now (not waiting out a retry delay), oldest first."""
        now = time.time() if now is None else now
        sql = "SELECT * FROM jobs WHERE state = ? AND (retry_at IS NULL OR retry_at <= ?) ORDER BY created, id"
        params: tuple = (JobState.QUEUED.value, now)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [Job.from_row(r) for r in self._read(sql, params)]

    def stages(self, job_ids: list[str]) -> dict[str, list[StageMark]]:
        """The recorded stages of each job in ``job_ids`` (those with none are absent), by
        attempt and time as recorded; names this code does not know are left out."""
        found: dict[str, list[StageMark]] = {}
        with self._lock:
            rows = select_stages(self._db, job_ids)
        for row in rows:
            if row["stage"] in _STAGE_NAMES:
                found.setdefault(row["job_id"], []).append(StageMark(Stage(row["stage"]), row["at"], row["attempt"]))
        return found

    def next_due(self, after: float = 0.0) -> float | None:
        """When the dispatcher next has work unasked: the first retry time or notify deadline after ``after``."""
        q, s = JobState.QUEUED.value, JobState.SENT.value
        return self._read(f"SELECT MIN(CASE state WHEN '{q}' THEN retry_at ELSE deadline END) FROM jobs WHERE"
                          f" (state = '{q}' AND retry_at > ?) OR (state = '{s}' AND deadline > ?)", (after, after))[0][0]

    def in_flight(self, tester: str | None = None) -> list[Job]:
        """Sent jobs (all, or those on ``tester``), oldest sent first."""
        if tester is None:
            rows = self._read("SELECT * FROM jobs WHERE state = ? ORDER BY sent, id", (JobState.SENT.value,))
        else:
            rows = self._read(
                "SELECT * FROM jobs WHERE state = ? AND tester = ? ORDER BY sent, id", (JobState.SENT.value, tester)
            )
        return [Job.from_row(r) for r in rows]

    def in_doubt(self) -> list[Job]:
        """Sent jobs whose bundle was never confirmed on the tester, oldest sent first:
        what a daemon killed mid-upload left; resolved at the next start."""
        rows = self._read("SELECT * FROM jobs WHERE state = ? AND confirmed IS NULL ORDER BY sent, id",
                          (JobState.SENT.value,))
        return [Job.from_row(r) for r in rows]

    def overdue(self, now: float | None = None) -> list[Job]:
        """Sent jobs whose notify deadline has passed."""
        now = time.time() if now is None else now
        rows = self._read(
            "SELECT * FROM jobs WHERE state = ? AND deadline < ? ORDER BY deadline, id", (JobState.SENT.value, now)
        )
        return [Job.from_row(r) for r in rows]

    def active(self) -> list[Job]:
        """Every waiting (queued) and running (sent) job, oldest first: for ``status()``."""
        rows = self._read(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY created, id", tuple(s.value for s in ACTIVE)
        )
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        found = {JobState(state): n for state, n in rows}
        return {state: found.get(state, 0) for state in JobState}

    def tally(self) -> dict[tuple[str, str, JobState], int]:
        """How many jobs each course's assignment has in each state it has any in (the
        metrics' ``vmchecker_jobs``, read at each scrape)."""
        rows = self._read("SELECT course, assignment, state, COUNT(*) FROM jobs GROUP BY course, assignment, state")
        return {(course, assignment, JobState(state)): n for course, assignment, state, n in rows}

    # ------------------------------------------------------------------ estimates

    def load_estimates(self, course: str) -> dict[tuple[str, str], Estimate]:
        """A course's estimates: ``(tester, assignment) -> Estimate``."""
        rows = self._read(
            "SELECT tester, assignment, mean, count, measured, measured_count, penalised_at"
            " FROM estimates WHERE course = ?",
            (course,),
        )
        return {
            (r["tester"], r["assignment"]): Estimate(
                r["mean"], r["count"], r["measured"], r["measured_count"], r["penalised_at"]
            )
            for r in rows
        }

    def save_estimate(self, course: str, tester: str, assignment: str, estimate: Estimate) -> None:
        """Store one estimate (replacing the previous value)."""
        e = estimate
        with self._write() as db:
            db.execute(
                "INSERT INTO estimates (course, tester, assignment, mean, count, measured, measured_count,"
                " penalised_at, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (course, tester, assignment) DO UPDATE SET mean = excluded.mean,"
                " count = excluded.count, measured = excluded.measured, measured_count = excluded.measured_count,"
                " penalised_at = excluded.penalised_at, updated = excluded.updated",
                (course, tester, assignment, e.mean, e.count, e.measured, e.measured_count, e.penalised_at, time.time()),
            )

    def journal_mode(self) -> str:
        """SQLite's journal mode for this file (``wal``)."""
        return self._read("PRAGMA journal_mode")[0][0]
