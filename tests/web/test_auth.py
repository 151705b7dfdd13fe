"""Logins from the password file: hashes only, sessions, cookies, throttling, logout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt
from flask.testing import FlaskClient

from tests.web.conftest import login, page_token
from tests.web.helpers import PASSWORDS
from vmchecker.cli.web import read_secret
from vmchecker.storer.web import create_app
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


def test_next_goes_only_to_this_site(client: FlaskClient) -> None:
    token = page_token(client, "/login")
    for target, expected in (("/courses/so", "/courses/so"), ("//evil.example/x", "/courses"),
                             ("https://evil.example/", "/courses")):
        client.post("/logout", data={"csrf_token": page_token(client, "/login")})
        token = page_token(client, "/login")
        r = client.post("/login", data={"username": "student", "password": "student-pw",
                                         "csrf_token": token, "next": target})
        assert r.headers["Location"] == expected


def test_logout_ends_the_session(student: FlaskClient) -> None:
    token = page_token(student, "/courses")
    assert student.post("/logout", data={"csrf_token": token}).status_code == 302
    assert student.get("/courses").status_code == 302


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


def test_secret_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = read_secret(path)
    assert len(first) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert read_secret(path) == first
    assert read_secret(None) is None
