"""The web interface in a real browser: Debian's Chromium driven by Playwright, against
``vmchecker-web`` served by waitress in its own process.

No tester runs here: after the upload the test writes the results into the
submission's ``results/`` folder itself, standing in for the tester and the storer
daemon (the end-to-end variant with the daemon and an LXC tester lives with the
daemon's tests). The course's daemon URL points at a closed port, so the page must
also say that testing will happen when the service is back.

Screenshots of the main pages go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.util import free_port, make_zip, zip_bytes
from tests.web.helpers import (
    ARTIFACTS,
    HELLO,
    PASSWORDS,
    WebServer,
    open_course,
    write_results,
    write_users,
)
from vmchecker.contract import SubmissionStatus
from vmchecker.repo import Repository
from vmchecker.submit import submit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    return None


reason = _skip_reason()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(reason is not None, reason=reason or "")]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[WebServer, object]]:
    course = open_course(tmp_path, f"http://127.0.0.1:{free_port()}/", show_grades_before_deadline=True)
    server = WebServer(tmp_path / "global.yaml", write_users(tmp_path / "users"), tmp_path / "secret")
    try:
        yield server, course
    finally:
        server.stop()


@pytest.fixture
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="vmck-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1100, "height": 900})
            context.set_default_timeout(15000)
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")


def test_student_uploads_reads_results_and_grade(site, page, tmp_path: Path) -> None:
    server, course = site
    url = server.url

    page.goto(f"{url}/courses")
    assert page.url.startswith(f"{url}/login")              # not logged in: sent to the login page
    log_in(page, url, "student", "not-the-password")
    assert "Wrong user name or password" in page.inner_text("main")
    assert page.url.startswith(f"{url}/login")
    shot(page, "01-login-refused")

    log_in(page, url, "student", PASSWORDS["student"])
    page.wait_for_url(f"{url}/courses")
    assert page.inner_text("#user") == "student"
    shot(page, "02-courses")
    page.click("text=Operating Systems")
    page.wait_for_url(f"{url}/courses/so")
    assert "Hello, world" in page.inner_text("main") and "Not yet" not in page.inner_text("main")
    shot(page, "03-course")

    page.click("#assignment-1-hello h2 a")
    archive = make_zip(tmp_path / "hello.zip", HELLO)
    page.set_input_files("#archive", str(archive))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector(".flash")
    assert "Your archive was saved" in page.inner_text(".flash")
    assert "will be tested when the service is back" in page.inner_text(".flash")
    assert page.get_attribute("#submission-1 .badge", "data-status") == "saved"
    shot(page, "04-uploaded")

    sub = Repository(course).current("1-hello", "student")
    assert sub is not None and sub.archive_path.read_bytes() == archive.read_bytes()
    for status in (SubmissionStatus.QUEUED, SubmissionStatus.RUNNING):            # the status moves as the daemon writes it
        sub.set_status(status)
        page.reload()
        assert page.get_attribute("#submission-1 .badge", "data-status") == status.value
    write_results(sub, {
        "build-stdout.vmr": "gcc -Wall -o hello hello.c\n",
        "run-stdout.vmr": "Hello, world!\n<script>window.pwned = 1</script>\n",
    }, grade="-1: missing newline check\n")
    page.reload()
    assert page.get_attribute("#submission-1 .badge", "data-status") == "done"
    assert page.inner_text("#submission-1 .grade") == "9 / 10"
    run = page.inner_text("pre.vmr[data-name='run-stdout.vmr']")
    assert "<script>window.pwned = 1</script>" in run              # shown as text
    assert page.locator("script").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    breakdown = page.inner_text("#submission-1 table.breakdown")
    assert "Late days\t0" in breakdown and "Grade\t9 / 10" in breakdown
    shot(page, "05-results")

    response = page.goto(f"{url}/courses/so/assignments/1-hello/accounts/bob")
    assert response.status == 403
    assert "only see your own submissions" in page.inner_text("#error-message")
    shot(page, "06-refused")

    page.click("header button")                                   # log out
    page.wait_for_url(f"{url}/login")
    assert page.goto(f"{url}/courses/so/assignments/1-hello").url.startswith(f"{url}/login")


def test_admin_sees_grades_and_rechecks(site, page, tmp_path: Path) -> None:
    server, course = site
    for account in ("bob", "student"):
        sub = submit(course, "1-hello", account, zip_bytes(HELLO))
        write_results(sub, {"run-stdout.vmr": f"output of {account}\n"}, grade="done\n")
    log_in(page, server.url, "alice", PASSWORDS["alice"])
    page.wait_for_url(f"{server.url}/courses")
    page.goto(f"{server.url}/courses/so/grades")
    table = page.inner_text("#grades-table")
    assert "bob" in table and "student" in table and "10" in table
    shot(page, "07-grades")
    page.click("#grades-table a >> nth=0")                         # bob's 1-hello
    assert "output of bob" in page.inner_text("main")
    page.click("text=Recheck")
    assert "will be tested again" in page.inner_text(".flash")
    assert page.get_attribute("#submission-1 .badge", "data-status") == "saved"
    shot(page, "08-recheck")
