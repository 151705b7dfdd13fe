"""Teams on the web: a member's upload through the form is the team's, every member sees
it and its results (pages and API), a non-member is refused, the grades table lists the
grade for every member, and the upload interval is the team's."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.util import zip_bytes
from tests.web.conftest import login, page_token
from tests.web.helpers import HELLO, write_results
from vmchecker import config, teams
from vmchecker.repo import Repository


def set_teams(course: config.CourseConfig, **members: list[str]) -> config.CourseConfig:
    """Write teams.yaml beside the course's config (the web reads it on every request)."""
    teams.save(teams.teams_file(course.path), [teams.Team(name, tuple(m)) for name, m in members.items()])
    return config.load_course(course.path)


def upload_form(client: FlaskClient) -> str:
    token = page_token(client, "/courses")
    response = client.post("/courses/so/assignments/1-hello/upload", follow_redirects=True,
                           data={"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip"), "csrf_token": token},
                           content_type="multipart/form-data")
    return response.get_data(as_text=True)


@pytest.fixture
def bob(app: Flask) -> FlaskClient:
    c = app.test_client()
    assert login(c, "bob").status_code == 302
    return c


def test_both_members_see_one_members_upload_and_its_results(web_course, student, bob, admin):
    course = set_teams(web_course, **{"team-sb": ["student", "bob"]})
    assert "Your archive was saved" in upload_form(student)
    sub = Repository(course).current("1-hello", "team-sb")
    assert sub is not None and sub.submitted_by == "student"
    assert Repository(course).current("1-hello", "student") is None
    write_results(sub, {"run-stdout.vmr": "Hello from the team\n"}, grade="-1: style\n")

    for client in (student, bob):
        page = client.get("/courses/so/assignments/1-hello").get_data(as_text=True)
        assert "Your team's submissions" in page
        assert 'id="team"' in page and "student, bob" in page
        assert "by student" in page
        assert "Hello from the team" in page
        assert "Graded; grades are shown after the deadline" in page       # as for anyone's, before it
        assert 'id="upload-form"' in page                       # any member may upload for the team
        data = client.get("/api/courses/so/assignments/1-hello/results").get_json()
        assert data["account"] == "team-sb" and data["team"] == {"name": "team-sb", "members": ["student", "bob"]}
        assert [(s["name"], s["submitted_by"]) for s in data["submissions"]] == [(sub.name, "student")]
        assert client.get("/courses/so/assignments/1-hello/accounts/team-sb").status_code == 200

    page = admin.get("/courses/so/assignments/1-hello/accounts/bob").get_data(as_text=True)
    assert "Submissions of team team-sb" in page and "Hello from the team" in page   # a member leads to the team
    table = admin.get("/api/courses/so/grades").get_json()["grades"]
    assert {row["account"]: row["1-hello"] for row in table} == {"student": "9", "bob": "9"}


def test_a_non_member_is_refused(web_course, student, bob):
    set_teams(web_course, **{"team-s": ["student"]})
    upload_form(student)
    assert bob.get("/courses/so/assignments/1-hello/accounts/team-s").status_code == 403
    assert bob.get("/courses/so/assignments/1-hello/accounts/student").status_code == 403
    assert bob.get("/api/courses/so/assignments/1-hello/results?account=team-s").status_code == 403
    page = bob.get("/courses/so/assignments/1-hello").get_data(as_text=True)
    assert "Your submissions" in page and 'id="no-submissions"' in page   # bob submits alone


def test_the_interval_is_the_teams(tmp_path, app, student, bob):
    path = tmp_path / "so" / "config.yaml"
    text = path.read_text().replace("min_interval: 0", "min_interval: 3600", 1)
    path.write_text(text)
    set_teams(config.load_course(path), **{"team-sb": ["student", "bob"]})
    assert "Your archive was saved" in upload_form(student)
    page = upload_form(bob)
    assert "Upload refused: student of your team team-sb uploaded 1-hello at" in page
    assert "the team&#39;s uploads must be 3600 s apart" in page
