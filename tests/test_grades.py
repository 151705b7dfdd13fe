"""The grades database: rebuilt from a real repository folder, updated row by row,
safe under concurrent rebuilds; and the vmchecker-grades command."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.util import HELLO_C, write_course, zip_bytes
from vmchecker import config, fsutil, grades, repo, submit
from vmchecker.cli import grades as cli_grades
from vmchecker.contract import GRADE_VMR

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = dt.datetime(2026, 3, 1, 23, 55)
DAY = dt.timedelta(days=1)


def store(course: config.CourseConfig, assignment: str, account: str, upload_time: dt.datetime,
          grade: str | None = None) -> repo.Submission:
    """Submit an archive the way graders do; ``grade`` then becomes results/grade.vmr."""
    sub = submit.submit(course, assignment, account, zip_bytes({"hello.c": HELLO_C}),
                        upload_time=upload_time, skip_time_checks=True)
    if grade is not None:
        fsutil.write_atomic(sub.results_dir / GRADE_VMR, grade)
    return sub


def by_key(rows):
    return {(r.assignment, r.account): r for r in rows}


@pytest.fixture
def two_assignments(tmp_path, monkeypatch) -> config.CourseConfig:
    """Course ``so`` with a second assignment whose late interval crosses the holiday
    (2026-04-10 .. 2026-04-20)."""
    path = write_course(tmp_path, extra={"assignments": {
        "2-shell": {"deadline": "2026-04-09 00:00:00", "machine": "linux", "order": 2}}})
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    return config.load_course(path)


# --------------------------------------------------------------------------- rebuild


def test_rebuild_empty_repository(course):
    assert grades.rebuild(course) == []
    assert course.database.exists()
    assert grades.rows(course) == []


def test_rebuild_computes_each_current_submission(two_assignments):
    course = two_assignments
    store(course, "1-hello", "ana", DEADLINE - DAY, "done\n")
    store(course, "1-hello", "bob", DEADLINE + 2 * DAY + dt.timedelta(seconds=1), "-1: leak\n+0.5: tests\n")
    store(course, "1-hello", "cid", DEADLINE + DAY, "queued\n")
    store(course, "1-hello", "dan", DEADLINE - DAY)                  # no grade.vmr yet
    # 2-shell: 12 days after the deadline, 10 of them holidays -> 2 days late
    store(course, "2-shell", "ana", dt.datetime(2026, 4, 21, 0, 0), "done")

    rows = by_key(grades.rebuild(course))
    assert len(rows) == 5
    ana = rows["1-hello", "ana"]
    assert (ana.status, ana.grade, ana.late_days, ana.penalty) == ("done", 10.0, 0, 0.0)
    bob = rows["1-hello", "bob"]
    assert (bob.status, bob.late_days, bob.penalty, bob.adjustments, bob.grade) == ("done", 3, 2.0, -0.5, 7.5)
    cid = rows["1-hello", "cid"]
    assert (cid.status, cid.grade, cid.late_days, cid.penalty) == ("queued", None, 1, 0.5)
    assert rows["1-hello", "dan"].status == "saved" and rows["1-hello", "dan"].grade is None
    shell = rows["2-shell", "ana"]
    assert (shell.late_days, shell.penalty, shell.grade) == (2, 1.0, 9.0)
    assert shell.upload_time == dt.datetime(2026, 4, 21)

    stored = grades.rows(course)
    assert by_key(stored) == rows
    # sorted by account, then assignment order
    assert [(r.account, r.assignment) for r in stored][:2] == [("ana", "1-hello"), ("ana", "2-shell")]
    assert grades.rows(course, assignment="2-shell") == [shell]
    assert grades.rows(course, account="bob") == [bob]


def test_reason_beside_a_grade_below_the_maximum(course):
    store(course, "1-hello", "ana", DEADLINE - DAY, "-10: the build failed (exit status 2)\n# -5: test 2\n")
    store(course, "1-hello", "bob", DEADLINE - DAY, "+1: style\n-2: test 3 failed\n")
    store(course, "1-hello", "cid", DEADLINE + DAY, "done\n")                 # late: no line to quote
    store(course, "1-hello", "dan", DEADLINE - DAY, "-1: \x1b[31mred\n")      # printed on one clean line
    rows = by_key(grades.rebuild(course))
    assert (rows["1-hello", "ana"].grade, rows["1-hello", "ana"].reason) == (0, "the build failed (exit status 2)")
    assert (rows["1-hello", "bob"].grade, rows["1-hello", "bob"].reason) == (9, "test 3 failed")
    assert rows["1-hello", "cid"].reason is None
    assert by_key(grades.rows(course)) == rows
    out = io.StringIO()
    cli_grades.render(grades.rows(course), "table", out)
    assert "\x1b" not in out.getvalue() and "[31mred" in out.getvalue()


def test_submit_only_waits_for_a_grader(tmp_path, monkeypatch):
    path = write_course(tmp_path, extra={"assignments": {"1-hello": {"submit_only": True}}})
    course = config.load_course(path)
    store(course, "1-hello", "ana", DEADLINE - DAY)
    store(course, "1-hello", "bob", DEADLINE - DAY, "-3: no report\n")     # a grader wrote it
    rows = by_key(grades.rebuild(course))
    assert (rows["1-hello", "ana"].status, rows["1-hello", "ana"].reason) == ("saved", "waiting for a grader")
    assert (rows["1-hello", "bob"].grade, rows["1-hello", "bob"].reason) == (7, "no report")


def test_a_table_of_an_older_layout_is_made_again(course):
    with sqlite3.connect(course.database) as conn:
        conn.execute("CREATE TABLE grades (assignment TEXT, account TEXT, grade REAL)")
        conn.execute("INSERT INTO grades VALUES ('1-hello', 'old', 1)")
    store(course, "1-hello", "ana", DEADLINE - DAY, "done")
    assert [r.account for r in grades.rebuild(course)] == ["ana"]
    assert [r.account for r in grades.rows(course)] == ["ana"]


def test_rebuild_follows_current_and_forgets_what_is_gone(course):
    store(course, "1-hello", "ana", DEADLINE - 2 * DAY, "-3: broken\n")
    newer = store(course, "1-hello", "ana", DEADLINE - DAY, "done")
    store(course, "1-hello", "bob", DEADLINE - DAY, "done")
    rows = by_key(grades.rebuild(course))
    assert rows["1-hello", "ana"].submission == newer.name
    assert rows["1-hello", "ana"].grade == 10.0

    shutil.rmtree(course.repository / "1-hello" / "bob")
    assert set(by_key(grades.rebuild(course))) == {("1-hello", "ana")}
    assert set(by_key(grades.rows(course))) == {("1-hello", "ana")}


def test_damaged_submission_is_skipped_not_fatal(course, caplog):
    store(course, "1-hello", "ana", DEADLINE - DAY, "done")
    bad = store(course, "1-hello", "bob", DEADLINE - DAY, "done")
    bad.config_path.write_text("course: so\n")            # no upload_time, no account
    with caplog.at_level(logging.WARNING, logger="vmchecker.grades"):
        rows = grades.rebuild(course)
    assert [r.account for r in rows] == ["ana"]
    assert "1-hello/bob" in caplog.text


def test_database_is_a_cache(course):
    store(course, "1-hello", "ana", DEADLINE - DAY, "done")
    grades.rebuild(course)
    course.database.unlink()
    for extra in ("-wal", "-shm"):
        Path(str(course.database) + extra).unlink(missing_ok=True)
    assert grades.rows(course) == []
    assert [r.account for r in grades.rebuild(course)] == ["ana"]


# --------------------------------------------------------------------------- update


def test_update_refreshes_one_row(course):
    sub = store(course, "1-hello", "ana", DEADLINE + DAY, "running")
    store(course, "1-hello", "bob", DEADLINE - DAY, "done")
    grades.rebuild(course)
    fsutil.write_atomic(sub.results_dir / GRADE_VMR, "-2: no tests pass\n")
    row = grades.update(course, sub)
    assert (row.status, row.grade, row.penalty) == ("done", 7.5, 0.5)
    assert by_key(grades.rows(course))["1-hello", "ana"] == row
    assert by_key(grades.rows(course))["1-hello", "bob"].grade == 10.0


def test_update_for_a_replaced_submission_keeps_the_current_one(course):
    old = store(course, "1-hello", "ana", DEADLINE - 2 * DAY, "running")
    new = store(course, "1-hello", "ana", DEADLINE - DAY, "queued")
    fsutil.write_atomic(old.results_dir / GRADE_VMR, "done")   # late results of the old upload
    row = grades.update(course, old)
    assert (row.submission, row.status) == (new.name, "queued")
    assert grades.rows(course) == [row]


# --------------------------------------------------------------------------- concurrency


def _rebuild_many(config_path: str, times: int) -> int:
    course = config.load_course(config_path)
    for _ in range(times):
        grades.rebuild(course)
    return len(grades.rows(course))


def test_concurrent_rebuilds_and_readers(course):
    accounts = [f"student{i:02d}" for i in range(30)]
    for i, account in enumerate(accounts):
        store(course, "1-hello", account, DEADLINE - DAY + dt.timedelta(seconds=i), "done")
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if course.database.exists():
                try:
                    seen.append(len(grades.rows(course)))
                except Exception as exc:  # recorded, then asserted on
                    seen.append(-1)
                    raise AssertionError(exc) from exc

    reader = threading.Thread(target=read)
    reader.start()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            counts = pool.starmap(_rebuild_many, [(str(course.path), 5)] * 4)
    finally:
        stop.set()
        reader.join()
    assert counts == [30] * 4
    # a reader sees an empty table (before the first commit) or a complete one, never half
    assert seen and set(seen) <= {0, 30}
    with sqlite3.connect(course.database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM grades").fetchone() == (30,)


# --------------------------------------------------------------------------- command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmchecker.cli.grades", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def graded(two_assignments):
    store(two_assignments, "1-hello", "ana", DEADLINE - DAY, "done")
    store(two_assignments, "1-hello", "bob", DEADLINE + 2 * DAY + dt.timedelta(seconds=1), "-1: leak\n")
    store(two_assignments, "2-shell", "ana", dt.datetime(2026, 4, 8), "queued")
    return two_assignments


def test_cli_help():
    proc = _cli("--help")
    assert proc.returncode == 0
    for word in ("COURSE", "--format", "--assignment", "--account"):
        assert word in proc.stdout


def test_cli_table(graded):
    proc = _cli("so")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["account", "assignment", "status", "grade", "late", "days",
                                "penalty", "upload", "time", "reason"]
    assert lines[1].split() == ["ana", "1-hello", "done", "10", "0", "0", "2026-02-28", "23:55:00"]
    assert lines[2].split() == ["ana", "2-shell", "queued", "0", "0", "2026-04-08", "00:00:00"]
    assert lines[3].split() == ["bob", "1-hello", "done", "7", "3", "2", "2026-03-03", "23:55:01", "leak"]
    assert len(lines) == 4
    assert graded.database.exists()


def test_cli_csv(graded):
    proc = _cli("so", "--format", "csv", "--assignment", "1-hello")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["account"], r["grade"], r["late_days"], r["penalty"], r["reason"]) for r in rows] == [
        ("ana", "10", "0", "0", ""), ("bob", "7", "3", "2", "leak")]


def test_cli_json(graded):
    proc = _cli("so", "--format", "json", "--account", "ana")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [(d["assignment"], d["status"], d["grade"], d["reason"]) for d in data] == [
        ("1-hello", "done", 10.0, None), ("2-shell", "queued", None, None)]
    assert data[0]["upload_time"] == "2026-02-28 23:55:00"


def test_cli_errors(graded):
    proc = _cli("nope")
    assert proc.returncode == 4 and "no course 'nope'" in proc.stderr
    proc = _cli("so", "--assignment", "9-missing")
    assert proc.returncode == 4 and "no assignment '9-missing'" in proc.stderr
    proc = _cli("so", "--format", "xml")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
