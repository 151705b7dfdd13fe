"""Teams in a real browser (Debian's Chromium, as tests/web/test_browser.py drives it):
one member uploads through the form, the other logs in and finds the upload, who made
it, its results and its grade on the same page, under the team's name.

Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.util import free_port, make_zip
from tests.web import test_browser as browser
from tests.web.helpers import HELLO, PASSWORDS, WebServer, open_course, write_results, write_users
from vmchecker import config, teams
from vmchecker.repo import Repository

pytestmark = browser.pytestmark
page = browser.page          # the same Chromium page fixture


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[WebServer, config.CourseConfig]]:
    """Course ``so`` whose students ``student`` and ``bob`` are team ``team-sb``."""
    course = open_course(tmp_path, f"http://127.0.0.1:{free_port()}/", show_grades_before_deadline=True)
    teams.save(teams.teams_file(course.path), [teams.Team("team-sb", ("student", "bob"))])
    server = WebServer(tmp_path / "global.yaml", write_users(tmp_path / "users"), tmp_path / "secret")
    try:
        yield server, config.load_course(course.path)
    finally:
        server.stop()


def test_one_member_uploads_the_other_sees_it_and_its_grade(site, page, tmp_path: Path) -> None:
    server, course = site
    url = server.url
    browser.log_in(page, url, "student", PASSWORDS["student"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello")
    assert "student, bob" in page.inner_text("#team")
    page.set_input_files("#archive", str(make_zip(tmp_path / "hello.zip", HELLO)))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector(".flash")
    assert "Your archive was saved" in page.inner_text(".flash")
    assert page.inner_text("#submission-1 .submitted-by") == "by student"
    browser.shot(page, "20-team-uploaded")

    sub = Repository(course).current("1-hello", "team-sb")
    assert sub is not None and sub.submitted_by == "student"
    write_results(sub, {"run-stdout.vmr": "Hello, world!\n"}, grade="-0.5: missing README\n")

    page.click("header button")                                   # log out; bob logs in
    page.wait_for_url(f"{url}/login")
    browser.log_in(page, url, "bob", PASSWORDS["bob"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello")
    assert page.inner_text("main h2") == "Your team's submissions"
    assert page.inner_text("#submission-1 .submitted-by") == "by student"
    assert page.inner_text("#submission-1 .grade") == "9.5 / 10"
    assert "Hello, world!" in page.inner_text("pre.vmr[data-name='run-stdout.vmr']")
    assert page.locator("#upload-form").count() == 1                # bob may upload for the team too
    browser.shot(page, "21-team-member-sees-it")

    page.goto(f"{url}/courses/so/grades")
    rows = {line.split("\t")[0]: line for line in page.inner_text("#grades-table tbody").splitlines()}
    assert "9.5" in rows["student"] and "9.5" in rows["bob"]
