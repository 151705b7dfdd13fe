"""Logins from the password file: hashes only, sessions, cookies, throttling, logout."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.web.conftest import login, page_token
from tests.web.helpers import PASSWORDS, write_users
from vmchecker.cli.web import read_secret
from vmchecker.storer.web import create_app
from vmchecker.storer.web.auth import Authenticator
from vmchecker.storer.web.passwords import PasswordFile, verify_hash
from vmchecker.storer.web.throttle import Limits, Throttle


def test_password_file_holds_hashes_only(users: Path) -> None:
    text = users.read_text()
    assert all(pw not in text for pw in PASSWORDS.values())
    assert all(line.split(":", 1)[1].startswith("$argon2id$") for line in text.splitlines())
    pf = PasswordFile(users)
    assert pf.verify("student", "student-pw")
    assert not pf.verify("student", "bob-pw")
    assert not pf.verify("nobody", "student-pw")


def test_bcrypt_lines_from_htpasswd_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# comment\nolga:" + bcrypt.hashpw(b"olga-pw", bcrypt.gensalt(4)).decode() + "\nbroken line\n")
    pf = PasswordFile(path)
    assert pf.verify("olga", "olga-pw") and not pf.verify("olga", "olga")
    assert pf.names() == ["olga"]
    assert not verify_hash("plain-text", "plain-text")  # a plain password in the file never matches


def test_add_user_command(tmp_path: Path) -> None:
    path = tmp_path / "users"
    for pw in ("first-pw", "second-pw"):
        done = subprocess.run([sys.executable, "-m", "vmchecker.cli.web", "--users", str(path), "--add-user", "eve"],
                              input=pw + "\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "second-pw" not in path.read_text() and path.read_text().count("eve:") == 1
    assert path.stat().st_mode & 0o777 == 0o600
    pf = PasswordFile(path)
    assert pf.verify("eve", "second-pw") and not pf.verify("eve", "first-pw")
    bad = subprocess.run([sys.executable, "-m", "vmchecker.cli.web", "--users", str(path), "--add-user", "../x"],
                         input="pw\n", capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "bad user name" in bad.stderr


def test_login_sets_a_signed_httponly_lax_cookie(client: FlaskClient) -> None:
    r = login(client, "student")
    assert r.status_code == 302 and r.headers["Location"] == "/courses"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "student" in client.get("/courses").get_data(as_text=True)


def test_cookie_signed_with_another_key_is_not_a_session(tmp_path: Path, users: Path, client: FlaskClient) -> None:
    other = create_app(tmp_path / "global.yaml", users, secret_key="another-key-0123456789")
    elsewhere = other.test_client()
    assert login(elsewhere, "alice").status_code == 302
    client.set_cookie("vmchecker_session", elsewhere.get_cookie("vmchecker_session").value)
    assert client.get("/courses").status_code == 302  # back to the login page
    assert client.get("/api/courses").status_code == 401


def test_wrong_password_and_unknown_user_refused(client: FlaskClient) -> None:
    for name, pw in (("student", "bob-pw"), ("nobody", "x"), ("student", ""), ("../etc", "x")):
        r = login(client, name, pw) if pw else client.post("/login", data={
            "username": name, "password": "", "csrf_token": page_token(client, "/login")})
        assert r.status_code == 401, name
        assert "Wrong user name or password" in r.get_data(as_text=True)
    assert client.get("/courses").status_code == 302


def test_anonymous_visitor_is_sent_to_login(client: FlaskClient) -> None:
    r = client.get("/courses/so/assignments/1-hello")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    assert client.get("/api/courses").status_code == 401


NEXT_CASES = [
    ("/courses/so", "/courses/so"),
    ("/courses/so?x=1", "/courses/so?x=1"),
    ("//evil.example/x", "/courses"),
    ("https://evil.example/", "/courses"),
    ("/\\evil.example", "/courses"),
    ("/\t/evil.example", "/courses"),          # browsers drop the tab: //evil.example
    ("/\n/evil.example", "/courses"),          # used to be a 500 (newline in a header)
    ("/\r\nSet-Cookie: x=1", "/courses"),
    ("/\x00/evil.example", "/courses"),
    ("/\x7f/evil.example", "/courses"),
    ("/\u2028/evil.example", "/courses"),      # a line separator: not printable
    ("evil.example", "/courses"),
]


@pytest.mark.parametrize(("target", "expected"), NEXT_CASES)
def test_next_goes_only_to_this_site(client: FlaskClient, target: str, expected: str) -> None:
    r = client.post("/login", data={"username": "student", "password": "student-pw",
                                     "csrf_token": page_token(client, "/login"), "next": target})
    assert r.status_code == 302 and r.headers["Location"] == expected


def test_next_from_the_login_link_with_a_tab(client: FlaskClient) -> None:
    """The whole way: ``/login?next=/%09/evil.example``, the form carries it, login."""
    page = client.get("/login?next=/%09/evil.example").get_data(as_text=True)
    carried = re.search(r'name="next" value="([^"]*)"', page).group(1)
    assert carried == "/\t/evil.example"
    r = client.post("/login", data={"username": "student", "password": "student-pw",
                                     "csrf_token": page_token(client, "/login"), "next": carried})
    assert r.status_code == 302 and r.headers["Location"] == "/courses"


def test_logout_ends_the_session(student: FlaskClient) -> None:
    token = page_token(student, "/courses")
    assert student.post("/logout", data={"csrf_token": token}).status_code == 302
    assert student.get("/courses").status_code == 302


def test_a_cookie_copied_before_logout_stops_working(app: Flask, student: FlaskClient) -> None:
    thief = app.test_client()
    thief.set_cookie("vmchecker_session", student.get_cookie("vmchecker_session").value)
    assert thief.get("/courses").status_code == 200                 # the copy works while logged in
    assert student.post("/logout", data={"csrf_token": page_token(student, "/courses")}).status_code == 302
    assert thief.get("/courses").status_code == 302
    assert thief.get("/api/courses").status_code == 401
    assert thief.get("/api/session").get_json()["user"] is None
    assert login(student, "student").status_code == 302             # a new login is a new session
    assert student.get("/courses").status_code == 200
    bob = app.test_client()                                         # other accounts are untouched
    assert login(bob, "bob").status_code == 302
    assert bob.get("/courses").status_code == 200


def test_session_ends_when_the_user_leaves_the_password_file(users: Path, student: FlaskClient) -> None:
    assert student.get("/courses").status_code == 200
    write_users(users, names=("bob", "alice"))
    assert student.get("/courses").status_code == 302
    assert student.get("/api/courses").status_code == 401


def test_session_lasts_12_hours_from_login_however_often_it_is_used(app: Flask, client: FlaskClient) -> None:
    auth: Authenticator = app.extensions["vmchecker_auth"]
    now = [1_000_000.0]
    auth.clock = lambda: now[0]
    assert login(client, "student").status_code == 302
    for _ in range(11):                                             # used every hour: refreshed each time
        now[0] += 3600
        assert client.get("/courses").status_code == 200
    now[0] += 3600 + 1                                              # 12 h and a second after the login
    assert client.get("/courses").status_code == 302
    assert client.get("/api/session").get_json()["user"] is None


def test_a_session_without_login_time_is_refused(app: Flask, client: FlaskClient) -> None:
    """A cookie this app signed, but in the old shape (name only): not a session."""
    forged = app.session_interface.get_signing_serializer(app).dumps({"user": "alice"})
    client.set_cookie("vmchecker_session", forged)
    assert client.get("/courses").status_code == 302


def test_throttling_per_account(client: FlaskClient) -> None:
    """Limits in conftest: 3 failures per account; then even the right password waits."""
    for _ in range(3):
        assert login(client, "student", "guess").status_code == 401
    r = login(client, "student")
    assert r.status_code == 429 and "Too many failed logins" in r.get_data(as_text=True)
    assert login(client, "bob").status_code == 302     # another account is not locked


def test_throttling_per_address(client: FlaskClient) -> None:
    """6 failures from one address, spread over accounts, lock that address out."""
    for name in ("a1", "a2", "a3", "a4", "a5", "a6"):
        assert login(client, name, "guess").status_code == 401
    assert login(client, "bob").status_code == 429


def test_success_clears_the_account_count(client: FlaskClient) -> None:
    for _ in range(2):
        login(client, "student", "guess")
    assert login(client, "student").status_code == 302
    client.post("/logout", data={"csrf_token": page_token(client, "/courses")})
    for _ in range(2):
        assert login(client, "student", "guess").status_code == 401
    assert login(client, "student").status_code == 302


def test_throttle_window_passes() -> None:
    now = [1000.0]
    t = Throttle(Limits(per_account=2, per_address=100, window=60), clock=lambda: now[0])
    t.failed("x", "1.2.3.4")
    t.failed("x", "1.2.3.4")
    assert 59 <= t.retry_after("x", "1.2.3.4") <= 60
    now[0] += 61
    assert t.retry_after("x", "1.2.3.4") == 0


def test_throttle_counts_bad_names_against_the_address_only() -> None:
    t = Throttle(Limits(per_account=2, per_address=5, window=60), clock=lambda: 1000.0)
    auth = Authenticator(None, None, t)
    huge = "x" * 5_000_000
    for name in (huge, "../etc", "a b", huge + "y"):
        assert not auth.login(name, "pw", "192.0.2.1").ok
    assert len(t) == 1                                              # the address's key, nothing else
    assert not auth.login("student", "pw", "192.0.2.1").throttled   # 5th failure from that address
    assert auth.login("student", "pw", "192.0.2.1").throttled       # address limit reached


def test_throttle_names_are_case_insensitive() -> None:
    t = Throttle(Limits(per_account=2, per_address=100, window=60), clock=lambda: 1000.0)
    t.failed("Carol", "192.0.2.1")
    t.failed("CAROL", "192.0.2.1")
    assert t.retry_after("carol", "192.0.2.1") > 0


def test_throttle_counts_an_account_per_client() -> None:
    """Failures for bob from one client hold that client back, not bob elsewhere: a
    classmate cannot lock bob out."""
    t = Throttle(Limits(per_account=5, per_address=20, window=900), clock=lambda: 1000.0)
    for _ in range(10):
        t.failed("bob", "192.0.2.1")
    assert t.retry_after("bob", "192.0.2.1") > 0
    assert t.retry_after("bob", "192.0.2.2") == 0
    t.succeeded("bob", "192.0.2.2")                    # bob's own login clears nothing of A's
    assert t.retry_after("bob", "192.0.2.1") > 0
    for i in range(10):                                # A goes on with other names: its own limit
        t.failed(f"user{i}", "192.0.2.1")
    assert t.retry_after("carol", "192.0.2.1") > 0
    assert t.retry_after("carol", "192.0.2.2") == 0


def test_throttle_sweeps_expired_keys() -> None:
    now = [1000.0]
    t = Throttle(Limits(per_account=2, per_address=100, window=60), clock=lambda: now[0])
    for i in range(50):
        t.failed(f"user{i}", f"192.0.2.{i}")
    assert len(t) == 100
    now[0] += 61
    t.failed("late", "192.0.2.200")                                 # any call sweeps what expired
    assert len(t) == 2


def test_failed_login_logs_a_cut_name(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(None, None, Throttle())
    with caplog.at_level(logging.INFO, logger="vmchecker.storer.web.auth"):
        auth.login("A" * 5_000_000, "pw", "192.0.2.1")
    assert "5000000 characters" in caplog.text and "A" * 65 not in caplog.text
    assert len(caplog.text) < 1000


def test_huge_name_through_the_api_is_refused(client: FlaskClient) -> None:
    r = client.post("/api/login", json={"username": "x" * 5_000_000, "password": "pw"})
    assert r.status_code == 401


def test_secret_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = read_secret(path)
    assert len(first) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert read_secret(path) == first
    assert read_secret(None) is None
