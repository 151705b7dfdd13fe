"""Who is a student, on the web: only a course's students and admins see it and upload.

The course of the web fixtures lists ``student`` and ``bob``; ``mallory`` has a login
(the password file) and is listed nowhere. The course config is read on every request,
so a test changes who takes part by rewriting it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.util import zip_bytes
from tests.web import slapd
from tests.web.conftest import login, page_token
from tests.web.helpers import HELLO, write_users
from vmchecker import config
from vmchecker.repo import Repository
from vmchecker.storer.web import create_app
from vmchecker.storer.web.ldapauth import LdapAuthenticator, LdapSettings
from vmchecker.storer.web.passwords import hash_password
from vmchecker.storer.web.throttle import Limits

MALLORY = "mallory-pw"
LDAP_USERS = {"carol": "carol-pw", "dave": "dave-pw", "erin": "erin-pw"}


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """The fixtures' password file, and mallory: can log in, a student of no course."""
    path = write_users(tmp_path / "users")
    with open(path, "a") as f:
        f.write(f"mallory:{hash_password(MALLORY)}\n")
    return path


def set_course(course: config.CourseConfig, **keys: object) -> None:
    """Rewrite the ``course:`` section of the course's config (None removes a key)."""
    data = yaml.safe_load(course.path.read_text())
    data["course"].update(keys)
    data["course"] = {k: v for k, v in data["course"].items() if v is not None}
    course.path.write_text(yaml.safe_dump(data, sort_keys=False))


def upload_form(client: FlaskClient) -> str:
    """Upload through the page's form; the flashed message on the page it leads to."""
    token = page_token(client, "/courses")
    response = client.post("/courses/so/assignments/1-hello/upload", follow_redirects=True,
                           data={"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip"), "csrf_token": token},
                           content_type="multipart/form-data")
    return f"{response.status_code} {response.get_data(as_text=True)}"


def upload_api(client: FlaskClient):
    token = client.get("/api/session").get_json()["csrf_token"]
    return client.post("/api/courses/so/assignments/1-hello/upload", headers={"X-CSRF-Token": token},
                       data={"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip")},
                       content_type="multipart/form-data")


@pytest.fixture
def mallory(app: Flask) -> FlaskClient:
    c = app.test_client()
    assert login(c, "mallory", MALLORY).status_code == 302
    return c


def test_a_non_student_sees_nothing_and_cannot_upload(mallory: FlaskClient, web_course) -> None:
    assert "/courses/so" not in mallory.get("/courses").get_data(as_text=True)
    assert mallory.get("/api/courses").get_json() == []
    for path in ("/courses/so", "/courses/so/assignments/1-hello", "/courses/so/grades",
                 "/courses/so/assignments/1-hello/accounts/bob"):
        page = mallory.get(path)
        assert page.status_code == 403, path
        assert "not a student of course so" in page.get_data(as_text=True)
    for path in ("/api/courses/so/assignments", "/api/courses/so/assignments/1-hello/results",
                 "/api/courses/so/grades"):
        assert mallory.get(path).status_code == 403, path
    assert upload_form(mallory).startswith("403 ")
    refused = upload_api(mallory)
    assert refused.status_code == 403 and "not a student of course so" in refused.get_json()["error"]
    assert Repository(web_course).accounts("1-hello") == []


def test_a_listed_student_and_an_admin_take_part(student: FlaskClient, admin: FlaskClient, web_course) -> None:
    assert "/courses/so" in student.get("/courses").get_data(as_text=True)
    assert "Your archive was saved." in upload_form(student)
    assert [c["id"] for c in admin.get("/api/courses").get_json()] == ["so"]
    assert upload_api(admin).status_code == 201      # an admin need not be a student
    assert Repository(web_course).accounts("1-hello") == ["alice", "student"]


def test_open_to_all_users_opens_the_course(mallory: FlaskClient, web_course) -> None:
    set_course(web_course, students=None, open_to_all_users=True)
    assert [c["id"] for c in mallory.get("/api/courses").get_json()] == ["so"]
    assert upload_api(mallory).status_code == 201
    assert Repository(web_course).accounts("1-hello") == ["mallory"]


def test_a_students_file_names_students(mallory: FlaskClient, student: FlaskClient, web_course) -> None:
    (web_course.root / "students.txt").write_text("# the 2026 class\nmallory\n\nbob  # late enrolment\n")
    set_course(web_course, students=None, students_file="students.txt")
    assert upload_api(mallory).status_code == 201
    assert student.get("/courses/so").status_code == 403    # no longer listed anywhere
    assert Repository(web_course).accounts("1-hello") == ["mallory"]


def test_a_course_with_no_students_is_its_admins_alone(student: FlaskClient, admin: FlaskClient,
                                                       web_course) -> None:
    set_course(web_course, students=None)
    assert student.get("/api/courses").get_json() == []
    assert upload_api(student).status_code == 403
    assert admin.get("/courses/so").status_code == 200


# --------------------------------------------------------------------------- LDAP group

reason = slapd.available()
needs_slapd = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def server() -> Iterator[slapd.Slapd]:
    with slapd.Slapd(LDAP_USERS, groups={"so-students": ["carol"]}, posix_groups={"so-posix": ["erin"]}) as s:
        s.start()
        yield s


def ldap_app(tmp_path: Path, url: str) -> Flask:
    return create_app(tmp_path / "global.yaml", None, LdapSettings(url, slapd.PEOPLE, timeout=3.0),
                      secret_key="k" * 32, throttle_limits=Limits(per_account=50, per_address=50))


@needs_slapd
@pytest.mark.parametrize("group, member, other", [("so-students", "carol", "dave"), ("so-posix", "erin", "carol")])
def test_an_ldap_group_member_is_a_student(server: slapd.Slapd, tmp_path: Path, web_course, group: str,
                                           member: str, other: str) -> None:
    """groupOfNames (``member``: the user's DN) and posixGroup (``memberUid``: the name)."""
    set_course(web_course, students=None, students_ldap_group=server.group_dn(group))
    app = ldap_app(tmp_path, server.url)
    inside, outside = app.test_client(), app.test_client()
    assert login(inside, member, LDAP_USERS[member]).status_code == 302
    assert login(outside, other, LDAP_USERS[other]).status_code == 302
    assert [c["id"] for c in inside.get("/api/courses").get_json()] == ["so"]
    assert upload_api(inside).status_code == 201
    assert outside.get("/api/courses").get_json() == []
    assert upload_api(outside).status_code == 403
    assert Repository(web_course).accounts("1-hello") == [member]


@needs_slapd
def test_group_answers_are_reused_and_outlast_an_ldap_outage(tmp_path: Path) -> None:
    with slapd.Slapd(LDAP_USERS, groups={"so-students": ["carol"]}) as own:   # stopped below: its own
        own.start()
        ldap = LdapAuthenticator(LdapSettings(own.url, slapd.PEOPLE, timeout=2.0))
        group = own.group_dn("so-students")
        assert ldap.in_group(group, "carol") and not ldap.in_group(group, "dave")
        assert not ldap.in_group(group, "Carol")             # LDAP's spelling is the account
        assert not ldap.in_group(own.group_dn("missing"), "carol")
        own.stop()
        ldap.clock = lambda: 10**12                         # every answer is old now
        assert ldap.in_group(group, "carol")                # LDAP is down: the last answer stands
        assert not ldap.in_group(group, "dave")
        assert not ldap.in_group(group, "erin")             # never answered: not a member
