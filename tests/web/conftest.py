"""Fixtures of the web tests: a course, a password file, the app and its test client."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures import RunningDaemon
from tests.util import free_port
from tests.web.helpers import PASSWORDS, csrf_from, open_course, write_users
from vmchecker import config
from vmchecker.storer.web import create_app
from vmchecker.storer.web.throttle import Limits

# A tester on TEST-NET-1: never contacted (the daemon's dispatcher makes no pass), only named.
TESTERS = {"t1": {"host": "192.0.2.11"}}


@pytest.fixture
def daemon(tmp_path: Path, running_daemon) -> RunningDaemon:
    """The real storer daemon (its dispatcher idle: tests move jobs on through its journal)
    serving course ``so`` in tmp_path/up; ``daemon.course`` is that course, its
    ``storer.daemon`` pointing at the daemon."""
    root = tmp_path / "up"
    open_course(root, "", testers=TESTERS)   # the daemon needs the files (no storer.daemon: its own address)
    d = running_daemon(root / "global.yaml")
    d.course = open_course(root, d.url, testers=TESTERS)
    return d


@pytest.fixture
def web_course(tmp_path: Path) -> config.CourseConfig:
    """The course with its daemon down (nothing listens on its port)."""
    return open_course(tmp_path, f"http://127.0.0.1:{free_port()}/")


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users")


@pytest.fixture
def app(tmp_path: Path, web_course: config.CourseConfig, users: Path) -> Flask:
    app = create_app(tmp_path / "global.yaml", users, secret_key="test-secret-key-0123456789",
                     throttle_limits=Limits(per_account=3, per_address=6, window=600))
    app.testing = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def login(client: FlaskClient, name: str, password: str | None = None):
    """Log in through the form (token from the login page); returns the response."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": name, "password": password or PASSWORDS[name],
                                       "csrf_token": token})


def page_token(client: FlaskClient, path: str) -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


@pytest.fixture
def student(client: FlaskClient) -> FlaskClient:
    assert login(client, "student").status_code == 302
    return client


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    c = app.test_client()
    assert login(c, "alice").status_code == 302
    return c
