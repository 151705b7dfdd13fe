"""vmchecker's web interface: a Flask application served by waitress (``vmchecker-web``).

:func:`create_app` wires the pieces: logins (:mod:`.auth`, :mod:`.passwords`,
:mod:`.ldapauth`, :mod:`.throttle`), CSRF (:mod:`.csrf`), the pages (:mod:`.views`; a grader's, :mod:`.grader`)
and the JSON API (:mod:`.api`), both built on :mod:`.model`. Templates autoescape;
responses carry a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from vmchecker import config, penalty
from vmchecker.errors import VmcheckerError
from vmchecker.storer.web import api, auth, csrf, grader, views
from vmchecker.storer.web.context import WebSettings
from vmchecker.storer.web.ldapauth import LdapAuthenticator, LdapSettings
from vmchecker.storer.web.passwords import PasswordFile
from vmchecker.storer.web.throttle import Limits, Throttle

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 64 * 1024 * 1024   # the request cap; each assignment's own limit is checked by submit
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
                                " frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(global_config_path: Path | str | None, users_file: Path | str | None,
               ldap_settings: LdapSettings | None = None, secret_key: str | bytes | None = None,
               throttle_limits: Limits | None = None, secure_cookies: bool = False,
               daemon_timeout: float = 2.0, max_body: int = MAX_UPLOAD_BYTES) -> Flask:
    """The WSGI application. ``secret_key`` signs the session cookies: without one a random
    key is made, and every session ends when the process does. ``max_body`` caps a
    request's body (``vmchecker-web``: the largest upload plus its form)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        SESSION_COOKIE_NAME="vmchecker_session",
        PERMANENT_SESSION_LIFETIME=auth.SESSION_LIFETIME,   # the cookie's; the login's own age is checked too
        MAX_CONTENT_LENGTH=max_body,
    )
    app.extensions["vmchecker_settings"] = WebSettings(config.global_config_path(global_config_path),
                                                       daemon_timeout)
    passwords = PasswordFile(users_file) if users_file else None
    ldap = LdapAuthenticator(ldap_settings) if ldap_settings else None
    if passwords is None and ldap is None:
        log.warning("no password file and no LDAP: nobody can log in")
    auth.init_app(app, auth.Authenticator(passwords, ldap, Throttle(throttle_limits or Limits())))
    csrf.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(grader.bp)
    app.register_blueprint(api.bp)
    app.jinja_env.globals["current_user"] = auth.current_user
    app.jinja_env.filters["points"] = penalty.format_points
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(VmcheckerError, _vmchecker_error)
    app.after_request(_secure_headers)
    return app


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _http_error(exc: HTTPException):
    message = exc.description or exc.name
    if _wants_json():
        return jsonify(error=message), exc.code
    return render_template("error.html", code=exc.code, message=message), exc.code


def _vmchecker_error(exc: VmcheckerError):
    """A config or repository problem met while serving: logged, and told plainly."""
    log.error("%s %s: %s", request.method, request.path, exc.message)
    message = "The server could not read this course's data; the course's staff has been told in the log."
    if _wants_json():
        return jsonify(error=message), 500
    return render_template("error.html", code=500, message=message), 500


def _secure_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response
