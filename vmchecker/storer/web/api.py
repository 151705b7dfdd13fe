"""The JSON API under ``/api/``: the original's services with modern names.

=====================================================  ==================  ===============
endpoint                                               original            who
=====================================================  ==================  ===============
GET  /api/session                                      -                   anyone
POST /api/login   {"username", "password"}             login               anyone
POST /api/logout                                       logout              logged in
GET  /api/courses                                      getCourses          logged in
GET  /api/courses/C/assignments                        getAssignments      student / admin
POST /api/courses/C/assignments/A/upload  (archive)    uploadAssignment    student / admin
GET  /api/courses/C/assignments/A/results[?account=]   getUserResults      own (team's) / admin
GET  /api/courses/C/grades                             getAllGrades        admin / public
POST /api/courses/C/assignments/A/accounts/U/submissions/S/recheck         admin
=====================================================  ==================  ===============

Every POST but login needs the session's CSRF token in ``X-CSRF-Token``. A course's
calls answer 403 to an account that is neither one of its students nor an admin
(``/api/courses`` lists only the courses the account takes part in).
Errors are ``{"error": message}`` with the HTTP status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from flask import Blueprint, abort, g, jsonify, request

from vmchecker.confparse import format_datetime
from vmchecker.errors import NotFound
from vmchecker.storer.web import auth, context, csrf, model, uploads
from vmchecker.storer.web.auth import login_required

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")


def plain(value: Any) -> Any:
    """Dataclasses, tuples and datetimes as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


@bp.route("/session")
def session_info():
    return jsonify(user=auth.current_user(), csrf_token=csrf.token())


@bp.route("/login", methods=["POST"])
def login():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='Send JSON: {"username": ..., "password": ...}.')
    name, password = body.get("username"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        abort(400, description="username and password must be strings.")
    result = auth.authenticator().login(name, password, request.remote_addr or "")
    if not result.ok:
        return jsonify(error=result.message), 429 if result.throttled else 401
    auth.start_session(result)
    return jsonify(user=auth.current_user(), csrf_token=csrf.token())


@bp.route("/logout", methods=["POST"])
def logout():
    auth.end_session()
    return jsonify(user=None, csrf_token=csrf.token())


@bp.route("/courses")
@login_required(api=True)
def courses():
    return jsonify([{"id": c.id, "name": c.course.name, "admin": model.is_admin(c, g.user),
                     "public_results": c.course.public_results} for c in context.my_courses()])


@bp.route("/courses/<course_id>/assignments")
@login_required(api=True)
def assignments(course_id: str):
    course = context.course_or_404(course_id)
    now = context.now()
    return jsonify([plain(model.assignment_view(t, now)) for t in model.visible_assignments(course, g.user)])


@bp.route("/courses/<course_id>/assignments/<assignment_id>/upload", methods=["POST"])
@login_required(api=True)
def upload(course_id: str, assignment_id: str):
    course = context.course_or_404(course_id)
    context.assignment_or_404(course, assignment_id)
    outcome = uploads.upload(course, assignment_id, g.user, request.files.get("archive"),
                             context.settings().daemon_timeout)
    if not outcome.ok:
        return jsonify(error=outcome.message), 422
    sub = outcome.submission
    return jsonify(message=outcome.message, submission=sub.name, status=sub.status().value,
                   queued=outcome.queued), 201


@bp.route("/courses/<course_id>/assignments/<assignment_id>/results")
@login_required(api=True)
def results(course_id: str, assignment_id: str):
    course = context.course_or_404(course_id)
    task = context.assignment_or_404(course, assignment_id)
    account = context.account_or_403(course, course.teams.owner(task.id, request.args.get("account", g.user)))
    subs = model.submissions(course, task, account, g.user, context.queue_jobs(course), context.now(),
                             context.timelines(course))
    team = course.teams.team_for(task.id, account)
    return jsonify(course=course.id, assignment=task.id, account=account, submissions=plain(subs),
                   team={"name": team.name, "members": list(team.members)} if team else None)


@bp.route("/courses/<course_id>/grades")
@login_required(api=True)
def grades(course_id: str):
    course = context.course_or_404(course_id)
    if not model.can_see_grades(course, g.user):
        abort(403, description="This course's grades are shown to its admins only.")
    table = model.grades_table(course, g.user, context.now())
    return jsonify(course=course.id, assignments=[a.id for a in table.assignments],
                   grades=[{"account": account, **{a.id: table.cells.get((account, a.id)) for a in table.assignments}}
                           for account in table.accounts],
                   reasons=[{"account": account, "assignment": assignment, "reason": reason}
                            for (account, assignment), reason in sorted(table.reasons.items())])


@bp.route("/courses/<course_id>/assignments/<assignment_id>/accounts/<account>/submissions/<submission>/recheck",
          methods=["POST"])
@login_required(api=True)
def recheck(course_id: str, assignment_id: str, account: str, submission: str):
    course = context.course_or_404(course_id)
    context.admin_or_403(course)
    task = context.assignment_or_404(course, assignment_id)
    try:
        sub = model.find_submission(course, task, account, submission)
    except NotFound as exc:
        abort(404, description=exc.message)
    outcome = uploads.recheck_submission(course, sub, context.settings().daemon_timeout)
    if not outcome.ok:
        return jsonify(error=outcome.message), 409
    return jsonify(message=outcome.message, submission=sub.name, queued=outcome.queued)
