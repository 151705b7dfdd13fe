"""Grading on the web in a real browser (Debian's Chromium driven by Playwright, against
``vmchecker-web`` in its own process): a grader reads a student's files, adds a grade line,
and the student, logged in afterwards, sees the new grade; the grades page draws the
distribution of grades as an SVG histogram whose bars count the right submissions.

No tester runs: the results are written into the submissions as the storer daemon would
(the end-to-end grading lives with the daemon's tests). Screenshots go to
``artifacts/screenshots/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import zip_bytes
from tests.web.helpers import HELLO, PASSWORDS, write_results
from tests.web.test_browser import log_in, page, reason, shot, site  # noqa: F401  (fixtures)
from vmchecker.repo import Repository
from vmchecker.submit import submit

pytestmark = [pytest.mark.browser, pytest.mark.skipif(reason is not None, reason=reason or "")]

SOURCE = {**HELLO, "list.c": "void list_free(struct node *n) {\n    /* </pre><script>window.pwned = 1</script> */\n}\n"}


def test_a_grader_adds_a_line_and_the_student_sees_the_new_grade(site, page) -> None:  # noqa: F811
    server, course = site
    url = server.url
    sub = submit(course, "1-hello", "student", zip_bytes(SOURCE))
    write_results(sub, {"run-stdout.vmr": "Hello, world!\n"}, grade="-2: test 3 failed\n")

    log_in(page, url, "alice", PASSWORDS["alice"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello/accounts/student")
    page.click("#submission-1 a.open-submission")
    page.wait_for_selector("#grade-form")
    assert page.inner_text("#grade") == "8 / 10"
    assert "Hello, world!" in page.inner_text("#results")
    page.click("#files a:text-is('list.c')")                     # the student's file, highlighted
    page.wait_for_selector("#source")
    assert page.inner_text("#source-name") == "list.c"
    assert "<script>window.pwned = 1</script>" in page.inner_text("#source")   # shown as text
    assert page.locator("#source span.kt").count() > 0           # C keywords have their class
    assert page.evaluate("typeof window.pwned") == "undefined"
    shot(page, "20-source")
    page.go_back()

    page.fill("#grade-lines", "-0.5: leak in list_free\n+bad line")
    page.click("#grade-submit")                                  # refused: nothing saved, the text kept
    assert "is not a grade line" in page.inner_text(".flash.error")
    assert page.input_value("#grade-lines") == "-0.5: leak in list_free\n+bad line"
    assert sub.grade_text() == "-2: test 3 failed\n"
    page.fill("#grade-lines", "-0.5: leak in list_free")
    page.click("#grade-submit")
    page.wait_for_selector(".flash.info")
    assert "The grade is now 7.5 / 10" in page.inner_text(".flash.info")
    assert page.inner_text("#grade") == "7.5 / 10"
    assert "-0.5: leak in list_free" in page.inner_text("#grade-lines-text")
    assert "Earlier grade files (1)" in page.inner_text("#grading")
    shot(page, "21-graded")
    page.click("header button")                                  # log out
    page.wait_for_url(f"{url}/login")

    log_in(page, url, "student", PASSWORDS["student"])
    page.wait_for_url(f"{url}/courses")
    page.goto(f"{url}/courses/so/assignments/1-hello")
    assert page.inner_text("#submission-1 .grade") == "7.5 / 10"
    assert "leak in list_free" in page.inner_text("#submission-1 .grade-lines")
    assert "# graded by alice on " in page.inner_text("#submission-1 .grade-lines")
    shot(page, "22-student-sees-grade")


def test_the_grades_page_draws_the_histogram(site, page, tmp_path: Path) -> None:  # noqa: F811
    server, course = site
    for account, grade in (("student", "done\n"), ("bob", "-0.5: style\n"), ("carol", "-10: the build failed\n"),
                           ("Erin", "-0.25: naming\n")):
        write_results(submit(course, "1-hello", account, zip_bytes(HELLO)), {}, grade=grade)
    submit(course, "1-hello", "zed", zip_bytes(HELLO))          # not graded yet
    assert Repository(course).current("1-hello", "zed") is not None

    log_in(page, server.url, "alice", PASSWORDS["alice"])
    page.wait_for_url(f"{server.url}/courses")
    page.goto(f"{server.url}/courses/so/grades")
    chart = page.locator("#stats-1-hello svg.histogram")
    assert chart.count() == 1 and chart.bounding_box()["height"] > 50
    bars = page.locator("#stats-1-hello svg.histogram rect.bar")
    counts = {bars.nth(i).get_attribute("data-range"): int(bars.nth(i).get_attribute("data-count"))
              for i in range(bars.count())}
    assert len(counts) == 10
    assert {r: n for r, n in counts.items() if n} == {"0–1": 1, "9–10": 3}
    tallest = bars.nth(9).bounding_box()["height"]
    assert tallest > 0 and bars.nth(0).bounding_box()["height"] == pytest.approx(tallest / 3, rel=0.05)
    assert page.inner_text("#stats-1-hello [data-count=submitted]") == "5"
    assert page.inner_text("#stats-1-hello [data-count=waiting]") == "1"
    assert page.locator("script").count() == 0
    shot(page, "23-grades-histogram")
