"""Grading on the web: a submission's page, its files (listed, highlighted, escaped, never
served as they are), the grade form (CSRF, admins only, lines checked, the earlier file
kept), the grades page's picture (counts and an SVG histogram) and an account's history."""

from __future__ import annotations

import os
import re
from html import unescape
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from tests.util import free_port, zip_bytes
from tests.web.conftest import login, page_token
from tests.web.helpers import HELLO, open_course, write_results
from vmchecker import config, grades, teams
from vmchecker.contract import SubmissionStatus
from vmchecker.repo import Submission
from vmchecker.submit import submit

HOSTILE = {
    "hello.c": '#include <stdio.h>\nint main(void) { puts("</pre><script>alert(1)</script>"); return 0; }\n',
    "Makefile": HELLO["Makefile"],
    "page.html": "<html><body><script>window.pwned = 1</script><img src=x onerror=alert(1)></body></html>\n",
    "docs/notes.md": "# notes\n<b>bold</b>\n",
    "blob.bin": b"\x7fELF\x00\x01\x02",
}


def text(response) -> str:
    return response.get_data(as_text=True)


def shown_text(html: str) -> str:
    """What a reader sees of a page: its markup taken out, its entities read."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def url(sub: Submission, tail: str = "") -> str:
    return f"/courses/so/assignments/{sub.assignment}/accounts/{sub.account}/{quote(sub.name)}{tail}"


@pytest.fixture
def web_course(tmp_path) -> config.CourseConfig:
    """The conftest's course, its 1-hello showing grades before its deadline (2099)."""
    return open_course(tmp_path, f"http://127.0.0.1:{free_port()}/", show_grades_before_deadline=True)


@pytest.fixture
def sub(web_course: config.CourseConfig) -> Submission:
    """student's 1-hello, graded by the tests with one deduction."""
    found = submit(web_course, "1-hello", "student", zip_bytes(HOSTILE))
    write_results(found, {"run-stdout.vmr": "Hello, world!\n"}, grade="-2: test 3 failed\n")
    return found


def grade(client: FlaskClient, sub: Submission, lines: str, token: str | None = None):
    token = page_token(client, url(sub)) if token is None else token
    return client.post(url(sub, "/grade"), data={"csrf_token": token, "lines": lines})


# --------------------------------------------------------------------------- files


def test_the_submission_page_lists_the_files_and_results(admin: FlaskClient, sub: Submission) -> None:
    body = text(admin.get(url(sub)))
    assert "Hello, world!" in body and "-2: test 3 failed" in body
    for name in ("hello.c", "Makefile", "page.html", "docs/notes.md", "blob.bin"):
        assert f">{name}</a>" in body
    assert 'id="grade-form"' in body


def test_a_file_is_highlighted_and_escaped_never_served(admin: FlaskClient, sub: Submission) -> None:
    r = admin.get(url(sub, "/files/hello.c"))
    assert r.status_code == 200 and r.mimetype == "text/html"
    body = text(r)
    assert '<span class="kt">int</span>' in body                 # C, highlighted by Pygments
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script" not in body and " style=" not in body       # nothing runs; no inline style (CSP)
    html = text(admin.get(url(sub, "/files/page.html")))
    assert "<script" not in html and "<img" not in html and html.count("<body") == 1
    assert HOSTILE["page.html"] in shown_text(html)               # every character shown, as text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text(admin.get(url(sub, "/files/docs/notes.md")))
    binary = text(admin.get(url(sub, "/files/blob.bin")))
    assert "A binary file" in binary and "ELF" not in binary
    css = admin.get("/highlight.css")
    assert css.mimetype == "text/css" and ".hl .kt" in text(css)


@pytest.mark.parametrize("path", ["../submission-config.yaml", "..%2Fsubmission-config.yaml", "docs/../../archive.zip",
                                  "nope.c", "docs", "%2Fetc%2Fpasswd"])
def test_only_files_below_files_are_shown(admin: FlaskClient, sub: Submission, path: str) -> None:
    r = admin.get(url(sub, "/files/" + path), follow_redirects=True)   # '//' is merged by a redirect
    assert r.status_code == 404 and "course:" not in text(r) and "root:" not in text(r)


