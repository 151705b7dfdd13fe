"""Who is logged in: the password file first, then LDAP; login throttling; the session.

The session (Flask's signed cookie) holds only the account name and the CSRF token.
Logging in clears whatever the session held before (no fixation of a pre-login session).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, abort, current_app, g, redirect, request, session, url_for

from vmchecker.storer.web import csrf
from vmchecker.storer.web.ldapauth import LdapAuthenticator
from vmchecker.storer.web.passwords import NAME_RE, PasswordFile
from vmchecker.storer.web.throttle import Throttle

log = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    message: str = ""
    throttled: bool = False


class Authenticator:
    """Checks a name and password against the password file, then LDAP, under throttling."""

    def __init__(self, passwords: PasswordFile | None, ldap: LdapAuthenticator | None, throttle: Throttle):
        self.passwords = passwords
        self.ldap = ldap
        self.throttle = throttle

    def _verify(self, name: str, password: str) -> bool:
        if self.passwords is not None and self.passwords.verify(name, password):
            return True
        return self.ldap is not None and self.ldap.authenticate(name, password)

    def login(self, name: str, password: str, address: str) -> LoginResult:
        name = (name or "").strip()
        wait = self.throttle.retry_after(name, address)
        if wait > 0:
            return LoginResult(False, f"Too many failed logins. Try again in {int(wait) + 1} seconds.", True)
        ok = (bool(NAME_RE.match(name)) and 0 < len(password or "") <= MAX_PASSWORD_LENGTH
              and self._verify(name, password))
        if not ok:
            self.throttle.failed(name, address)
            return LoginResult(False, "Wrong user name or password.")
        self.throttle.succeeded(name)
        log.info("login %s from %s", name, address)
        return LoginResult(True)


def authenticator() -> Authenticator:
    return current_app.extensions["vmchecker_auth"]


def start_session(name: str) -> None:
    session.clear()
    session["user"] = name
    session.permanent = True
    csrf.rotate()


def end_session() -> None:
    session.clear()
    csrf.rotate()


def current_user() -> str | None:
    return session.get("user")


def login_required(api: bool = False) -> Callable:
    """Pages send an anonymous visitor to the login page; the API answers 401."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                if api:
                    abort(401)
                return redirect(url_for("pages.login", next=request.full_path))
            g.user = user
            return view(*args, **kwargs)
        return wrapper
    return decorate


def init_app(app: Flask, auth: Authenticator) -> None:
    app.extensions["vmchecker_auth"] = auth
