"""The pages a grader works in: one submission (its results, grade lines, earlier grade
files, the student's files and the form that adds grade lines), one of its files
highlighted, and an account's grades over time.

Who sees what is :mod:`.model`'s and :mod:`.context`'s, as everywhere: a submission and
its files are shown to its account and the course's admins; only an admin adds grade
lines (:mod:`vmchecker.grading` checks and saves them, as ``vmchecker-grade`` does). The
form carries the session's CSRF token like every other (:mod:`.csrf`).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for

from vmchecker import grading, penalty
from vmchecker.assignments import Assignment
from vmchecker.config import CourseConfig
from vmchecker.contract import ACCOUNT_RE, WAITING_STATUSES
from vmchecker.errors import GradeRefused, NotFound
from vmchecker.repo import Repository, Submission
from vmchecker.storer.web import context, model, overview, sources
from vmchecker.storer.web.auth import login_required

log = logging.getLogger(__name__)

bp = Blueprint("grading", __name__)
SUBMISSION = "/courses/<course_id>/assignments/<assignment_id>/accounts/<account>/<submission>"
MAX_FORM_LINES = 16 * 1024     # characters of the grade form's text
EARLIER_SHOWN = 16 * 1024      # characters of an earlier grade file shown
REFRESH_WHILE_WAITING = 10


def _find(course_id: str, assignment_id: str, account: str, submission: str) -> tuple[CourseConfig, Assignment,
                                                                                      Submission]:
    course = context.course_or_404(course_id)
    task = context.assignment_or_404(course, assignment_id)
    context.account_or_403(course, account)
    try:
        return course, task, model.find_submission(course, task, account, submission)
    except NotFound as exc:
        abort(404, description=exc.message)


def _page(course: CourseConfig, task: Assignment, sub: Submission, draft: str = "", code: int = 200):
    now = context.now()
    admin = model.is_admin(course, g.user)
    waiting = sub.status() in WAITING_STATUSES and not task.submit_only
    current = Repository(course).current(task.id, sub.account)
    view = model.submission_view(course, task, sub, g.user, context.queue_jobs(course) if waiting else None, now,
                                 current is not None and current.path == sub.path)
    files, cut = sources.list_files(sub.files_dir)
    earlier = []
    if admin:
        earlier = [(p.name, p.read_text(encoding="utf-8", errors="replace")[:EARLIER_SHOWN])
                   for p in reversed(grading.earlier_versions(sub))]
    gradable = admin
    if admin:
        try:
            grading.check_gradable(course, sub)
        except GradeRefused:
            gradable = False
    return render_template("submission.html", course=course, task=model.assignment_view(task, now), s=view,
                           files=files, files_cut=cut, admin=admin, gradable=gradable, draft=draft,
                           earlier=earlier, example=grading.EXAMPLE,
                           refresh=REFRESH_WHILE_WAITING if waiting and not draft else 0), code


@bp.route(SUBMISSION)
@login_required()
def submission(course_id: str, assignment_id: str, account: str, submission: str):
    return _page(*_find(course_id, assignment_id, account, submission))


@bp.route(SUBMISSION + "/grade", methods=["POST"])
@login_required()
def grade(course_id: str, assignment_id: str, account: str, submission: str):
    course, task, sub = _find(course_id, assignment_id, account, submission)
    context.admin_or_403(course)
    text = request.form.get("lines", "")
    try:
        if len(text) > MAX_FORM_LINES:
            raise GradeRefused(f"the lines are longer than {MAX_FORM_LINES} characters in all")
        saved = grading.add_lines(course, sub, text.splitlines(), g.user)
    except GradeRefused as exc:
        flash(f"Not saved: {exc.message}", "error")
        return _page(course, task, sub, draft=text, code=422)
    result = saved.result
    flash(f"Saved. The grade is now {penalty.format_points(result.grade or 0)}"
          f" / {penalty.format_points(result.total_points)}.", "info")
    return redirect(url_for("grading.submission", course_id=course.id, assignment_id=task.id, account=account,
                            submission=sub.name))


@bp.route(SUBMISSION + "/files/<path:path>")
@login_required()
def source(course_id: str, assignment_id: str, account: str, submission: str, path: str):
    course, task, sub = _find(course_id, assignment_id, account, submission)
    try:
        shown = sources.read_source(sub.files_dir, path)
    except NotFound as exc:
        abort(404, description=exc.message)
    return render_template("source.html", course=course, task=model.assignment_view(task, context.now()),
                           account=account, submission=sub.name, source=shown)


@bp.route("/highlight.css")
def highlight_css():
    """Pygments' CSS for the highlighted files: from this site, as the CSP wants."""
    response = Response(sources.stylesheet(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.route("/courses/<course_id>/history/<account>")
@login_required()
def history(course_id: str, account: str):
    course = context.course_or_404(course_id)
    context.account_or_403(course, account)
    if not ACCOUNT_RE.match(account):
        abort(404, description=f"There is no account {account!r}.")
    found = overview.account_history(course, account, g.user, context.now())
    return render_template("history.html", course=course, account=account, history=found)
