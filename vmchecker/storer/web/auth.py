"""Who is logged in: the password file first, then LDAP; login throttling; the session.

The session (Flask's signed cookie) holds the account name, where it was checked
(``file`` or ``ldap``), the login time and the CSRF token. Logging in clears whatever
the session held before (no fixation of a pre-login session).

A signed cookie cannot be taken back, so every request checks it again:

- a session older than :data:`SESSION_LIFETIME` since its *login* is refused, however
  often it was refreshed (Flask re-signs a permanent session on every request);
- a session of a password-file account that is no longer in the file is refused;
- logging out records, in memory, "sessions of this account started before now are
  void": a copy of the cookie taken before the logout stops working, and so do the
  account's sessions in other browsers (logout means everywhere). The record is lost
  when the process restarts; the lifetime still ends such a copy within 12 hours.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, abort, current_app, g, redirect, request, session, url_for

from vmchecker.contract import ACCOUNT_RE
from vmchecker.storer.web import csrf
from vmchecker.storer.web.ldapauth import LdapAuthenticator
from vmchecker.storer.web.passwords import PasswordFile
from vmchecker.storer.web.throttle import Throttle

log = logging.getLogger(__name__)

MAX_PASSWORD_LENGTH = 1024
SESSION_LIFETIME = dt.timedelta(hours=12)
SHOWN_NAME = 64          # a failed login's name is logged up to this many characters
SOURCE_FILE = "file"
SOURCE_LDAP = "ldap"


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    message: str = ""
    throttled: bool = False
    user: str = ""          # the account: the password file's name, or LDAP's spelling of it
    source: str = ""        # SOURCE_FILE or SOURCE_LDAP


def shown(name: str) -> str:
    """``name`` for a log line: repr'd, cut to :data:`SHOWN_NAME` characters."""
    if len(name) <= SHOWN_NAME:
        return repr(name)
    return f"{name[:SHOWN_NAME]!r}... ({len(name)} characters)"


class Authenticator:
    """Checks a name and password against the password file, then LDAP, under
    throttling; tells whether a session is still good."""

    def __init__(self, passwords: PasswordFile | None, ldap: LdapAuthenticator | None, throttle: Throttle,
                 lifetime: dt.timedelta = SESSION_LIFETIME, clock: Callable[[], float] = time.time):
        self.passwords = passwords
        self.ldap = ldap
        self.throttle = throttle
        self.lifetime = lifetime.total_seconds()
        self.clock = clock
        self._lock = threading.Lock()
        self._void_before: dict[str, float] = {}   # account -> sessions started up to then are void

    def _verify(self, name: str, password: str) -> tuple[str, str] | None:
        if self.passwords is not None and self.passwords.verify(name, password):
            return name, SOURCE_FILE
        if self.ldap is None:
            return None
        found = self.ldap.authenticate(name, password)
        if found is None:
            return None
        if not ACCOUNT_RE.match(found):
            log.warning("LDAP accepted %s, but its name %s is not a valid account name; refusing",
                        shown(name), shown(found))
            return None
        return found, SOURCE_LDAP

    def login(self, name: str, password: str, address: str) -> LoginResult:
        name = (name or "").strip()
        account = name if ACCOUNT_RE.match(name) else None   # no account has another name: address only
        wait = self.throttle.retry_after(account, address)
        if wait > 0:
            return LoginResult(False, f"Too many failed logins. Try again in {int(wait) + 1} seconds.", True)
        found = None
        if account is not None and 0 < len(password or "") <= MAX_PASSWORD_LENGTH:
            found = self._verify(account, password)
        if found is None:
            self.throttle.failed(account, address)
            log.info("failed login for %s from %s", shown(name), address)
            return LoginResult(False, "Wrong user name or password.")
        user, source = found
        self.throttle.succeeded(user, address)
        log.info("login %s (%s) from %s", user, source, address)
        return LoginResult(True, user=user, source=source)

    def revoke(self, user: str) -> None:
        """Void every session of ``user`` started until now (in memory)."""
        now = self.clock()
        with self._lock:
            self._void_before = {u: t for u, t in self._void_before.items() if t > now - self.lifetime}
            self._void_before[user] = now

    def session_valid(self, user: str, source: Any, login_at: float) -> bool:
        """True when a session of ``user`` that logged in at ``login_at`` still counts."""
        if self.clock() - login_at > self.lifetime:
            return False
        with self._lock:
            void_before = self._void_before.get(user)
        if void_before is not None and login_at <= void_before:
            return False
        if source == SOURCE_FILE:
            return self.passwords is not None and self.passwords.exists(user)
        return source == SOURCE_LDAP


def authenticator() -> Authenticator:
    return current_app.extensions["vmchecker_auth"]


def start_session(result: LoginResult) -> None:
    session.clear()
    session["user"] = result.user
    session["source"] = result.source
    session["login_at"] = authenticator().clock()
    session.permanent = True
    csrf.rotate()
    g.pop("session_user", None)


def end_session() -> None:
    """Log out: this session, and every earlier copy of it, ends."""
    user = current_user()
    if user is not None:
        authenticator().revoke(user)
    session.clear()
    csrf.rotate()
    g.session_user = None


def _check_session() -> str | None:
    user, login_at = session.get("user"), session.get("login_at")
    if user is None:
        return None
    ok = (isinstance(user, str) and isinstance(login_at, (int, float)) and not isinstance(login_at, bool)
          and authenticator().session_valid(user, session.get("source"), float(login_at)))
    if not ok:
        log.info("session of %s refused (expired, logged out or removed); cleared", shown(str(user)))
        session.clear()
        return None
    return user


def current_user() -> str | None:
    """The logged-in account, or None (a session that no longer counts is cleared)."""
    if "session_user" not in g:
        g.session_user = _check_session()
    return g.session_user


LOGIN_MARK = "vmchecker_login_required"   # on a view: True for the API's 401, False for a redirect


def _anonymous(api: bool) -> Any:
    if api:
        abort(401)
    return redirect(url_for("pages.login", next=request.full_path))


def login_required(api: bool = False) -> Callable:
    """Pages send an anonymous visitor to the login page; the API answers 401."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return _anonymous(api)
            g.user = user
            return view(*args, **kwargs)
        setattr(wrapper, LOGIN_MARK, api)
        return wrapper
    return decorate


def _login_before_body() -> Any:
    """Refuse an anonymous request to a login-only view before anything reads its body
    (the CSRF check parses the form: for an upload, a multipart body)."""
    view = current_app.view_functions.get(request.endpoint or "")
    api = getattr(view, LOGIN_MARK, None)
    if api is None or current_user() is not None:
        return None
    return _anonymous(api)


def init_app(app: Flask, auth: Authenticator) -> None:
    """Called before the CSRF hook is installed, so the login check runs first."""
    app.extensions["vmchecker_auth"] = auth
    app.before_request(_login_before_body)
