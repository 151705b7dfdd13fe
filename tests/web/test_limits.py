"""The web server's limits, against the real ``vmchecker-web`` (waitress in its own
process): a body larger than the largest upload is 413 before it is read, a large body
without a session 401 before it is read, and the server answers on afterwards.

The course's ``1-hello`` accepts 10M (tests/util.py), so the server takes bodies up to
10M + 1M of form. Each refusal is checked on a raw socket that has sent its headers and
only part of the body: the answer arrives while the rest is still unsent.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.util import status_line, zip_bytes
from tests.web.helpers import HELLO, WebServer
from vmchecker import config
from vmchecker.cli.web import FORM_MARGIN, max_request_body

UPLOAD = "/api/courses/so/assignments/1-hello/upload"
MAX_BODY = 10 * 1024 * 1024 + FORM_MARGIN
PROMPT = 5.0   # seconds: an answer sent before the body is read comes at once


@pytest.fixture
def server(tmp_path: Path, web_course: config.CourseConfig, users: Path) -> Iterator[WebServer]:
    s = WebServer(tmp_path / "global.yaml", users, tmp_path / "secret")
    try:
        yield s
    finally:
        s.stop()


def session_cookie(server: WebServer, name: str = "student", password: str = "student-pw") -> tuple[str, str]:
    """(Cookie header, CSRF token) of a fresh login."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/api/login", json.dumps({"username": name, "password": password}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, body
        cookie = r.getheader("Set-Cookie").split(";", 1)[0]
        return cookie, body["csrf_token"]
    finally:
        conn.close()


def partial_post(server: WebServer, length: int, sent: int, headers: dict[str, str]) -> tuple[bytes, float]:
    """POST headers announcing ``length`` body bytes, then only ``sent`` of them; the
    status line the server answers with, and how long it took."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        head = [f"POST {UPLOAD} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Length: {length}",
                "Content-Type: multipart/form-data; boundary=xyz", *(f"{k}: {v}" for k, v in headers.items())]
        started = time.monotonic()
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            sock.sendall(b"--xyz\r\n" + b"a" * (sent - 7))
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered and closed first: what we are checking
        return status_line(sock), time.monotonic() - started
    finally:
        sock.close()


def still_answers(server: WebServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/api/session")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    finally:
        conn.close()


def test_body_limit_follows_the_largest_upload(tmp_path: Path, web_course: config.CourseConfig) -> None:
    assert max_request_body(config.load_global(tmp_path / "global.yaml")) == MAX_BODY


def test_a_body_over_the_limit_is_413_before_it_is_read(server: WebServer) -> None:
    cookie, token = session_cookie(server)
    for length in (MAX_BODY + 1, 1 << 30, 1 << 40):
        status, took = partial_post(server, length, 64 * 1024, {"Cookie": cookie, "X-CSRF-Token": token})
        assert status.startswith(b"HTTP/1.1 413"), status
        assert took < PROMPT
        still_answers(server)


def test_an_anonymous_large_body_is_refused_unread(server: WebServer) -> None:
    """5 MiB announced, 128 KiB sent: the 401 comes while 97% of the body is unsent,
    with no cookie, a forged one or a cookie of another app's key."""
    forged = "vmchecker_session=eyJ1c2VyIjoic3R1ZGVudCJ9.ZZZZZZ.AAAAAAAAAAAAAAAAAAAAAAAAAAA"
    for headers in ({}, {"Cookie": forged}, {"Cookie": "other=1"}):
        status, took = partial_post(server, 5 * 1024 * 1024, 128 * 1024, headers)
        assert status.startswith(b"HTTP/1.1 401"), status
        assert took < PROMPT
        still_answers(server)


def test_a_logged_in_upload_still_goes_through(server: WebServer) -> None:
    cookie, token = session_cookie(server)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"hello.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + zip_bytes(HELLO) + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", UPLOAD, body, {"Cookie": cookie, "X-CSRF-Token": token,
                                            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        answer = json.loads(r.read())
        assert r.status == 201, answer
    finally:
        conn.close()


def test_the_login_check_comes_before_the_form(client: FlaskClient) -> None:
    """In the app too: an anonymous upload is refused (401, the page's redirect) before
    the CSRF check would parse its form."""
    r = client.post(UPLOAD, data={"archive": (io.BytesIO(zip_bytes(HELLO)), "x.zip")},
                    content_type="multipart/form-data")
    assert r.status_code == 401
    r = client.post("/courses/so/assignments/1-hello/upload", data={"archive": (io.BytesIO(zip_bytes(HELLO)), "x.zip")},
                    content_type="multipart/form-data")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
