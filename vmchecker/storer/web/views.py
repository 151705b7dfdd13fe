"""The HTML pages: login, courses, a course's assignments, an assignment's upload form
and submissions, an admin's grades table and recheck."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from vmchecker.errors import NotFound
from vmchecker.storer.web import auth, context, model, overview, uploads
from vmchecker.storer.web.auth import login_required

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)
REFRESH_WHILE_WAITING = 10  # seconds between reloads of a page with a waiting submission
MAX_NEXT = 2000             # longest ?next= path followed after login
MAX_SHOWN_NAME = 64         # a refused login's name is shown back (in the form) up to this length


def _safe_next(target: str | None) -> str:
    """Only a path on this site; anything else goes to the courses: ``//evil.example``,
    ``https://...``, a backslash (``/\\evil.example``), and any control or other
    non-printable character. Browsers drop tabs and newlines from a URL, so
    ``/<TAB>/evil.example`` would be ``//evil.example``; a newline would also break the
    Location header."""
    if (target and len(target) <= MAX_NEXT and target.startswith("/") and not target.startswith("//")
            and target.isprintable() and "\\" not in target and not urlsplit(target).netloc):
        return target
    return url_for("pages.courses")


@bp.route("/")
def index():
    return redirect(url_for("pages.courses"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    name = request.form.get("username", "")
    result = auth.authenticator().login(name, request.form.get("password", ""), request.remote_addr or "")
    if not result.ok:
        flash(result.message, "error")
        return render_template("login.html", next=request.form.get("next", ""), username=name[:MAX_SHOWN_NAME]), \
            429 if result.throttled else 401
    auth.start_session(result)
    return redirect(_safe_next(request.form.get("next")))


@bp.route("/logout", methods=["POST"])
def logout():
    auth.end_session()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.login"))


@bp.route("/courses")
@login_required()
def courses():
    shown = [(c, model.is_admin(c, g.user)) for c in context.my_courses()]
    return render_template("courses.html", courses=shown)


@bp.route("/courses/<course_id>")
@login_required()
def course(course_id: str):
    course = context.course_or_404(course_id)
    now = context.now()
    tasks = [model.assignment_view(t, now) for t in model.visible_assignments(course, g.user)]
    return render_template("course.html", course=course, assignments=tasks,
                           admin=model.is_admin(course, g.user),
                           grades=model.can_see_grades(course, g.user))


def _submissions_page(course_id: str, assignment_id: str, account: str):
    """``account``'s submissions; a team's member sees the team's (``Teams.owner``)."""
    course = context.course_or_404(course_id)
    task = context.assignment_or_404(course, assignment_id)
    account = course.teams.owner(task.id, account)
    context.account_or_403(course, account)
    now = context.now()
    subs = model.submissions(course, task, account, g.user, context.queue_jobs(course), now,
                             context.timelines(course))
    return render_template("assignment.html", course=course, task=model.assignment_view(task, now),
                           account=account, own=account == course.teams.owner(task.id, g.user), submissions=subs,
                           team=course.teams.team_for(task.id, account),
                           admin=model.is_admin(course, g.user),
                           refresh=REFRESH_WHILE_WAITING if any(s.waiting for s in subs) else 0)


@bp.route("/courses/<course_id>/assignments/<assignment_id>")
@login_required()
def assignment(course_id: str, assignment_id: str):
    return _submissions_page(course_id, assignment_id, g.user)


@bp.route("/courses/<course_id>/assignments/<assignment_id>/accounts/<account>")
@login_required()
def account_submissions(course_id: str, assignment_id: str, account: str):
    return _submissions_page(course_id, assignment_id, account)


@bp.route("/courses/<course_id>/assignments/<assignment_id>/upload", methods=["POST"])
@login_required()
def upload(course_id: str, assignment_id: str):
    course = context.course_or_404(course_id)
    context.assignment_or_404(course, assignment_id)
    outcome = uploads.upload(course, assignment_id, g.user, request.files.get("archive"),
                             context.settings().daemon_timeout)
    flash(outcome.message, "info" if outcome.ok else "error")
    return redirect(url_for("pages.assignment", course_id=course_id, assignment_id=assignment_id))


@bp.route("/courses/<course_id>/assignments/<assignment_id>/accounts/<account>/<submission>/recheck",
          methods=["POST"])
@login_required()
def recheck(course_id: str, assignment_id: str, account: str, submission: str):
    course = context.course_or_404(course_id)
    context.admin_or_403(course)
    task = context.assignment_or_404(course, assignment_id)
    try:
        sub = model.find_submission(course, task, account, submission)
    except NotFound as exc:
        return render_template("error.html", code=404, message=exc.message), 404
    outcome = uploads.recheck_submission(course, sub, context.settings().daemon_timeout)
    flash(outcome.message, "info" if outcome.ok else "error")
    return redirect(url_for("pages.account_submissions", course_id=course_id, assignment_id=assignment_id,
                            account=account))


@bp.route("/courses/<course_id>/grades")
@login_required()
def grades(course_id: str):
    course = context.course_or_404(course_id)
    if not model.can_see_grades(course, g.user):
        return render_template("error.html", code=403,
                               message="This course's grades are shown to its admins only."), 403
    now = context.now()
    return render_template("grades.html", course=course, table=model.grades_table(course, g.user, now),
                           stats=overview.course_stats(course, g.user, now), admin=model.is_admin(course, g.user))
