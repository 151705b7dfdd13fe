"""The pages: uploads through the real submit(), queue information from the real storer
daemon, results escaped and capped, grades and their visibility, access control, recheck."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import time
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures import RunningDaemon
from tests.util import zip_bytes
from tests.web.conftest import login, page_token
from tests.web.helpers import HELLO, open_course, write_results
from vmchecker import config, confparse
from vmchecker.assignments import Assignment
from vmchecker.contract import SUBMISSION_CONFIG, JobState, SubmissionStatus
from vmchecker.repo import Repository
from vmchecker.storer.web import create_app
from vmchecker.storer.web import jobs as jobs_module
from vmchecker.storer.web.jobs import QueueInfo, parse_status, parse_timelines
from vmchecker.storer.web.model import VMR_CAP, penalty_rules
from vmchecker.submit import submit

PAGE = "/courses/so/assignments/1-hello"


def upload(client: FlaskClient, data: bytes, assignment: str = "1-hello", name: str = "hello.zip"):
    token = page_token(client, f"/courses/so/assignments/{assignment}")
    return client.post(f"/courses/so/assignments/{assignment}/upload",
                       data={"csrf_token": token, "archive": (io.BytesIO(data), name)},
                       content_type="multipart/form-data", follow_redirects=True)


def text(response) -> str:
    return response.get_data(as_text=True)


# --------------------------------------------------------------------------- courses


def test_course_page_lists_assignments_with_rules(student: FlaskClient) -> None:
    body = text(student.get("/courses/so"))
    assert "Hello, world" in body and "Warm-up" in body
    assert "Not yet" not in body                              # hidden from students
    assert "Holidays do not count" in body
    assert "2099-03-01 23:55:00" in body and " left)" in body
    assert "passed " in body                                  # 0-past
    assert 'href="https://example.org/1-hello"' in body
    assert "day 1: 0.5, day 2: 0.5, day 3 and after: 1 per day; at most 4 points in all" in body
    assert body.index("Warm-up") < body.index("Hello, world")  # by order


def test_hidden_assignment_is_absent_for_students_and_shown_to_admins(student, admin) -> None:
    assert student.get("/courses/so/assignments/9-hidden").status_code == 404
    assert admin.get("/courses/so/assignments/9-hidden").status_code == 200
    assert "Not yet" in text(admin.get("/courses/so"))


def test_javascript_statement_is_not_a_link(tmp_path: Path, users: Path) -> None:
    open_course(tmp_path / "js", "http://127.0.0.1:1/", statement="javascript:alert(1)")
    app = create_app(tmp_path / "js" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    assert login(c, "student").status_code == 302
    r = c.get("/courses/so")
    assert r.status_code == 200 and "Hello, world" in text(r)      # the assignment is on the page...
    assert "javascript:" not in text(r)                             # ...without its statement link


def test_unknown_course_is_404(student: FlaskClient) -> None:
    assert student.get("/courses/nope").status_code == 404
    assert student.get("/courses/so/assignments/nope").status_code == 404


# --------------------------------------------------------------------------- uploads


def test_upload_saves_through_submit_and_says_daemon_is_down(student: FlaskClient,
                                                             web_course: config.CourseConfig) -> None:
    r = upload(student, zip_bytes(HELLO))
    assert r.status_code == 200
    body = text(r)
    assert "Your archive was saved" in body and "will be tested when the service is back" in body
    sub = Repository(web_course).current("1-hello", "student")
    assert sub is not None and (sub.files_dir / "hello.c").exists()
    assert 'data-status="saved"' in body and "no estimate yet" in body
    assert '<meta http-equiv="refresh"' in body               # reloads while waiting


def _shown_finish(body: str) -> dt.datetime:
    start = body.index("Results expected around <strong>") + len("Results expected around <strong>")
    return confparse.parse_datetime(body[start:body.index("</strong>", start)])


def test_upload_is_queued_and_shows_position_and_estimate(tmp_path: Path, users: Path,
                                                          daemon: RunningDaemon) -> None:
    """The real daemon journals the upload and reports it; the test then moves the job
    on as the dispatcher would (sent to t1, on TEST-NET-1, never contacted)."""
    app = create_app(tmp_path / "up" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    assert login(c, "student").status_code == 302
    body = text(upload(c, zip_bytes(HELLO)))
    assert "It is queued for testing" in body
    sub = Repository(daemon.course).current("1-hello", "student")
    job = daemon.journal.find_active("so", "1-hello", "student", sub.name)
    assert job is not None and job.state is JobState.QUEUED
    assert sub.status() is SubmissionStatus.QUEUED                            # written by the daemon
    # A job of another course, sent to a tester of that name: not this course's business.
    other = daemon.journal.enqueue("other", "1-hello", "student", sub.name, "linux")
    daemon.journal.mark_sent(other.id, "t9", deadline=time.time() + 3600)

    per_job = daemon.daemon.courses.get("so").scheduler.expected_finish("t1", "1-hello")
    before = time.time()
    body = text(c.get(PAGE))
    after = time.time()
    assert "Position in the queue: <strong>1</strong>" in body and "t9" not in body
    shown = _shown_finish(body)                                    # now + one job's expected time
    assert dt.datetime.fromtimestamp(int(before + per_job)) <= shown <= dt.datetime.fromtimestamp(after + per_job)

    sent_at = time.time() - 30
    daemon.journal.mark_sent(job.id, "t1", deadline=time.time() + 3600, now=sent_at)
    body = text(c.get(PAGE))
    assert "Being tested on <strong>t1</strong>" in body and "Position in the queue" not in body
    estimate = daemon.daemon.courses.get("so").scheduler.estimate("t1", "1-hello")
    assert _shown_finish(body) == dt.datetime.fromtimestamp(int(sent_at + estimate))


def test_a_grader_sees_the_jobs_timeline_and_a_student_does_not(tmp_path: Path, users: Path,
                                                                daemon: RunningDaemon) -> None:
    """The timeline comes from the real daemon's journal: a grader reads it on the
    submission's page and in the API, the student who uploaded sees neither."""
    app = create_app(tmp_path / "up" / "global.yaml", users, secret_key="k" * 32)
    student = app.test_client()
    assert login(student, "student").status_code == 302
    assert "It is queued for testing" in text(upload(student, zip_bytes(HELLO)))
    assert "timeline" not in text(student.get(PAGE)).lower()
    (own,) = student.get("/api/courses/so/assignments/1-hello/results").get_json()["submissions"]
    assert own["timeline"] is None
    grader = app.test_client()
    assert login(grader, "alice").status_code == 302
    body = text(grader.get(f"{PAGE}/accounts/student"))
    assert 'data-stage="stored"' in body and 'data-stage="queued"' in body and "graders only" in body
    assert body.index("upload stored") < body.index("queued</td>")
    (seen,) = grader.get("/api/courses/so/assignments/1-hello/results?account=student").get_json()["submissions"]
    assert [r["stage"] for r in seen["timeline"]["stages"]] == ["stored", "queued"]


