"""The web server's door: waitress with limits that match the largest upload, and a
login check before a request body is read.

Waitress reads a whole request (body buffered to temporary files past 512 KB) before
the application sees it, so a check in Flask comes too late to spare the server an
anonymous 10 MiB multipart body. Here the HTTP parser itself looks at the headers: a
request with a body larger than :data:`ANONYMOUS_BODY` (a login form or JSON is far
smaller) and no session cookie this app signed is answered 401 at once, unread.
A body over ``max_body`` (the largest upload plus its form) gets waitress's own 413
from its Content-Length, also before it is read.

The session check here only asks "did this app sign a cookie naming a user"; the full
check (lifetime, logout, removed account) is :func:`vmchecker.storer.web.auth.current_user`
on every request.
"""

from __future__ import annotations

import logging
from typing import Any

import waitress
from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.utilities import Error
from werkzeug.http import parse_cookie

log = logging.getLogger(__name__)

ANONYMOUS_BODY = 64 * 1024       # the most a request without a session may send
CONNECTION_LIMIT = 100
CHANNEL_TIMEOUT = 30             # seconds a connection may stay silent
CLEANUP_INTERVAL = 10            # how often silent connections are looked for
MAX_HEADER = 64 * 1024


class _LoginFirst(Error):
    """Waitress's answer for a large body without a session: a response waitress
    writes itself (its ``Error`` is a response, not an exception we raise)."""

    code = 401
    reason = "Unauthorized"


def has_session(app: Flask, cookie_header: str) -> bool:
    """True when the Cookie header holds a session cookie ``app`` signed, naming a user."""
    value = parse_cookie(cookie_header).get(app.config["SESSION_COOKIE_NAME"])
    if not value:
        return False
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    if serializer is None:
        return False
    try:
        data = serializer.loads(value, max_age=int(app.permanent_session_lifetime.total_seconds()))
    except Exception:   # noqa: BLE001  (itsdangerous: bad signature, expired, garbage)
        return False
    return isinstance(data, dict) and isinstance(data.get("user"), str)


def gated_channel(app: Flask) -> type[HTTPChannel]:
    """A waitress channel whose parser refuses a large anonymous body after its headers."""

    class Parser(HTTPRequestParser):
        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            big = self.chunked or self.content_length > ANONYMOUS_BODY
            if big and not has_session(app, self.headers.get("COOKIE", "")):
                log.info("refused %s %s: a %s body without a session", self.command, self.path,
                         "chunked" if self.chunked else f"{self.content_length}-byte")
                self.error = _LoginFirst(f"Log in first: without a session a request may carry at most"
                                        f" {ANONYMOUS_BODY} bytes.")
                self.completed = True

    class Channel(HTTPChannel):
        parser_class = Parser

    return Channel


def serve(app: Flask, host: str, port: int, max_body: int, ident: str, **kw: Any) -> None:
    """Serve ``app`` with waitress until interrupted; ``kw`` are more waitress settings."""
    settings = {"threads": 8, "connection_limit": CONNECTION_LIMIT, "channel_timeout": CHANNEL_TIMEOUT,
                "cleanup_interval": CLEANUP_INTERVAL, "max_request_header_size": MAX_HEADER, **kw}
    sockets: dict = {}
    server = waitress.create_server(app, map=sockets, host=host, port=port, ident=ident,
                                    max_request_body_size=max_body, **settings)
    channel = gated_channel(app)
    for listener in list(sockets.values()):   # one per address the host name resolves to
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    log.info("request bodies up to %d bytes, %d connections, %d s of silence",
             max_body, settings["connection_limit"], settings["channel_timeout"])
    server.run()