def test_a_link_in_files_is_not_followed(admin: FlaskClient, sub: Submission) -> None:
    os.symlink(sub.config_path, sub.files_dir / "link.c")
    os.symlink(sub.path, sub.files_dir / "up")
    assert admin.get(url(sub, "/files/link.c")).status_code == 404
    assert admin.get(url(sub, "/files/up/submission-config.yaml")).status_code == 404
    assert ">link.c</a>" not in text(admin.get(url(sub)))


def test_a_student_sees_their_own_files_and_no_one_elses(student: FlaskClient, sub: Submission,
                                                         web_course: config.CourseConfig) -> None:
    assert student.get(url(sub, "/files/hello.c")).status_code == 200
    page = text(student.get(url(sub)))
    assert 'id="grade-form"' not in page and "Earlier grade files" not in page
    bobs = submit(web_course, "1-hello", "bob", zip_bytes(HELLO))
    assert student.get(url(bobs)).status_code == 403
    assert student.get(url(bobs, "/files/hello.c")).status_code == 403


# --------------------------------------------------------------------------- the grade form


def test_an_admin_adds_lines_and_the_student_sees_the_new_grade(admin: FlaskClient, student: FlaskClient,
                                                                sub: Submission, web_course) -> None:
    assert '<span class="grade">8 / 10</span>' in text(student.get("/courses/so/assignments/1-hello"))
    r = grade(admin, sub, "-0.5: leak in list_free\r\n+1: nice README\r\n")
    assert r.status_code == 302 and r.location.endswith(url(sub))
    page = text(admin.get(r.location))
    assert "Saved. The grade is now 8.5 / 10." in page
    assert "# graded by alice on " in sub.grade_text() and sub.grade_text().endswith("+1: nice README\n")
    assert (sub.results_dir / "grade.vmr.1").read_text() == "-2: test 3 failed\n"
    assert "Earlier grade files (1)" in page
    assert {r.account: r.grade for r in grades.rows(web_course, "1-hello")} == {"student": 8.5}
    body = text(student.get("/courses/so/assignments/1-hello"))
    assert '<span class="grade">8.5 / 10</span>' in body and "-0.5: leak in list_free" in body


def test_a_bad_line_is_refused_and_kept_in_the_form(admin: FlaskClient, sub: Submission) -> None:
    r = grade(admin, sub, "+1: fine\n-0,5: leak\n")
    assert r.status_code == 422
    body = text(r)
    assert "Not saved: &#39;-0,5: leak&#39; is not a grade line" in body
    assert "+1: fine\n-0,5: leak\n</textarea>" in body
    assert sub.grade_text() == "-2: test 3 failed\n" and not (sub.results_dir / "grade.vmr.1").exists()


def test_the_form_needs_its_csrf_token(admin: FlaskClient, sub: Submission) -> None:
    r = grade(admin, sub, "+1: x", token="forged")
    assert r.status_code == 400 and sub.grade_text() == "-2: test 3 failed\n"


def test_only_admins_grade(student: FlaskClient, sub: Submission) -> None:
    r = grade(student, sub, "+5: I deserve it")
    assert r.status_code == 403 and sub.grade_text() == "-2: test 3 failed\n"


def test_a_submission_being_tested_has_no_form_and_refuses_a_post(admin: FlaskClient, sub: Submission) -> None:
    token = page_token(admin, url(sub))
    sub.set_status(SubmissionStatus.RUNNING)
    assert 'id="grade-form"' not in text(admin.get(url(sub)))
    r = grade(admin, sub, "+1: x", token=token)
    assert r.status_code == 422 and "still being tested" in text(r) and sub.grade_text() == "running\n"


# --------------------------------------------------------------------------- the picture


def _graded(course, account: str, grade_text: str, assignment: str = "0-past", **files) -> Submission:
    found = submit(course, assignment, account, zip_bytes(HELLO), skip_time_checks=True)
    write_results(found, files, grade=grade_text)
    return found


