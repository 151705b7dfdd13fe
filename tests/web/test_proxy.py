"""``vmchecker-web --trusted-proxy``: behind a reverse proxy, login throttling counts
per client (X-Forwarded-For from the proxy), and the header from anyone else is ignored.

The real server runs (waitress, in its own process) on 127.0.0.1. The "proxy" is a
client connecting from 127.0.0.2 (loopback too); a client from 127.0.0.1 is somebody
else. The forwarded addresses are TEST-NET strings in a header, never contacted.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.helpers import WebServer
from vmchecker import config

PROXY = "127.0.0.2"
PER_ADDRESS = 20   # vmchecker-web's default Limits().per_address
PER_ACCOUNT = 5    # and Limits().per_account (per account and client)


@pytest.fixture
def server(tmp_path: Path, web_course: config.CourseConfig, users: Path) -> Iterator[WebServer]:
    s = WebServer(tmp_path / "global.yaml", users, tmp_path / "secret", "--trusted-proxy", PROXY)
    try:
        yield s
    finally:
        s.stop()


def api_login(server: WebServer, name: str, password: str, source: str, forwarded: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        headers = {"Content-Type": "application/json"}
        if forwarded:
            headers["X-Forwarded-For"] = forwarded
        conn.request("POST", "/api/login", json.dumps({"username": name, "password": password}), headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_throttling_is_per_forwarded_client(server: WebServer) -> None:
    for _ in range(PER_ADDRESS):   # names no account can have: they count against the address only
        assert api_login(server, "no such user!", "guess", PROXY, "198.51.100.1") == 401
    assert api_login(server, "student", "student-pw", PROXY, "198.51.100.1") == 429
    assert api_login(server, "student", "student-pw", PROXY, "198.51.100.2") == 200     # another client
    assert api_login(server, "student", "student-pw", PROXY, "203.0.113.9, 198.51.100.1") == 429  # last hop
    # Not the proxy: the header is removed unread, so it cannot pick a bucket.
    assert api_login(server, "student", "student-pw", "127.0.0.1", "198.51.100.2") == 200
    for _ in range(PER_ADDRESS):
        assert api_login(server, "no such user!", "guess", "127.0.0.1", "198.51.100.3") == 401
    assert api_login(server, "student", "student-pw", "127.0.0.1", "198.51.100.4") == 429
    assert api_login(server, "student", "student-pw", PROXY, "198.51.100.3") == 200


def test_wrong_passwords_for_a_classmate_do_not_lock_them_out(server: WebServer) -> None:
    """Client A tries bob's password many times: A is held back, bob logs in from B."""
    attacker, victim = "198.51.100.7", "198.51.100.8"
    for _ in range(PER_ACCOUNT):
        assert api_login(server, "bob", "guess", PROXY, attacker) == 401
    for _ in range(3):
        assert api_login(server, "bob", "guess", PROXY, attacker) == 429
    assert api_login(server, "bob", "bob-pw", PROXY, attacker) == 429       # A: even the right password waits
    assert api_login(server, "bob", "bob-pw", PROXY, victim) == 200         # bob from B: fine
    assert api_login(server, "bob", "bob-pw", "127.0.0.1") == 200           # and directly
    assert api_login(server, "bob", "bob-pw", PROXY, attacker) == 429       # A still waits


def test_trusted_proxy_is_documented_and_checked() -> None:
    run = [sys.executable, "-m", "vmchecker.cli.web"]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--trusted-proxy ADDR" in shown.stdout and "X-Forwarded-For" in shown.stdout
    bad = subprocess.run([*run, "--trusted-proxy", "proxy.example"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "bad proxy address" in bad.stderr
