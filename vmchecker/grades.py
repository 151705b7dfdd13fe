"""The course's grades database: a cache of the repository, never the source of truth.

One SQLite file per course (``<course root>/vmchecker.db``) with one table, one row per
(assignment, account): the ``current`` submission's status or grade, the short reason
for points lost, late days, penalty and upload time. A team's submission (its folder is
the team's name, :mod:`vmchecker.teams`) gives one row to each member, naming the team:
the grade counts for every member, its late days and penalty computed once. The
repository is what counts:
:func:`rebuild` recomputes every row from it, so deleting the database loses nothing
(and a table of an older layout is simply dropped and made again). :func:`update`
refreshes one row when results arrive.

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction, so two processes
rebuilding at once serialise on SQLite's lock and each leaves a complete table;
readers use WAL and never see half a rebuild.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from vmchecker import penalty, repo
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime, parse_datetime
from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS grades (
    assignment  TEXT NOT NULL,
    account     TEXT NOT NULL,
    submission  TEXT NOT NULL,
    upload_time TEXT NOT NULL,
    status      TEXT NOT NULL,
    grade       REAL,
    late_days   INTEGER NOT NULL,
    penalty     REAL NOT NULL,
    adjustments REAL NOT NULL,
    reason      TEXT,
    team        TEXT NOT NULL,
    PRIMARY KEY (assignment, account)
)
"""
_COLUMNS = ("assignment", "account", "submission", "upload_time", "status",
            "grade", "late_days", "penalty", "adjustments", "reason", "team")


@dataclass(frozen=True)
class GradeRow:
    """One account's standing on one assignment (its ``current`` submission)."""

    assignment: str
    account: str
    submission: str            # folder name of the current submission
    upload_time: dt.datetime
    status: str                # saved, queued, running, done, error
    grade: float | None        # None unless status is done
    late_days: int
    penalty: float
    adjustments: float
    reason: str | None = None  # why points were lost (or that a grader is awaited)
    team: str = ""             # the team whose submission it is; "" for the account's own

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["upload_time"] = format_datetime(self.upload_time)
        return data

    def _values(self) -> tuple:
        return tuple(self.to_dict()[c] for c in _COLUMNS)


def row_for(course: CourseConfig, submission: repo.Submission) -> GradeRow:
    """Compute a submission's row from its files and the course config."""
    result = penalty.compute(course.assignment(submission.assignment), course.course.holidays,
                             submission.upload_time, submission.grade_text())
    return GradeRow(
        assignment=submission.assignment, account=submission.account,
        submission=submission.name, upload_time=submission.upload_time,
        status=result.status.value, grade=result.grade, late_days=result.late_days,
        penalty=result.penalty, adjustments=result.adjustments, reason=result.reason,
    )


def rows_for(course: CourseConfig, submission: repo.Submission) -> list[GradeRow]:
    """The rows a submission gives: one per member for a team's, one for an account's
    own; none for the own folder of an account that now submits with a team for the
    assignment (its grade is the team's; its earlier uploads stay in the repository)."""
    teams = course.teams
    if teams.owner(submission.assignment, submission.account) != submission.account:
        log.debug("%s: %s submits with team %s for %s, so this earlier upload of its own is not graded",
                  submission.path, submission.account, teams.owner(submission.assignment, submission.account),
                  submission.assignment)
        return []
    row = row_for(course, submission)
    team = teams.team_for(submission.assignment, submission.account)
    if team is None:
        return [row]
    return [dataclasses.replace(row, account=member, team=team.name) for member in team.members]


@contextlib.contextmanager
def _connect(course: CourseConfig) -> Iterator[sqlite3.Connection]:
    """A connection with the schema in place; closed on exit.

    ``isolation_level=None``: transactions are opened explicitly, so each write is
    exactly one transaction we chose."""
    path = course.database
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise VmcheckerError(f"{path}: cannot open the grades database: {exc}") from None
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        _ensure_schema(conn)
        yield conn
    except sqlite3.Error as exc:
        raise VmcheckerError(f"{path}: grades database error: {exc}") from None
    finally:
        conn.close()


def _ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table, or make it again if an older version left other columns: it
    is a cache, the next rebuild fills it."""
    def columns() -> tuple[str, ...]:
        return tuple(row[1] for row in conn.execute("PRAGMA table_info(grades)"))

    if columns() == _COLUMNS:
        return
    with _transaction(conn):
        found = columns()   # again, under the lock: another process may have done it
        if found == _COLUMNS:
            return
        if found:
            log.info("grades table of an older layout (%s): made again", ", ".join(found))
            conn.execute("DROP TABLE IF EXISTS grades")
        conn.execute(_SCHEMA)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _current_submissions(course: CourseConfig) -> Iterator[repo.Submission]:
    """Every account's current submission; a damaged folder is logged and skipped
    so one bad submission-config does not hide the whole course's grades."""
    repository = repo.Repository(course)
    for assignment in sorted(course.assignments):
        for account in repository.accounts(assignment):
            try:
                sub = repository.current(assignment, account)
            except (VmcheckerError, OSError) as exc:
                log.warning("skipping %s/%s: %s", assignment, account, exc)
                continue
            if sub is not None:
                yield sub


def collect(course: CourseConfig) -> list[GradeRow]:
    """Rows for every current submission, computed from the repository (no database)."""
    return [row for sub in _current_submissions(course) for row in rows_for(course, sub)]


def _insert(conn: sqlite3.Connection, rows: Iterable[GradeRow]) -> None:
    conn.executemany(
        f"INSERT OR REPLACE INTO grades ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [r._values() for r in rows],
    )


def rebuild(course: CourseConfig) -> list[GradeRow]:
    """Recompute the whole table from the repository, in one transaction."""
    found = collect(course)
    with _connect(course) as conn, _transaction(conn):
        conn.execute("DELETE FROM grades")
        _insert(conn, found)
    log.debug("rebuilt %s: %d rows", course.database, len(found))
    return found


def update(course: CourseConfig, submission: repo.Submission) -> GradeRow:
    """Refresh the rows of ``submission``'s assignment and account (every member's, for
    a team) and return the first (for an upload no longer graded, its row, stored nowhere).

    The rows always describe the account's *current* submission: if a newer upload
    replaced ``submission`` before its results arrived, the newer one is used. A
    superseded upload of a team member's own is stored nowhere (:func:`rows_for`)."""
    current = repo.Repository(course).current(submission.assignment, submission.account) or submission
    found = rows_for(course, current)
    if not found:
        return row_for(course, current)
    with _connect(course) as conn, _transaction(conn):
        _insert(conn, found)
    return found[0]


def _from_db(record: sqlite3.Row) -> GradeRow:
    data = dict(zip(_COLUMNS, record, strict=True))
    data["upload_time"] = parse_datetime(data["upload_time"])
    return GradeRow(**data)


def rows(course: CourseConfig, assignment: str | None = None, account: str | None = None) -> list[GradeRow]:
    """Read the table (as last rebuilt or updated), optionally for one assignment and one
    account (a member, or a team: its members' rows)."""
    where, args = [], []
    if assignment is not None:
        where.append("assignment = ?")
        args.append(assignment)
    if account is not None:
        where.append("(account = ? OR team = ?)")
        args.extend([account, account])
    sql = f"SELECT {', '.join(_COLUMNS)} FROM grades"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = {a.id: (a.order, a.id) for a in course.assignments.values()}
    with _connect(course) as conn:
        found = [_from_db(r) for r in conn.execute(sql, args)]
    return sorted(found, key=lambda r: (r.account, order.get(r.assignment, (0, r.assignment))))
