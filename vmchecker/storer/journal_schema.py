"""The job journal's file: its tables, their version, and how an older file is brought up to date.

Kept apart from :mod:`vmchecker.storer.journal` so that module reads as the job's
transitions alone, and so a change of the file's format (a column, its migration, the
version bump) is made in one place. Imports run one way: the journal uses this module,
never the reverse, and nothing here knows what a job's states mean.

Durability: ``synchronous=FULL``. In WAL mode ``NORMAL`` may lose the last commits
on a power cut, and a job whose id the caller already received must not vanish
("nothing is lost"); FULL costs one fsync per transition.

Migrations add columns and tables only, so a file of any older version opens: version 1
gains ``retry_at``; version 2 gains ``confirmed`` with every ``sent`` job in doubt, which
is the safe reading: the next start looks; version 3 gains the ``stages`` table (a job's
timeline: when each :class:`~vmchecker.contract.Stage` happened, per attempt), empty for
the jobs it had, whose timeline is then read from their own columns. A file newer than
this code is refused rather than written with a schema it does not know.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmchecker.errors import VmcheckerError

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL,
    course      TEXT NOT NULL,
    assignment  TEXT NOT NULL,
    account     TEXT NOT NULL,
    submission  TEXT NOT NULL,
    machine     TEXT NOT NULL,
    tester      TEXT,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    sent        REAL,
    finished    REAL,
    deadline    REAL,
    reasons     TEXT NOT NULL DEFAULT '[]',
    failed_on   TEXT NOT NULL DEFAULT '[]',
    last_error  TEXT NOT NULL DEFAULT '',
    retry_at    REAL,
    confirmed   REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE INDEX IF NOT EXISTS jobs_submission ON jobs (course, assignment, account, submission);
CREATE TABLE IF NOT EXISTS estimates (
    course      TEXT NOT NULL,
    tester      TEXT NOT NULL,
    assignment  TEXT NOT NULL,
    mean        REAL NOT NULL,
    count       INTEGER NOT NULL,
    measured    REAL,
    measured_count INTEGER NOT NULL DEFAULT 0,
    penalised_at REAL,
    updated     REAL NOT NULL,
    PRIMARY KEY (course, tester, assignment)
);
CREATE TABLE IF NOT EXISTS stages (
    job_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    stage       TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (job_id, attempt, stage)
) WITHOUT ROWID;
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the journal file in WAL mode, refusing one newer than this code.

    The connection is shared by every thread of the daemon (the caller serialises it
    with a lock), runs in autocommit so each transaction is an explicit ``BEGIN
    IMMEDIATE``, and waits ``BUSY_TIMEOUT_MS`` for another process holding the file
    instead of failing. The tables are not touched here: :func:`migrate` does that,
    inside the caller's write transaction."""
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise VmcheckerError(f"{path}: SQLite refused WAL mode (got {mode!r})")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise VmcheckerError(f"{path}: journal schema version {version} is newer than this vmchecker ({SCHEMA_VERSION})")
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or add what an older file lacks, and stamp the version.

    Call inside a write transaction, so a half-migrated file is never left behind."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "retry_at" not in columns:  # a version 1 journal
        db.execute("ALTER TABLE jobs ADD COLUMN retry_at REAL")
    if "confirmed" not in columns:  # version 2 or older: every sent job is in doubt
        db.execute("ALTER TABLE jobs ADD COLUMN confirmed REAL")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def insert_stages(db: sqlite3.Connection, job_id: str, attempt: int, stages: Mapping[str, float | None]) -> None:
    """Record when stages of one attempt of a job happened (a stage again: the later time
    wins; None: not recorded). Call inside the caller's write transaction."""
    db.executemany("INSERT OR REPLACE INTO stages (job_id, attempt, stage, at) VALUES (?, ?, ?, ?)",
                   [(job_id, attempt, str(stage), at) for stage, at in stages.items() if at is not None])


def select_stages(db: sqlite3.Connection, job_ids: Sequence[str]) -> list[sqlite3.Row]:
    """The stage rows of ``job_ids`` (a page's worth: rpc.MAX_TIMELINES), by job, attempt, time."""
    marks = ",".join("?" * len(job_ids))
    return db.execute(f"SELECT * FROM stages WHERE job_id IN ({marks}) ORDER BY job_id, attempt, at",
                      tuple(job_ids)).fetchall()