def test_timeline_answers_are_read_defensively_and_shown_escaped(admin: FlaskClient, web_course: config.CourseConfig,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"stage": "stored", "clock": "storer", "at": 1.7e9, "since_previous_s": 0.0, "since_stored_s": 0.0}
    answer = {"j-1": {"stages": [row, "junk", {**row, "stage": "<script>alert(1)</script>"},
                                 {**row, "stage": "queued", "at": "soon"},
                                 {**row, "stage": "guest_ready", "clock": "tester", "since_previous_s": 0.25,
                                  "since_stored_s": 0.25, "estimated": True, "attempt": 1}],
                      "notes": ["<b>clocks</b> differ", 5]},
              "j-2": "junk", 7: {"stages": []}}
    views = parse_timelines(answer)
    assert list(views) == ["j-1"]
    assert [(r.stage, r.label, r.since_previous) for r in views["j-1"].stages] == [
        ("stored", "upload stored", ""), ("guest_ready", "guest ready (attempt 2)", "~+0.250 s")]
    assert views["j-1"].notes == ["<b>clocks</b> differ"] and parse_timelines(["x"]) == {}
    sub = submit(web_course, "1-hello", "student", zip_bytes(HELLO)).update_info(job_id="j-1")
    asked = []
    monkeypatch.setattr(jobs_module, "daemon_timelines",
                        lambda course, ids, timeout: asked.append(ids) or parse_timelines(answer))
    body = text(admin.get(f"{PAGE}/accounts/student"))
    assert asked == [[sub.info.job_id]]
    assert "&lt;b&gt;clocks&lt;/b&gt; differ" in body and "<b>clocks</b>" not in body
    assert "<script>alert" not in body and 'data-stage="guest_ready"' in body


