"""Who is a student: the course config's keys, their checks, and ``vmchecker-submit``.

The course of :func:`tests.util.write_course` lists ``bob`` and ``carol`` and has
``alice`` as its admin; nobody else takes part unless the config says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, make_zip, write_course
from vmchecker import config
from vmchecker.cli import submit as cli_submit
from vmchecker.errors import ConfigError
from vmchecker.repo import Repository

IN_WINDOW = "2026-02-20 10:00:00"
GROUP = "cn=so-students,ou=groups,dc=example,dc=org"


def course_with(tmp_path: Path, file_text: str | None = None, **course: object) -> config.CourseConfig:
    """The test course, its ``course:`` keys replaced by ``course`` (None removes one);
    ``file_text``: the content of its students.txt."""
    path = write_course(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["course"].update(course)
    data["course"] = {k: v for k, v in data["course"].items() if v is not None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if file_text is not None:
        (path.parent / "students.txt").write_text(file_text)
    return config.load_course(path)


def refusal(tmp_path: Path, file_text: str | None = None, **course: object) -> str:
    with pytest.raises(ConfigError) as caught:
        course_with(tmp_path, file_text, **course)
    return caught.value.message


# --------------------------------------------------------------------------- config


def test_closed_by_default(tmp_path: Path) -> None:
    course = course_with(tmp_path, students=None)
    assert course.admits("alice")                            # the admins
    assert not course.admits("bob")
    assert not course.admits("bob", in_group=lambda group, account: True)   # no group named: no lookup


def test_each_way_of_naming_students(tmp_path: Path) -> None:
    listed = course_with(tmp_path / "a")
    assert listed.admits("bob") and listed.admits("carol") and not listed.admits("mallory")
    assert not listed.admits("Bob")                          # accounts are spelled as they log in

    filed = course_with(tmp_path / "b", "# the 2026 class\ndan\n\n  erin   # late\n", students_file="students.txt")
    assert filed.listed_students == {"bob", "carol", "dan", "erin"}   # the list and the file together

    asked = []
    grouped = course_with(tmp_path / "c", students=None, students_ldap_group=GROUP)
    assert grouped.admits("dan", in_group=lambda group, account: asked.append((group, account)) or True)
    assert asked == [(GROUP, "dan")]
    assert not grouped.admits("dan")                         # no LDAP to ask (vmchecker-submit)

    everyone = course_with(tmp_path / "d", students=None, open_to_all_users=True)
    assert everyone.admits("mallory")


def test_clear_errors(tmp_path: Path) -> None:
    assert "students.txt: no such file (the path is relative to the course folder" in refusal(
        tmp_path / "a", students_file="students.txt")
    assert "course.students[1]: bad account name 'dan smith'" in refusal(tmp_path / "b", students=["bob", "dan smith"])
    assert "course.admins[0]: bad account name '../x'" in refusal(tmp_path / "c", admins=["../x"])
    message = refusal(tmp_path / "d", "dan\nerin/x\n", students_file="students.txt")
    assert "course.students_file (" in message and "students.txt line 2): bad account name 'erin/x'" in message
    assert "course.students_ldap_group: 'so-students' is not an LDAP DN" in refusal(
        tmp_path / "e", students_ldap_group="so-students")
    assert "course.open_to_all_users: is true, so every account" in refusal(tmp_path / "f", open_to_all_users=True)


# --------------------------------------------------------------------------- vmchecker-submit


def submit(course: config.CourseConfig, account: str, *options: str) -> int:
    archive = make_zip(course.root.parent / "hello.zip", {"hello.c": HELLO_C})
    return cli_submit.main(["--config", str(course.root.parent / "global.yaml"), "--upload-time", IN_WINDOW,
                            "--no-queue", *options, "so", "1-hello", account, str(archive)])


def test_submit_refuses_a_non_student(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    course = course_with(tmp_path)
    assert submit(course, "mallory") == 3
    err = capsys.readouterr().err
    assert err.startswith("vmchecker-submit: 'mallory' is not a student of course so: add it to course.students")
    assert str(course.path) in err
    assert Repository(course).accounts("1-hello") == []
    assert submit(course, "bob") == 0                        # a listed student
    assert submit(course, "alice") == 0                      # an admin
    assert Repository(course).accounts("1-hello") == ["alice", "bob"]


def test_submit_for_an_ldap_group_student(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vmchecker-submit has no LDAP: it says so, and a grader who checked says --not-listed."""
    course = course_with(tmp_path, students_ldap_group=GROUP)
    assert submit(course, "dan") == 3
    assert f"the course also admits the LDAP group {GROUP}" in capsys.readouterr().err
    assert submit(course, "dan", "--not-listed") == 0
    assert submit(course, "bob") == 0                        # the list still counts beside the group
    assert Repository(course).accounts("1-hello") == ["bob", "dan"]


def test_submit_open_to_all_users(tmp_path: Path) -> None:
    course = course_with(tmp_path, students=None, open_to_all_users=True)
    assert submit(course, "mallory") == 0
