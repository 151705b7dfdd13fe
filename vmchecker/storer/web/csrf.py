"""CSRF protection: one random token per session, required on every state-changing request.

Forms carry it in a hidden ``csrf_token`` field; the JSON API sends it in the
``X-CSRF-Token`` header (``GET /api/session`` hands it out). Another site can make a
browser send the session cookie (SameSite=Lax stops most of that, not all), but cannot
read the token. The one exception is ``POST /api/login`` with a JSON body: a browser
sends cross-site JSON only after a CORS preflight this app never answers.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from flask import Flask, abort, request, session

log = logging.getLogger(__name__)

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
JSON_ONLY_ENDPOINTS = ("api.login",)


def token() -> str:
    """The session's token, made on first use."""
    if FIELD not in session:
        session[FIELD] = secrets.token_urlsafe(32)
    return session[FIELD]


def rotate() -> None:
    """A fresh token (at login and logout, so a token seen before login is useless after)."""
    session[FIELD] = secrets.token_urlsafe(32)


def _check() -> None:
    if request.method in SAFE_METHODS:
        return
    if request.endpoint in JSON_ONLY_ENDPOINTS and request.is_json:
        return
    sent = request.headers.get(HEADER) or request.form.get(FIELD) or ""
    expected = session.get(FIELD, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        log.warning("CSRF token missing or wrong: %s %s from %s", request.method, request.path,
                    request.remote_addr)
        abort(400, description="The form expired or did not come from this site. Reload the page and try again.")


def init_app(app: Flask) -> None:
    app.before_request(_check)
    app.jinja_env.globals["csrf_token"] = token