def test_status_answers_are_read_defensively() -> None:
    """What the daemon answers is checked field by field: junk is skipped, never shown."""
    good = {"course": "so", "assignment": "1-hello", "account": "bob", "submission": "s", "state": "queued",
            "tester": "", "position": 2, "estimated_finish": 4102444800}
    jobs = parse_status("so", {"jobs": [good, "garbage", {**good, "course": "other"},
                                        {**good, "account": None}, {**good, "submission": "t", "position": True,
                                                                    "estimated_finish": "soon"}]})
    assert jobs == {("1-hello", "bob", "s"): QueueInfo("queued", "", 2, dt.datetime.fromtimestamp(4102444800)),
                    ("1-hello", "bob", "t"): QueueInfo("queued", "", None, None)}
    assert parse_status("so", "nonsense") == {} and parse_status("so", {"jobs": "x"}) == {}


def test_refusals_show_their_reason(student: FlaskClient, web_course: config.CourseConfig) -> None:
    body = text(upload(student, b"this is not an archive"))
    assert "Upload refused: archive refused" in body
    body = text(upload(student, zip_bytes({"../evil": "x"})))
    assert "Upload refused" in body
    assert Repository(web_course).current("1-hello", "student") is None
    token = page_token(student, PAGE)
    r = student.post("/courses/so/assignments/1-hello/upload", data={"csrf_token": token},
                     follow_redirects=True)
    assert "Choose an archive" in text(r)