def test_the_grades_page_counts_and_draws_the_distribution(admin: FlaskClient, student: FlaskClient,
                                                           web_course: config.CourseConfig) -> None:
    """0-past's deadline has passed: every upload is late, and its grades are shown to all."""
    for account, text_ in (("student", "done\n"), ("bob", "-0.5: style\n"), ("carol", "-10: the build failed\n")):
        _graded(web_course, account, text_, **({"result.json": '{"steps": {"build": {"attempted": true,'
                                                                '"exit_code": 2}}}'} if account == "carol" else {}))
    submit(web_course, "0-past", "Erin", zip_bytes(HELLO), skip_time_checks=True)   # still waiting
    body = text(admin.get("/courses/so/grades"))
    section = re.search(r'<section class="card assignment-stats" id="stats-0-past".*?</section>', body, re.S).group(0)
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', section))
    assert counts == {"submitted": "4", "graded": "3", "late": "4", "failed_build": "1", "waiting": "1",
                      "errors": "0"}
    bars = {rng: int(n) for n, rng in re.findall(r'<rect class="bar"[^>]*data-count="(\d+)" data-range="([^"]+)"',
                                                section)}
    assert len(bars) == 10                                       # one point each, 0 to 10
    assert {rng: n for rng, n in bars.items() if n} == {"0–1": 1, "5–6": 1, "6–7": 1}   # 0, 9.5 - 4, 10 - 4 late
    assert "<script" not in section
    public = text(student.get("/courses/so/grades"))             # public_results: the picture too
    assert 'id="stats-0-past"' in public and 'class="chart histogram"' in public
    assert 'id="stats-1-hello"' in public and 'id="stats-9-hidden"' not in public


def test_an_accounts_history_shows_every_submission(admin: FlaskClient, student: FlaskClient,
                                                    web_course: config.CourseConfig) -> None:
    _graded(web_course, "student", "-6: most tests failed\n", "1-hello")
    _graded(web_course, "student", "-1: one test failed\n", "1-hello")
    _graded(web_course, "bob", "done\n", "1-hello")
    body = text(student.get("/courses/so/history/student"))
    section = re.search(r'id="history-1-hello".*?</section>', body, re.S).group(0)
    assert re.findall(r'data-grade="([\d.]+)"', section) == ["4", "9"]
    assert "one test failed" in section and 'class="line"' in section
    assert student.get("/courses/so/history/bob").status_code == 403
    assert admin.get("/courses/so/history/bob").status_code == 200
    assert 'href="/courses/so/history/bob"' in text(admin.get("/courses/so/grades"))
    assert "/history/bob" not in text(student.get("/courses/so/grades"))


def test_a_student_logged_in_again_sees_the_same(app, sub: Submission) -> None:
    """A fresh session (a student's second browser) sees the grade an admin saved."""
    admin = app.test_client()
    login(admin, "alice")
    assert grade(admin, sub, "+1: bonus").status_code == 302
    again = app.test_client()
    login(again, "student")
    assert '<span class="grade">9 / 10</span>' in text(again.get("/courses/so/assignments/1-hello"))


def test_a_teams_submission_counts_once_and_is_each_members_history(app, admin: FlaskClient,
                                                                     web_course: config.CourseConfig) -> None:
    teams.save(teams.teams_file(web_course.path), [teams.Team("team-sb", ("student", "bob"))])
    course = config.load_course(web_course.path)
    found = submit(course, "1-hello", "bob", zip_bytes(HELLO))
    assert found.account == "team-sb"
    write_results(found, {}, grade="-1: one test failed\n")
    body = text(admin.get("/courses/so/grades"))
    section = re.search(r'id="stats-1-hello".*?</section>', body, re.S).group(0)
    assert dict(re.findall(r'data-count="(\w+)">(\d+)<', section))["submitted"] == "1"
    student = app.test_client()
    login(student, "student")
    history = text(student.get("/courses/so/history/student"))
    assert re.findall(r'data-grade="([\d.]+)"', history) == ["9"]
    assert 'id="grade-form"' not in text(student.get(url(found)))   # the team's page: a member sees it
    assert "-1: one test failed" in text(student.get(url(found)))
