"""The JSON API and CSRF protection of every state-changing request."""

from __future__ import annotations

import io

from flask import Flask
from flask.testing import FlaskClient

from tests.util import zip_bytes
from tests.web.conftest import login, page_token
from tests.web.helpers import HELLO, write_results
from vmchecker import config
from vmchecker.repo import Repository
from vmchecker.submit import submit

BASE = "/api/courses/so/assignments/1-hello"


def api_login(client: FlaskClient, name: str, password: str):
    return client.post("/api/login", json={"username": name, "password": password})


def archive() -> dict:
    return {"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip")}


# --------------------------------------------------------------------------- CSRF


def test_forms_without_the_token_are_refused(student: FlaskClient, web_course: config.CourseConfig) -> None:
    for data in ({}, {"csrf_token": "forged"}):
        r = student.post("/courses/so/assignments/1-hello/upload", data={**data, **archive()},
                         content_type="multipart/form-data")
        assert r.status_code == 400 and "did not come from this site" in r.get_data(as_text=True)
        assert student.post("/logout", data=data).status_code == 400
    assert Repository(web_course).current("1-hello", "student") is None
    assert student.get("/courses").status_code == 200   # still logged in


def test_login_form_needs_the_token(client: FlaskClient) -> None:
    r = client.post("/login", data={"username": "student", "password": "student-pw"})
    assert r.status_code == 400
    assert client.get("/courses").status_code == 302


def test_token_changes_at_login(client: FlaskClient) -> None:
    before = page_token(client, "/login")
    login(client, "student")
    after = page_token(client, "/courses")
    assert before != after
    r = client.post("/logout", data={"csrf_token": before})
    assert r.status_code == 400


def test_api_posts_need_the_header(client: FlaskClient, web_course: config.CourseConfig) -> None:
    token = api_login(client, "student", "student-pw").get_json()["csrf_token"]
    r = client.post(f"{BASE}/upload", data=archive(), content_type="multipart/form-data")
    assert r.status_code == 400 and "error" in r.get_json()
    r = client.post(f"{BASE}/upload", data=archive(), content_type="multipart/form-data",
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 201


def test_api_login_takes_json_only(client: FlaskClient) -> None:
    """A cross-site form can post urlencoded data, but then it needs the token like any form."""
    r = client.post("/api/login", data={"username": "student", "password": "student-pw"})
    assert r.status_code == 400
    assert client.get("/api/session").get_json()["user"] is None


# --------------------------------------------------------------------------- API


def test_session_login_and_logout(client: FlaskClient) -> None:
    assert client.get("/api/session").get_json()["user"] is None
    assert api_login(client, "student", "wrong").status_code == 401
    r = api_login(client, "student", "student-pw")
    assert r.status_code == 200 and r.get_json()["user"] == "student"
    token = r.get_json()["csrf_token"]
    assert client.get("/api/session").get_json() == {"user": "student", "csrf_token": token}
    assert client.post("/api/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/api/courses").status_code == 401


def test_api_login_is_throttled(client: FlaskClient) -> None:
    for _ in range(3):
        assert api_login(client, "bob", "guess").status_code == 401
    r = api_login(client, "bob", "bob-pw")
    assert r.status_code == 429 and "Too many" in r.get_json()["error"]


def test_courses_and_assignments(client: FlaskClient, admin: FlaskClient) -> None:
    api_login(client, "student", "student-pw")
    assert client.get("/api/courses").get_json() == [
        {"id": "so", "name": "Operating Systems", "admin": False, "public_results": True}]
    tasks = client.get("/api/courses/so/assignments").get_json()
    assert [t["id"] for t in tasks] == ["0-past", "1-hello"]
    hello = tasks[1]
    assert hello["deadline"] == "2099-03-01 23:55:00" and hello["statement"] == "https://example.org/1-hello"
    assert "at most 4" in hello["penalty_rules"]
    assert [t["id"] for t in admin.get("/api/courses/so/assignments").get_json()] == ["0-past", "1-hello", "9-hidden"]
    assert client.get("/api/courses/nope/assignments").status_code == 404


def test_upload_refusal_and_results(client: FlaskClient, web_course: config.CourseConfig) -> None:
    token = api_login(client, "student", "student-pw").get_json()["csrf_token"]
    r = client.post(f"{BASE}/upload", data={"archive": (io.BytesIO(b"junk"), "x.zip")},
                    content_type="multipart/form-data", headers={"X-CSRF-Token": token})
    assert r.status_code == 422 and r.get_json()["error"].startswith("Upload refused")
    r = client.post(f"{BASE}/upload", data=archive(), content_type="multipart/form-data",
                    headers={"X-CSRF-Token": token})
    body = r.get_json()
    assert r.status_code == 201 and body["status"] == "saved" and body["queued"] is False
    sub = Repository(web_course).current("1-hello", "student")
    assert body["submission"] == sub.name
    write_results(sub, {"run-stdout.vmr": "<script>x</script>"})
    got = client.get(f"{BASE}/results").get_json()
    assert got["account"] == "student" and len(got["submissions"]) == 1
    only = got["submissions"][0]
    assert only["status"] == "done" and only["grade_hidden"] is True      # deadline in 2099
    assert only["results"][0] == {"name": "run-stdout.vmr", "text": "<script>x</script>", "size": 18,
                                  "truncated": False, "ignored": False}


def test_grades_and_recheck(app: Flask, admin: FlaskClient, web_course: config.CourseConfig) -> None:
    sub = submit(web_course, "0-past", "bob", zip_bytes(HELLO))
    write_results(sub, {}, grade="done\n")
    grades = admin.get("/api/courses/so/grades").get_json()
    assert grades["assignments"] == ["0-past", "1-hello", "9-hidden"]
    assert grades["grades"] == [{"account": "bob", "0-past": "6", "1-hello": None, "9-hidden": None}]
    token = admin.get("/api/session").get_json()["csrf_token"]
    path = f"/api/courses/so/assignments/0-past/accounts/bob/submissions/{sub.name}/recheck"
    r = admin.post(path, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.get_json()["queued"] is False
    assert admin.get("/api/courses/so/grades").get_json()["grades"][0]["0-past"] == "saved"
    assert admin.post(path.replace(sub.name, "2001.01.01 00.00.00"), headers={"X-CSRF-Token": token}).status_code == 404
    student = app.test_client()
    token = api_login(student, "student", "student-pw").get_json()["csrf_token"]
    assert student.post(path, headers={"X-CSRF-Token": token}).status_code == 403