def test_upload_over_the_assignment_size_is_refused(tmp_path: Path, users: Path) -> None:
    open_course(tmp_path / "small", "http://127.0.0.1:1/", max_submission_size="1K")
    app = create_app(tmp_path / "small" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    login(c, "student")
    assert "larger than 1024 bytes" in text(upload(c, b"x" * 5000))


def test_server_error_on_upload_shows_no_server_detail(student: FlaskClient, web_course: config.CourseConfig,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A broken submission config in the repository makes submit() fail with a message
    naming its path: the student reads a generic sentence, the log has the detail."""
    first = submit(web_course, "1-hello", "student", zip_bytes(HELLO))
    broken = first.path / SUBMISSION_CONFIG
    broken.write_text("- not a mapping\n")
    token = student.get("/api/session").get_json()["csrf_token"]
    with caplog.at_level(logging.ERROR, logger="vmchecker.storer.web.uploads"):
        r = student.post("/api/courses/so/assignments/1-hello/upload", headers={"X-CSRF-Token": token},
                         data={"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip")},
                         content_type="multipart/form-data")
    assert r.status_code == 422
    message = r.get_json()["error"]
    assert message.startswith("Upload failed: the server could not store your archive")
    assert str(web_course.repository) not in message and "expected a mapping" not in message
    assert str(broken) in caplog.text and "expected a mapping" in caplog.text


def test_upload_to_hidden_assignment_is_404(student: FlaskClient) -> None:
    token = page_token(student, PAGE)
    r = student.post("/courses/so/assignments/9-hidden/upload",
                     data={"csrf_token": token, "archive": (io.BytesIO(zip_bytes(HELLO)), "a.zip")},
                     content_type="multipart/form-data")
    assert r.status_code == 404


# --------------------------------------------------------------------------- results


@pytest.fixture
def graded(web_course: config.CourseConfig):
    """student's graded submission of 1-hello (results written as the tester would)."""
    sub = submit(web_course, "1-hello", "student", zip_bytes(HELLO))
    write_results(sub, {
        "build-stdout.vmr": "gcc -Wall -o hello hello.c\n",
        "run-stdout.vmr": "<script>alert('x')</script>\n& <b>bold</b>",
        "secret-checker.vmr": "the hidden checker says hi",
        "big.vmr": "A" * (VMR_CAP + 500),
    }, grade="-1.5: memory leak\n+0.5 bonus\n")
    return sub


def test_results_are_escaped_capped_and_ignored_vmrs_hidden(student: FlaskClient, graded) -> None:
    body = text(student.get(PAGE))
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body and "<script>" not in body
    assert "&amp; &lt;b&gt;bold&lt;/b&gt;" in body
    assert "gcc -Wall -o hello hello.c" in body
    assert "secret-checker.vmr" not in body and "hidden checker" not in body
    assert "A" * VMR_CAP in body and "A" * (VMR_CAP + 1) not in body
    assert f"showing the first {VMR_CAP} of {VMR_CAP + 500} bytes" in body


def test_late_grade_and_breakdown(student: FlaskClient, web_course: config.CourseConfig) -> None:
    """0-past's deadline was in 2020: the upload is years late, the penalty is capped at 4."""
    sub = submit(web_course, "0-past", "student", zip_bytes(HELLO))
    write_results(sub, {"run-stdout.vmr": "Hello, world!\n"}, grade="-1.5: memory leak\n+0.5 bonus\n")
    body = text(student.get("/courses/so/assignments/0-past"))
    assert '<span class="grade">5 / 10</span>' in body          # 10 - 1.5 + 0.5 - 4
    assert "<th>Late penalty</th><td>4</td>" in body and "<th>Adjustments from the tests and graders</th><td>-1</td>" in body
    assert "<th>Deadline</th><td>2020-03-01 23:55:00</td>" in body and "after the deadline" in body
    assert "memory leak" in body


def test_grades_hidden_before_deadline_unless_allowed(student: FlaskClient, admin: FlaskClient, graded,
                                                      tmp_path: Path, users: Path) -> None:
    body = text(student.get(PAGE))                               # deadline in 2099
    assert "grades are shown after the deadline" in body and "9 / 10" not in body and "memory leak" not in body
    assert "run-stdout.vmr" in body                              # the results are shown
    assert '<span class="grade">9 / 10</span>' in text(admin.get(PAGE + "/accounts/student"))
    course = open_course(tmp_path / "early", "http://127.0.0.1:1/", show_grades_before_deadline=True)
    sub = submit(course, "1-hello", "student", zip_bytes(HELLO))
    write_results(sub, {}, grade="-1: style\n")
    app = create_app(tmp_path / "early" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    login(c, "student")
    assert '<span class="grade">9 / 10</span>' in text(c.get(PAGE))


def test_admin_sees_ignored_vmrs_marked(admin: FlaskClient, graded) -> None:
    body = text(admin.get(PAGE + "/accounts/student"))
    assert "secret-checker.vmr" in body and "hidden from students" in body


def test_another_students_results_are_refused(student: FlaskClient, app: Flask,
                                              web_course: config.CourseConfig) -> None:
    sub = submit(web_course, "1-hello", "bob", zip_bytes(HELLO))
    write_results(sub, {"run-stdout.vmr": "bob's output"})
    r = student.get(PAGE + "/accounts/bob")
    assert r.status_code == 403 and "bob's output" not in text(r)
    assert student.get("/api/courses/so/assignments/1-hello/results?account=bob").status_code == 403
    bob = app.test_client()
    login(bob, "bob")
    assert "bob&#39;s output" in text(bob.get(PAGE))
    assert "bob&#39;s output" not in text(student.get(PAGE))


def test_grades_table_public_results_and_admin(student: FlaskClient, admin: FlaskClient, graded,
                                               web_course: config.CourseConfig) -> None:
    submit(web_course, "0-past", "bob", zip_bytes(HELLO))
    body = text(admin.get("/courses/so/grades"))
    assert "<th>student</th>" in body and "<th>bob</th>" in body
    assert ">9<" in body and ">saved<" in body                # admin sees grades before the deadline
    assert 'href="/courses/so/assignments/1-hello/accounts/student"' in body
    body = text(student.get("/courses/so/grades"))             # public_results: true
    assert "<th>bob</th>" in body and ">graded<" in body and ">9<" not in body
    assert "/accounts/" not in body


def test_a_short_reason_beside_a_grade_below_the_maximum(student: FlaskClient, admin: FlaskClient,
                                                         web_course: config.CourseConfig) -> None:
    """0-past's deadline has passed, so its grades are shown; the reason is the first line
    that took points away. In the course's grades table only admins see reasons."""
    failed = submit(web_course, "0-past", "student", zip_bytes(HELLO))
    write_results(failed, {}, grade="-10: the build failed (exit status 2)\n# -5: test 2 failed\n")
    body = text(student.get("/courses/so/assignments/0-past"))
    assert '<span class="grade">0 / 10</span>' in body
    assert '<span class="reason">the build failed (exit status 2)</span>' in body
    assert "Grade lines (from the tests and graders)" in body and "# -5: test 2 failed" in body
    table = text(admin.get("/courses/so/grades"))
    assert '<span class="reason">the build failed (exit status 2)</span>' in table
    assert "the build failed" not in text(student.get("/courses/so/grades"))     # public grades, private reasons
    api = admin.get("/api/courses/so/grades").get_json()
    assert api["reasons"] == [{"account": "student", "assignment": "0-past",
                               "reason": "the build failed (exit status 2)"}]
    assert student.get("/api/courses/so/grades").get_json()["reasons"] == []


def test_grades_table_private_without_public_results(tmp_path: Path, users: Path) -> None:
    open_course(tmp_path / "priv", "http://127.0.0.1:1/")
    path = tmp_path / "priv" / "so" / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["course"]["public_results"] = False
    path.write_text(yaml.safe_dump(data))
    app = create_app(tmp_path / "priv" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    login(c, "student")
    assert c.get("/courses/so/grades").status_code == 403
    assert c.get("/api/courses/so/grades").status_code == 403
    assert "grades-link" not in text(c.get("/courses/so"))


def test_admin_recheck_moves_results_aside(admin: FlaskClient, student: FlaskClient, graded) -> None:
    path = f"{PAGE}/accounts/student/{graded.name}/recheck"
    assert student.post(path, data={"csrf_token": page_token(student, PAGE)}).status_code == 403
    assert graded.status() is SubmissionStatus.DONE
    r = admin.post(path, data={"csrf_token": page_token(admin, PAGE)}, follow_redirects=True)
    assert r.status_code == 200 and "will be tested again" in text(r)
    assert graded.status() is SubmissionStatus.SAVED
    assert (graded.path / "results.1" / "run-stdout.vmr").exists()


def test_penalty_rules_text() -> None:
    base = Assignment(id="a", deadline=confparse.parse_datetime("2026-01-01 00:00:00"), machine="m")
    assert penalty_rules(base).startswith("day 1: 0.5, day 2: 0.5, day 3 and after: 1 per day; at most 4 points")
    one = dataclasses.replace(base, penalty_weights=[2.0], penalty_limit=6.0)
    assert penalty_rules(one).startswith("2 per day late; at most 6 points")
    assert penalty_rules(dataclasses.replace(base, hard_deadline=True)).startswith("Hard deadline")


def test_submit_only_submission_does_not_wait_for_a_queue(tmp_path: Path, users: Path) -> None:
    course = open_course(tmp_path / "so-only", "http://127.0.0.1:1/", submit_only=True)
    submit(course, "1-hello", "student", zip_bytes(HELLO))
    app = create_app(tmp_path / "so-only" / "global.yaml", users, secret_key="k" * 32)
    c = app.test_client()
    login(c, "student")
    body = text(c.get(PAGE))
    assert 'data-status="saved"' in body and "no estimate" not in body and 'http-equiv="refresh"' not in body
    assert ">waiting for a grader</span>" in body
