"""What enters the guest, laid out so student code cannot reach the grade: the student's
files and the tests in job/, the course's scripts and programs apart in course/, an
empty results/; owners by name and modes as payload.py's docstring gives them."""

from __future__ import annotations

import io
import stat
import tarfile

from tests.executor.helpers import make_bundle
from vmchecker.executor import payload

STUDENT_FILES = {"build.sh/x": "a folder named like the build script", "expected.txt": "forged", "a/b.c": "kept",
                 "src/main.c": "int main;"}
TESTS = {"expected.txt": "real", "a/t.txt": "t", "data/in.txt": "1 2"}


def prepared(tmp_path, **machine) -> tuple:
    bundle_dir, info = make_bundle(tmp_path / "bundle", files=STUDENT_FILES, tests=TESTS, **machine)
    return bundle_dir, payload.prepare_payload(bundle_dir, tmp_path / "work", info.machine)


def members(load: payload.Payload) -> dict[str, tarfile.TarInfo]:
    buf = io.BytesIO()
    load.write(buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        return {m.name.removeprefix("./"): m for m in tf}


def test_tests_win_over_student_files_and_the_course_scripts_are_apart(tmp_path):
    bundle_dir, load = prepared(tmp_path)
    job, course = load.root / "job", load.root / "course"
    assert (job / "expected.txt").read_text() == "real"
    assert (job / "a" / "b.c").read_text() == "kept" and (job / "a" / "t.txt").read_text() == "t"
    assert (job / "build.sh" / "x").is_file()   # the student's, harmless: the build runs course/build.sh
    for name in ("build.sh", "run.sh"):
        assert (course / name).read_text() == (bundle_dir / name).read_text()
    assert (course / "student").read_text() == "student\n"
    assert {p.name for p in (course / "bin").iterdir()} == {"vmchecker-step", "vmchecker-run"}
    assert list((load.root / "results").iterdir()) == []


def test_student_files_travel_as_the_student_user_by_name(tmp_path):
    _, load = prepared(tmp_path)
    got = members(load)
    student = {n for n, m in got.items() if m.uname == "student"}
    assert student == {"job/build.sh", "job/build.sh/x", "job/a/b.c", "job/src", "job/src/main.c"}
    for name in student:   # the guest's passwd decides the id; an unknown name falls back to nobody, never root
        assert (got[name].uid, got[name].gid, got[name].gname) == (payload.NOBODY, payload.NOBODY, "student")


def test_everything_else_is_the_trusted_users_and_read_only_to_the_student(tmp_path):
    _, load = prepared(tmp_path)
    got = members(load)
    modes = {n: stat.S_IMODE(m.mode) for n, m in got.items() if m.uname != "student"}
    assert all((got[n].uid, got[n].gid, got[n].uname, got[n].gname) == (0, 0, "root", "root") for n in modes)
    assert modes == {
        ".": 0o755, "results": 0o700, "course": 0o755, "course/bin": 0o755,
        "course/build.sh": 0o444, "course/run.sh": 0o444, "course/student": 0o444,
        "course/bin/vmchecker-step": 0o555, "course/bin/vmchecker-run": 0o555,
        # the job folder and every test folder: anyone may add, only owners remove or rename
        "job": 0o1777, "job/a": 0o1777, "job/data": 0o1777,
        "job/expected.txt": 0o444, "job/a/t.txt": 0o444, "job/data/in.txt": 0o444,
    }


def test_the_users_are_the_machines(tmp_path):
    _, load = prepared(tmp_path, student_user="alice", guest_user="grader")
    got = members(load)
    assert (load.root / "course" / "student").read_text() == "alice\n"
    assert got["job/a/b.c"].uname == "alice" and got["job/a/t.txt"].uname == "grader"
    assert got["results"].uname == "grader"
