"""Hostile inputs against the real components on this machine, each counted as contained
when it is refused or contained AND the component still answers afterwards.

* the storer daemon (its XML-RPC server on loopback, in this process's threads): bad
  and hostile XML, huge and encoded bodies, idle and trickling sockets, notify calls a
  semi-trusted tester must not make, queue_task from outside the storer (simulated: the
  server is told a loopback connection came from 198.51.100.9), wrong types and arity;
* ``vmchecker-web`` (waitress, its own process, on loopback, a password file): huge
  bodies, anonymous bodies, CSRF, open redirects, path traversal, XSS, a classmate's
  lockout, a non-student;
* the upload path (``vmchecker.submit`` and ``vmchecker-submit`` on a temporary
  course): hostile archives, the interval and the account quota;
* guest programs on a real LXC tester through the executor, each job weighed as the
  storer does (``evidence.judge`` then ``penalty.compute``, via
  tests/executor/grading_cases.py): 0 for a failure, exactly full points for a correct
  program that attacks the grade, and the attack refused.

A benchmark, not a test (``make test`` does not run it). Run from the repository root:
``.venv/bin/python bench/hostile.py [--only rpc,web,upload,guest]``. One line per case,
then exactly one last line ``hostile_inputs=N contained=M``. Everything it starts (the
daemon, the web server, LXC clones, temporary folders) is stopped or removed, also on
failure. Network: loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import io
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xmlrpc.client
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.util import HELLO_C, HELLO_MAKEFILE, status_line, wait_for, write_course, zip_bytes  # noqa: E402
from vmchecker import config, rpc  # noqa: E402
from vmchecker.errors import VmcheckerError  # noqa: E402

log = logging.getLogger("hostile")

MIB = 1 << 20
HELLO = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
Outcome = tuple[bool, str]     # (refused or contained, what happened)


@dataclass
class Tally:
    """Every case's line, printed as it is decided."""

    rows: list[tuple[str, bool, str]] = field(default_factory=list)

    def run(self, name: str, attack: Callable[[], Outcome], alive: Callable[[], Outcome]) -> None:
        """Try ``attack``; contained when it says so and ``alive()`` (the component still
        answers, nothing it guards was touched) says so afterwards. A crash of either is
        not contained, with the exception as what happened."""
        try:
            ok, what = attack()
        except Exception as exc:   # the case's own failure boundary: one line, then the next case
            ok, what = False, f"crashed: {type(exc).__name__}: {exc}"
        try:
            up, state = alive()
        except Exception as exc:
            up, state = False, f"{type(exc).__name__}: {exc}"
        contained = ok and up
        line = what if up else f"{what}; NOT ANSWERING AFTERWARDS: {state}"
        self.rows.append((name, contained, line))
        print(f"{name:<52} contained={'yes' if contained else 'no '}  {one_line(line)}", flush=True)

    def skipped(self, section: str, reason: str) -> None:
        print(f"# {section}: not run: {reason}", flush=True)


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# =========================================================================== the storer daemon

JOB = "20260101T000000-0123456789abcdef"
OUTSIDER = "198.51.100.9"      # the address a simulated non-local caller is given
OUTSIDER_SOURCE = "127.0.0.99"   # ... when it connects from this loopback address


def _xml(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, method, allow_none=False).encode()


def http_post(port: int, body: bytes, headers: dict[str, str] | None = None, *, source: str | None = None,
              path: str = "/RPC2", timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/xml", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def rpc_refused(status: int, body: bytes) -> Outcome:
    """An XML-RPC answer is a refusal when it is an HTTP error or a fault."""
    if status != 200:
        return True, f"HTTP {status}"
    try:
        value = xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        return True, f"fault {fault.faultCode}: {fault.faultString}"
    except Exception as exc:
        return False, f"unparseable answer ({exc})"
    return False, f"ACCEPTED: {value!r}"


def raw_head(port: int, head: bytes, body_part: bytes = b"", timeout: float = 10) -> tuple[bytes, float]:
    """Send ``head`` and part of a body; the status line the server answers with and how long it took."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    try:
        with contextlib.suppress(OSError):
            sock.sendall(head + body_part)
        line = b""
        with contextlib.suppress(OSError):
            line = status_line(sock)
        return line, time.monotonic() - started
    finally:
        sock.close()


def hung_up(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Flood:
    """``count`` sockets to ``port``, from many loopback addresses (``per_source`` each);
    ``trickle``: a byte a second of a request from a thread, until :meth:`close`."""

    def __init__(self, port: int, count: int, *, trickle: bool = False, per_source: int = 1, first: int = 1):
        sources = (f"127.{first}.{a}.{b}" for a, b in itertools.product(range(1, 255), range(2, 255)))
        self.socks: list[socket.socket] = []
        source = ""
        for i in range(count):
            if i % per_source == 0:
                source = next(sources)
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            except OSError:
                continue
            sock.setblocking(False)
            self.socks.append(sock)
        self.stream = (b"POST /RPC2 HTTP/1.1\r\nHost: storer\r\nContent-Type: text/xml\r\n"
                       b"Content-Length: 4000\r\n\r\n" + b"x" * 4000)
        self.sent = dict.fromkeys(self.socks, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True) if trickle else None
        if self._thread:
            self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.is_set():
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(self.stream[self.sent[sock]:self.sent[sock] + 1])
                    self.sent[sock] += 1
            self._stop.wait(1.0)

    def closed(self) -> int:
        return sum(hung_up(s) for s in self.socks)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for sock in self.socks:
            sock.close()


def rpc_section(tally: Tally, tmp: Path) -> None:
    from vmchecker import submit
    from vmchecker.storer.daemon import StorerDaemon

    root = tmp / "rpc"
    path = write_course(root, extra={
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00"},
        "testers": {"t1": {"host": "127.0.0.1"}, "t2": {"host": "192.0.2.7", "user": "vmchecker", "queue": "/q"}},
        "machines": {"linux": {"testers": ["t1", "t2"]}}})
    os.environ["VMCHECKER_CONFIG"] = str(root / "global.yaml")
    deadline = 3.0
    daemon = StorerDaemon(root / "global.yaml", listen="127.0.0.1:0", state_dir=root / "state", poll=0.2,
                          rpc_deadline=deadline)
    server = daemon.server
    real_process = server.process_request

    def process_request(request, client_address):   # the simulated caller from outside the storer
        if client_address[0] == OUTSIDER_SOURCE:
            client_address = (OUTSIDER, client_address[1])
        return real_process(request, client_address)

    server.process_request = process_request
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    port, url = daemon.port, f"http://127.0.0.1:{daemon.port}/"
    try:
        course = config.load_course(path)
        archive = root / "hello.zip"
        archive.write_bytes(zip_bytes(HELLO))

        def sent_job(account: str, tester: str):
            sub = submit.submit(course, "1-hello", account, archive, skip_time_checks=True)
            job = daemon.journal.enqueue("so", "1-hello", account, sub.name, "linux")
            return daemon.journal.mark_sent(job.id, tester, deadline=9e12), sub

        victim, victim_sub = sent_job("bob", "t1")        # the notify attacks aim at this job
        far, far_sub = sent_job("carol", "t2")             # sent to a tester elsewhere
        untouched = ["grade.vmr"]

        def alive() -> Outcome:
            jobs = rpc.Client(url, timeout=10).status()["jobs"]
            for job, sub in ((victim, victim_sub), (far, far_sub)):
                state = daemon.journal.get(job.id).state.value
                results = sorted(p.name for p in sub.results_dir.iterdir())
                if state != "sent" or results != untouched or sub.status().value != "saved":
                    return False, f"job {job.id} is {state}, results {results}, {sub.status().value}"
            return True, f"status answered ({len(jobs)} jobs), the jobs untouched"

        def call(body: bytes, headers: dict[str, str] | None = None, source: str | None = None) -> Outcome:
            return rpc_refused(*http_post(port, body, headers, source=source))

        def notify(*params, source: str | None = None) -> Outcome:
            return call(_xml(rpc.NOTIFY, *params), source=source)

        good_key = victim.key
        wrong_key = ("y" if good_key[0] == "x" else "x") + good_key[1:]
        t = tally.run

        # -- the XML itself
        t("rpc: malformed XML", lambda: call(b"<?xml version='1.0'?><methodCall><methodName>status</methodName>"
                                            b"<params><param><value><string>"), alive)
        laughs = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                  + b"".join(b'<!ENTITY %c "%s">' % (98 + i, (b"&%c;" % (97 + i)) * 10) for i in range(8))
                  + b']><methodCall><methodName>status</methodName><params><param><value><string>&i;'
                  b"</string></value></param></params></methodCall>")
        t("rpc: entity expansion (billion laughs)", lambda: timed(lambda: call(laughs), 5), alive)
        xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><methodCall>'
               b"<methodName>notify</methodName><params><param><value><string>&e;</string></value></param>"
               b"</params></methodCall>")
        t("rpc: external entity (file:///etc/passwd)", lambda: no_leak(call(xxe), "root:"), alive)
        t("rpc: non-UTF-8 bytes in the XML", lambda: call(_xml(rpc.NOTIFY, victim.id, good_key, "done",
                                                                 ["grade.vmr"], {}).replace(b"grade.vmr",
                                                                                             b"gr\xff\xfe.vmr")),
          alive)
        t("rpc: a NUL in the XML", lambda: call(_xml(rpc.STATUS).replace(b"status", b"sta\x00tus")), alive)
        deep = b"<value><array><data>" * 5000 + b"</data></array></value>" * 5000
        t("rpc: 5000-deep nested arrays", lambda: call(b"<?xml version='1.0'?><methodCall><methodName>status"
                                                      b"</methodName><params><param>" + deep
                                                      + b"</param></params></methodCall>"), alive)

        # -- the HTTP around it
        def body_over(length: int) -> Outcome:
            status, took = raw_head(port, b"POST /RPC2 HTTP/1.1\r\nHost: s\r\nContent-Type: text/xml\r\n"
                                    b"Content-Length: %d\r\n\r\n" % length, b"<" * 65536)
            return status.startswith(b"HTTP/1.0 413") or status.startswith(b"HTTP/1.1 413"), \
                f"{status.decode(errors='replace')} after {took:.2f} s, body unread"

        t("rpc: body over the 1 MiB cap (2 MiB announced)", lambda: body_over(2 * MIB), alive)
        t("rpc: Content-Length of 1 PiB", lambda: body_over(1 << 50), alive)

        def bad_length(value: bytes) -> Outcome:
            status, took = raw_head(port, b"POST /RPC2 HTTP/1.1\r\nHost: s\r\nContent-Length: " + value
                                    + b"\r\n\r\n")
            return b" 4" in status[:13], f"{status.decode(errors='replace')} after {took:.2f} s"

        t("rpc: negative Content-Length", lambda: bad_length(b"-5"), alive)
        t("rpc: Content-Length not a number", lambda: bad_length(b"12abc"), alive)
        t("rpc: 64 KiB of headers", lambda: refused_head(raw_head(
            port, b"POST /RPC2 HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 65536 + b"\r\nContent-Length: 0\r\n\r\n")), alive)

        def encoded(encoding: str) -> Outcome:
            big = _xml(rpc.NOTIFY, JOB, "k" * 43, "done", ["a" * 20_000_000], {})
            body = gzip.compress(big)
            status, answer = http_post(port, body, {"Content-Encoding": encoding})
            return status == 415, f"HTTP {status} for {len(body)} bytes that inflate to {len(big)}"

        t("rpc: gzip body (20 MB of XML in 20 KB)", lambda: encoded("gzip"), alive)
        t("rpc: deflate body", lambda: encoded("deflate"), alive)

        # -- sockets that never finish
        def flood(count: int, trickle: bool, per_source: int = 1, first: int = 1) -> Outcome:
            f = Flood(port, count, trickle=trickle, per_source=per_source, first=first)
            try:
                client = rpc.Client(url, timeout=10)
                started = time.monotonic()
                client.status()
                try:
                    client.call(rpc.NOTIFY, JOB, "k" * 43, "done", ["grade.vmr"], {})
                except VmcheckerError:
                    answered = "a notify refused"
                else:
                    return False, "notify of an unknown job ACCEPTED"
                took = time.monotonic() - started
                open_now = len(f.socks) - f.closed()
                wait_for(lambda: f.closed() == len(f.socks), "the deadline to close the sockets", deadline * 4)
                return True, (f"{len(f.socks)} sockets ({open_now} still open while status and {answered} "
                              f"answered in {took:.2f} s), all closed by the {deadline:g} s deadline")
            finally:
                f.close()

        t("rpc: 200 idle sockets from 200 addresses", lambda: flood(200, False), alive)
        t("rpc: 200 sockets trickling a byte a second", lambda: flood(200, True, first=2), alive)
        t("rpc: 60 idle sockets from one address", lambda: flood(60, False, per_source=60, first=3), alive)

        # -- notify: what a tester must not do
        t("rpc: notify for an unknown job", lambda: notify(JOB, "k" * 43, "done", ["grade.vmr"], {}), alive)
        t("rpc: notify with a wrong key", lambda: notify(victim.id, wrong_key, "done", ["grade.vmr"], {}), alive)
        t("rpc: notify with the key from another address",
          lambda: notify(victim.id, good_key, "done", ["grade.vmr"], {}, source="127.0.0.2"), alive)
        t("rpc: notify for a job sent to another tester",
          lambda: notify(far.id, far.key, "done", ["grade.vmr"], {}), alive)
        for label, name in (("'../grade.vmr'", "../grade.vmr"), ("'/etc/passwd'", "/etc/passwd"), ("'..'", ".."),
                            ("'a/b.vmr'", "a/b.vmr"), ("'..\\\\x.vmr'", "..\\x.vmr"),
                            ("a newline", "ok.vmr\n2026-01-01 forged log line"),
                            ("an escape sequence", "\x1b[2Jx.vmr"), ("5000 characters", "x" * 5000)):
            t(f"rpc: notify with file name {label}",
              lambda name=name: notify(victim.id, good_key, "done", ["grade.vmr", name], {}), alive)
        def big_notify() -> Outcome:
            body = _xml(rpc.NOTIFY, victim.id, good_key, "done", [f"f{i}.vmr" for i in range(100000)], {})
            head = b"POST /RPC2 HTTP/1.1\r\nHost: s\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body)
            status, took = raw_head(port, head, body)
            return b" 413" in status[:13], f"{status.decode(errors='replace')} after {took:.2f} s ({len(body)} bytes)"

        t("rpc: notify with 100000 file names", big_notify, alive)
        t("rpc: notify with an unknown status", lambda: notify(victim.id, good_key, "graded-100", [], {}), alive)
        t("rpc: notify with wrong types (int job, str files)", lambda: notify(12, good_key, "done", "grade.vmr", {}),
          alive)
        t("rpc: notify with stats of the wrong shape",
          lambda: notify(victim.id, good_key, "done", ["grade.vmr"], {"run": [{"x": [1] * 10}], "n": "9" * 5000,
                                                                    "deep": {"a": {"b": {"c": [0]}}}}), alive)
        t("rpc: notify with missing arguments", lambda: notify(victim.id, good_key), alive)
        t("rpc: notify with extra arguments", lambda: notify(victim.id, good_key, "done", [], {}, "x", "y"), alive)

        # -- methods for the storer only, names and types
        def queue_task(*params, source: str | None = None) -> Outcome:
            return call(_xml(rpc.QUEUE_TASK, *params), source=source)

        t("rpc: queue_task from outside the storer (simulated)",
          lambda: queue_task("so", "1-hello", "bob", victim.submission, source=OUTSIDER_SOURCE), alive)
        t("rpc: status from outside the storer (simulated)",
          lambda: call(_xml(rpc.STATUS), source=OUTSIDER_SOURCE), alive)
        t("rpc: queue_task with '../..' names", lambda: queue_task("so", "../../etc", "../bob", "../../passwd"), alive)
        t("rpc: queue_task with wrong types", lambda: queue_task(1, ["1-hello"], {"a": 1}, 2.5), alive)
        t("rpc: queue_task for a course that does not exist",
          lambda: queue_task("nope", "1-hello", "bob", victim.submission), alive)
        t("rpc: a method that is not exposed", lambda: call(_xml("system.listMethods")), alive)
        t("rpc: a private method name", lambda: call(_xml("_dispatch", "status", [])), alive)
    finally:
        server.shutdown()
        server.server_close()
        daemon.courses.close()
        daemon.journal.close()
        thread.join(10)


def timed(attack: Callable[[], Outcome], limit: float) -> Outcome:
    started = time.monotonic()
    ok, what = attack()
    took = time.monotonic() - started
    return ok and took < limit, f"{what} (in {took:.2f} s)"


def no_leak(outcome: Outcome, secret: str) -> Outcome:
    ok, what = outcome
    return ok and secret not in what, what


def refused_head(answer: tuple[bytes, float]) -> Outcome:
    status, took = answer
    text = status.decode(errors="replace")
    return (b" 4" in status[:13] or status == b""), f"{text or 'closed without an answer'} after {took:.2f} s"


# =========================================================================== the web server


class Browser:
    """A client of ``vmchecker-web`` keeping its cookies, from one loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.port, self.source = port, source
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        try:
            all_headers = dict(headers or {})
            if self.cookies:
                all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            for value in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def api_login(self, name: str, password: str) -> tuple[int, str]:
        status, _, text = self.request("POST", "/api/login", json.dumps({"username": name, "password": password})
                                       .encode(), {"Content-Type": "application/json"})
        token = json.loads(text).get("csrf_token", "") if status == 200 else ""
        return status, token

    def form_login(self, name: str, password: str, next_: str) -> tuple[int, dict[str, str], str]:
        from urllib.parse import urlencode

        from tests.web.helpers import csrf_from

        token = csrf_from(self.get("/login")[2])
        body = urlencode({"username": name, "password": password, "next": next_, "csrf_token": token}).encode()
        return self.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})


def multipart(files: dict[str, tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


UPLOAD_API = "/api/courses/so/assignments/1-hello/upload"
UPLOAD_PAGE = "/courses/so/assignments/1-hello/upload"


def web_section(tally: Tally, tmp: Path) -> None:
    from urllib.parse import quote

    from tests.util import free_port
    from tests.web.helpers import PASSWORDS, WebServer, open_course, write_results
    from vmchecker import submit
    from vmchecker.storer.web.passwords import hash_password

    root = tmp / "web"
    root.mkdir()
    course = open_course(root, f"http://127.0.0.1:{free_port()}/")   # its daemon down: uploads are saved
    users = root / "users"
    accounts = {**PASSWORDS, "mallory": "mallory-pw"}                 # mallory: not of the course
    users.write_text("".join(f"{n}:{hash_password(p)}\n" for n, p in accounts.items()))
    # an XSS payload in a stored result, shown on bob's results page
    sub = submit.submit(course, "1-hello", "bob", zip_bytes(HELLO), skip_time_checks=True)
    write_results(sub, {"run-stdout.vmr": "<script>alert('xss')</script>\n"},
                  grade="-1: <img src=x onerror=alert(1)>\n")
    server = WebServer(root / "global.yaml", users, root / "secret", "--channel-timeout", "3")
    port = server.port
    try:
        def alive() -> Outcome:
            b = Browser(port, "127.0.0.250")
            status, token = b.api_login("student", accounts["student"])
            if status != 200:
                return False, f"student login {status}"
            status, _, text = b.get("/api/courses")
            return status == 200 and '"so"' in text, f"student logged in, courses {status}"

        t = tally.run

        def partial(length: int, cookie: str | None, token: str | None, path: str = UPLOAD_API) -> Outcome:
            head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {length}",
                    "Content-Type: multipart/form-data; boundary=xyz"]
            if cookie:
                head.append(f"Cookie: {cookie}")
            if token:
                head.append(f"X-CSRF-Token: {token}")
            status, took = raw_head(port, ("\r\n".join(head) + "\r\n\r\n").encode(), b"--xyz\r\n" + b"a" * 65536)
            return status, took

        def logged_in(name: str = "student") -> tuple[Browser, str, str]:
            b = Browser(port)
            status, token = b.api_login(name, accounts[name])
            assert status == 200, status
            return b, "; ".join(f"{k}={v}" for k, v in b.cookies.items()), token

        def huge(length: int) -> Outcome:
            _, cookie, token = logged_in()
            status, took = partial(length, cookie, token)
            return b" 413" in status, f"{status.decode()} after {took:.2f} s with 64 KiB of the body sent"

        t("web: logged-in body of 12 MiB (over the limit)", lambda: huge(12 * MIB), alive)
        t("web: Content-Length of 1 TiB", lambda: huge(1 << 40), alive)

        def anonymous(cookie: str | None) -> Outcome:
            status, took = partial(5 * MIB, cookie, None)
            return b" 401" in status, f"{status.decode()} after {took:.2f} s, 5 MiB announced"

        t("web: anonymous 5 MiB upload", lambda: anonymous(None), alive)
        t("web: 5 MiB upload with a forged session cookie",
          lambda: anonymous("vmchecker_session=eyJ1c2VyIjoic3R1ZGVudCJ9.ZZZZZZ.AAAAAAAAAAAAAAAAAAAAAAAA"), alive)

        def csrf(token: str | None, api: bool) -> Outcome:
            b, _, good = logged_in()
            body, ctype = multipart({"archive": ("hello.zip", zip_bytes(HELLO))},
                                    {} if api or token is None else {"csrf_token": token})
            headers = {"Content-Type": ctype}
            if api and token is not None:
                headers["X-CSRF-Token"] = token
            before = len(list((course.root / "repo" / "1-hello" / "student").glob("20*")))
            status, _, text = b.request("POST", UPLOAD_API if api else UPLOAD_PAGE, body, headers)
            after = len(list((course.root / "repo" / "1-hello" / "student").glob("20*")))
            return status == 400 and after == before, f"HTTP {status}, uploads stored {after - before}"

        t("web: API upload without the CSRF token", lambda: csrf(None, True), alive)
        t("web: API upload with a wrong CSRF token", lambda: csrf("A" * 43, True), alive)
        t("web: form upload without the CSRF token", lambda: csrf(None, False), alive)
        t("web: form upload with a token of another session", lambda: csrf(logged_in("bob")[2], False), alive)

        def redirect(target: str) -> Outcome:
            status, headers, _ = Browser(port, "127.0.0.3").form_login("student", accounts["student"], target)
            location = headers.get("location", "")
            from urllib.parse import urlsplit

            parts = urlsplit(location)
            # a path on this site (a browser keeps %2F in the path: no host of its own there)
            local = parts.scheme in ("", "http") and parts.netloc in ("", f"127.0.0.1:{port}") \
                and location.lstrip("/").startswith(("courses", "%2F")) and "\\" not in location
            return status in (302, 303) and local, f"HTTP {status} to {location!r}"

        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/\t/evil.example",
                       "javascript:alert(1)", "/%2F%2Fevil.example", "/\r\nLocation: https://evil.example"):
            t(f"web: open redirect next={target!r}", lambda target=target: redirect(target), alive)

        def traversal(path: str, *secrets_: str) -> Outcome:
            b, _, _ = logged_in()
            status, _, text = b.get(path)
            leaked = [s for s in secrets_ if s in text]
            return status in (400, 403, 404) and not leaked, f"HTTP {status}{', LEAKED ' + str(leaked) if leaked else ''}"

        t("web: ../ in a course URL", lambda: traversal("/courses/..%2f..%2f..%2fetc%2fpasswd", "root:"), alive)
        t("web: ../ in an account URL", lambda: traversal(
            "/courses/so/assignments/1-hello/accounts/..%2F..%2F..%2Fconfig.yaml", "upload_active"), alive)
        t("web: ../ in a static URL", lambda: traversal("/static/..%2f..%2f..%2f..%2fsetup.py", "setuptools"), alive)
        t("web: ../ in an API submission", lambda: traversal(
            "/api/courses/so/assignments/..%2F1-hello/results", "grade"), alive)

        def xss_login() -> Outcome:
            payload = "<script>alert('x')</script>"
            status, _, text = Browser(port, "127.0.0.4").form_login(payload, "nope", "/courses")
            return status in (401, 429) and payload not in text and "&lt;script&gt;" in text, \
                f"HTTP {status}, the name shown escaped"

        def xss_results() -> Outcome:
            b, _, _ = logged_in("bob")
            status, _, text = b.get("/courses/so/assignments/1-hello/accounts/bob")
            raw = "<script>alert('xss')</script>" in text or "<img src=x" in text
            return status == 200 and not raw and "&lt;script&gt;" in text, f"HTTP {status}, raw payload {raw}"

        t("web: XSS payload as a login name", xss_login, alive)
        t("web: XSS payload in results and grade", xss_results, alive)

        def lockout() -> Outcome:
            guesser = Browser(port, "127.0.0.66")
            answers = [guesser.api_login("bob", f"guess-{i}")[0] for i in range(12)]
            victim_status, _ = Browser(port, "127.0.0.1").api_login("bob", accounts["bob"])
            held = answers[-1] == 429
            return held and victim_status == 200, (f"the guesser's answers {sorted(set(answers))} (last {answers[-1]}),"
                                                   f" bob from his own machine: {victim_status}")

        def spray() -> Outcome:
            guesser = Browser(port, "127.0.0.67")
            answers = [guesser.api_login(name, "x")[0] for name in ("bob", "carol", "student", "alice") * 6]
            right, _ = guesser.api_login("mallory", accounts["mallory"])
            return answers[-1] == 429 and right == 429, f"after {len(answers)} guesses over 4 names: {answers[-1]}," \
                f" even a right password {right}"

        t("web: brute force on a classmate's password", lockout, alive)
        t("web: password spraying from one client", spray, alive)

        def outsider() -> Outcome:
            b, _, token = logged_in("mallory")
            body, ctype = multipart({"archive": ("hello.zip", zip_bytes(HELLO))})
            up, _, _ = b.request("POST", UPLOAD_API, body, {"Content-Type": ctype, "X-CSRF-Token": token})
            page, _, _ = b.get("/courses/so")
            stored = (course.root / "repo" / "1-hello" / "mallory").exists()
            return up in (403, 404) and page in (403, 404) and not stored, \
                f"upload {up}, course page {page}, stored {stored}"

        def not_archive() -> Outcome:
            b, _, token = logged_in()
            body, ctype = multipart({"archive": ("x.zip", b"MZ\x90\x00 this is no archive" * 100)})
            status, _, text = b.request("POST", UPLOAD_API, body, {"Content-Type": ctype, "X-CSRF-Token": token})
            return status == 422, f"HTTP {status}: {text.strip()}"

        def student_recheck() -> Outcome:
            b, _, token = logged_in("bob")
            status, _, _ = b.request("POST", f"/api/courses/so/assignments/1-hello/accounts/bob/submissions/"
                                     f"{quote(sub.name)}/recheck", b"", {"X-CSRF-Token": token})
            return status in (403, 404), f"HTTP {status}"

        def slow_headers() -> Outcome:
            socks = []
            try:
                for i in range(20):
                    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.9.{i + 2}", 0))
                    s.sendall(b"GET /api/session HTTP/1.1\r\nHost: x\r\n")   # and never the end of the headers
                    s.setblocking(False)
                    socks.append(s)
                ok, state = alive()
                wait_for(lambda: all(hung_up(s) for s in socks), "waitress to close silent connections", 30)
                return ok, f"20 half-sent requests; meanwhile: {state}; all closed by the channel timeout"
            finally:
                for s in socks:
                    s.close()

        t("web: a non-student uploads", outsider, alive)
        t("web: a non-archive uploaded", not_archive, alive)
        t("web: a student rechecks (admins only)", student_recheck, alive)
        t("web: 80 KiB of headers", lambda: refused_head(raw_head(
            port, b"GET /api/session HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 80 * 1024 + b"\r\n\r\n")), alive)
        t("web: 20 connections that never finish their headers", slow_headers, alive)
    finally:
        server.stop()


# =========================================================================== the upload path


def zip_with(members: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)
    info.create_system = 3
    return info


def tar_with(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz",
             fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def tar_entry(name: str, kind: bytes, link: str = "", **extra) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    for k, v in extra.items():
        setattr(info, k, v)
    return info


def zeros_zip(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.c", "w", force_zip64=True) as f:
        chunk = bytes(MIB)
        for _ in range(size // MIB):
            f.write(chunk)
    return buf.getvalue()


def zeros_targz(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("zeros.c")
        info.size = size

        class Zeros(io.RawIOBase):
            left = size

            def readinto(self, b):   # noqa: ANN001
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tf.addfile(info, Zeros())
    return buf.getvalue()


def pax_chain(count: int) -> bytes:
    """A tar of ``count`` pax extended headers in a row before one file."""
    buf = io.BytesIO()
    for i in range(count):
        record = f"comment=x{i}\n"
        line = f"{len(record) + 3} {record}"
        line = f"{len(line)} {record}" if len(line) != int(line.split()[0]) else line
        data = line.encode()
        info = tarfile.TarInfo(f"PaxHeaders/{i}")
        info.type = tarfile.XHDTYPE
        info.size = len(data)
        buf.write(info.tobuf(tarfile.USTAR_FORMAT))
        buf.write(data + bytes(-len(data) % 512))
    info = tarfile.TarInfo("hello.c")
    data = HELLO_C.encode()
    info.size = len(data)
    buf.write(info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512) + bytes(1024))
    return buf.getvalue()


def upload_section(tally: Tally, tmp: Path) -> None:
    from vmchecker import submit
    from vmchecker.repo import Repository

    root = tmp / "upload"
    path = write_course(root, extra={
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00",
                   "students": ["bob", "carol", "dave", "erin"], "max_account_storage": "3M"},
        "assignments": {"1-hello": {"deadline": "2099-03-01 23:55:00", "min_interval": 0},
                        "2-wait": {"title": "Waiting", "deadline": "2099-03-01 23:55:00", "machine": "linux",
                                   "min_interval": 600}}})
    course = config.load_course(path)
    repo = Repository(course)
    outside = root / "outside"
    outside.mkdir()
    global_config = root / "global.yaml"

    def stored(account: str, task: str = "1-hello") -> int:
        try:
            return len(repo.history(task, account))
        except VmcheckerError:   # a name the repository refuses has nothing stored
            return 0

    def alive() -> Outcome:
        sub = submit.submit(course, "1-hello", "dave", zip_bytes(HELLO))
        files = sorted(p.name for p in sub.files_dir.iterdir())
        leftovers = [p.name for p in repo.root.glob(".incoming-*")]
        escaped = [p.name for p in outside.iterdir()] + [p for p in ("evil", "evil.txt") if (root / p).exists()]
        ok = files == ["Makefile", "hello.c"] and not leftovers and not escaped
        return ok, f"a good upload stored ({files}); leftovers {leftovers}; outside {escaped}"

    def refused(data: bytes, account: str = "bob", task: str = "1-hello", **kw) -> Outcome:
        before = stored(account, task)
        try:
            submit.submit(course, task, account, data, **kw)
        except VmcheckerError as exc:   # SubmissionRefused, or a bad name refused before it
            after = stored(account, task)
            return after == before, f"refused: {one_line(exc.message, 110)}"
        return False, f"STORED ({len(data)} bytes)"

    t = tally.run
    out = str(outside)
    t("upload: zip slip '../../outside/evil'", lambda: refused(zip_with([("../../outside/evil", b"x")])), alive)
    t("upload: zip with an absolute path", lambda: refused(zip_with([(f"{out}/evil", b"x")])), alive)
    t("upload: zip slip with backslashes", lambda: refused(zip_with([("..\\..\\outside\\evil", b"x")])), alive)
    t("upload: zip symlink to /etc/shadow", lambda: refused(zip_with([(zip_symlink("s.c", "/etc/shadow"),
                                                                        b"/etc/shadow")])), alive)
    t("upload: zip symlink dir, then a file through it",
      lambda: refused(zip_with([(zip_symlink("d", out), out.encode()), ("d/evil", b"x")])), alive)
    t("upload: tar slip '../evil'", lambda: refused(tar_with([("../evil", b"x"), ("hello.c", b"")])), alive)
    t("upload: tar './../../outside/evil'", lambda: refused(tar_with([("./../../outside/evil", b"x")])), alive)
    t("upload: tar absolute path", lambda: refused(tar_with([(f"{out}/evil", b"x")])), alive)
    t("upload: tar symlink out", lambda: refused(tar_with([tar_entry("s", tarfile.SYMTYPE, out)])), alive)
    t("upload: tar symlink, then a file through it",
      lambda: refused(tar_with([tar_entry("d", tarfile.SYMTYPE, out), ("d/evil", b"x")])), alive)
    t("upload: tar hardlink to /etc/passwd", lambda: refused(tar_with([tar_entry("h", tarfile.LNKTYPE,
                                                                                  "/etc/passwd")])), alive)
    t("upload: tar hardlink to '../x'", lambda: refused(tar_with([tar_entry("h", tarfile.LNKTYPE, "../x")])), alive)
    t("upload: tar character device (/dev/mem)",
      lambda: refused(tar_with([tar_entry("mem", tarfile.CHRTYPE, devmajor=1, devminor=1)])), alive)
    t("upload: tar block device", lambda: refused(tar_with([tar_entry("sda", tarfile.BLKTYPE, devmajor=8)])), alive)
    t("upload: tar FIFO", lambda: refused(tar_with([tar_entry("p", tarfile.FIFOTYPE)])), alive)
    t("upload: zip bomb (64 MiB of zeros)", lambda: refused(zeros_zip(64 * MIB)), alive)
    t("upload: gzip bomb (tar.gz of 64 MiB of zeros)", lambda: refused(zeros_targz(64 * MIB)), alive)
    t("upload: bare gzip bomb (64 MiB of text, no tar inside)", lambda: refused(gzip.compress(b"A" * 64 * MIB)),
      alive)
    t("upload: tar pax header of 1 MiB", lambda: timed(lambda: refused(tar_with(
        [tar_entry("a.c", tarfile.REGTYPE, pax_headers={"comment": "x" * MIB})], mode="w")), 5), alive)
    t("upload: tar GNU long name of 1 MiB", lambda: timed(lambda: refused(tar_with(
        [("n" * MIB, b"x")], mode="w", fmt=tarfile.GNU_FORMAT)), 5), alive)
    t("upload: tar of 12 pax headers in a row", lambda: refused(pax_chain(12)), alive)
    t("upload: 2500 members", lambda: refused(zip_with([(f"f{i}.c", b"") for i in range(2500)])), alive)
    t("upload: a name of 2000 characters", lambda: refused(zip_with([("n" * 2000 + ".c", b"x")])), alive)
    t("upload: a name with a newline and an escape",
      lambda: refused(zip_with([("ok.c\n2026-01-01 forged\x1b[2J", b"x")])), alive)
    t("upload: oversized archive (11 MB)", lambda: refused(zip_with([("r.bin", os.urandom(11 * 1000 * 1000))],
                                                                    zipfile.ZIP_STORED)), alive)
    t("upload: not an archive", lambda: refused(b"#!/bin/sh\nrm -rf /\n" * 10), alive)
    t("upload: a truncated zip", lambda: refused(zip_bytes(HELLO)[:-40]), alive)

    def accepted_as(data: bytes, expect: list[str], account: str = "erin") -> Outcome:
        try:
            sub = submit.submit(course, "1-hello", account, data)
        except VmcheckerError as exc:
            return True, f"refused: {one_line(exc.message, 110)}"
        files = sorted(str(p.relative_to(sub.files_dir)) for p in sub.files_dir.rglob("*"))
        return files == expect, f"stored as a plain submission holding {files}"

    t("upload: an empty zip", lambda: accepted_as(zip_with([]), []), alive)
    # two zero blocks end a tar: 64 MiB of zeros gzipped is an empty tar.gz, read no further than its end mark
    t("upload: gzip of 64 MiB of zeros (an empty tar)", lambda: timed(
        lambda: accepted_as(gzip.compress(bytes(64 * MIB)), [], account="dave"), 5), alive)
    nested = zip_with([("inner.zip", zeros_zip(16 * MIB)), ("hello.c", HELLO_C.encode())])
    t("upload: nested archive (a zip bomb inside a zip)",
      lambda: accepted_as(nested, ["hello.c", "inner.zip"]), alive)
    t("upload: a file and a folder of the same name",
      lambda: refused(zip_with([("x", b"file"), ("x/y.c", b"nested")])), alive)
    t("upload: account name '../../outside'",
      lambda: refused(zip_bytes(HELLO), account="../../outside"), alive)
    t("upload: assignment name '../../outside'",
      lambda: refused(zip_bytes(HELLO), task="../../outside"), alive)

    def interval() -> Outcome:
        submit.submit(course, "2-wait", "bob", zip_bytes(HELLO))
        return refused(zip_bytes(HELLO), task="2-wait")

    def after_refused_unpack() -> Outcome:
        first = refused(zip_with([("../evil", b"x")]), account="carol", task="2-wait")
        second = refused(zip_bytes(HELLO), account="carol", task="2-wait")
        return first[0] and second[0] and "apart" in second[1], f"bad archive {first[1]}; then the next {second[1]}"

    def quota() -> Outcome:
        blob = os.urandom(1400 * 1000)
        submit.submit(course, "1-hello", "carol", zip_with([("r1.bin", blob)], zipfile.ZIP_STORED))
        return refused(zip_with([("r2.bin", os.urandom(1400 * 1000))], zipfile.ZIP_STORED), account="carol")

    t("upload: a second upload within min_interval", interval, alive)
    t("upload: a hostile archive, then another within min_interval", after_refused_unpack, alive)
    t("upload: over max_account_storage", quota, alive)

    def cli(account: str, data: bytes, *extra: str) -> Outcome:
        archive = root / "cli.zip"
        archive.write_bytes(data)
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "vmchecker-submit"), "--config", str(global_config),
                               "--no-queue", *extra, "so", "1-hello", account, str(archive)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        said = (proc.stderr or proc.stdout).strip().splitlines()
        return proc.returncode != 0 and stored(account) == 0 or account == "bob" and proc.returncode != 0, \
            f"exit {proc.returncode}: {one_line(said[-1] if said else '', 110)}"

    t("upload: vmchecker-submit with a zip slip", lambda: cli("bob", zip_with([("../../outside/evil", b"x")])), alive)
    t("upload: vmchecker-submit for a non-student", lambda: cli("mallory", zip_bytes(HELLO)), alive)
    t("upload: vmchecker-submit with a gzip bomb", lambda: cli("bob", zeros_targz(64 * MIB)), alive)


# =========================================================================== guests on LXC

DISK_MB = 32
DISK_FILL = """\
static void fill(void) {
    FILE *f = fopen("/var/tmp/fill", "w");
    if (!f) { fprintf(stderr, "fill: %s\\n", strerror(errno)); return; }
    static char block[1 << 16];
    long written = 0;
    int err = 0;
    setvbuf(f, NULL, _IONBF, 0);
    for (int i = 0; i < 4096 && !err; i++) {   /* up to 256 MiB */
        size_t n = fwrite(block, 1, sizeof block, f);
        written += (long)n;
        if (n < sizeof block) err = errno;
    }
    if (fclose(f) && !err) err = errno;
    fprintf(stderr, "fill: %ld bytes: %s\\n", written, err ? strerror(err) : (written ? "short write" : "none"));
    unlink("/var/tmp/fill");
}
"""
PRIVILEGED = """\
#include <sys/resource.h>
static void attempt(const char *what, int failed) {
    fprintf(stderr, "attack %s: %s\\n", what, failed ? "refused" : "WORKED");
}
static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    int r = write(fd, text, strlen(text)) < 0 ? -1 : 0;
    close(fd);
    return r;
}
"""
PRIVILEGED_BODY = """\
attempt("write /proc/sysrq-trigger", write_file("/proc/sysrq-trigger", "h") != 0);
attempt("write core_pattern", write_file("/proc/sys/kernel/core_pattern", "|/bin/sh") != 0);
attempt("setpriority -10", setpriority(PRIO_PROCESS, 0, -10) != 0);
attempt("renice the parent", setpriority(PRIO_PROCESS, getppid(), -5) != 0);
attempt("kill init", kill(1, SIGKILL) != 0);
puts("Hello, world!");
return 0;"""
ROOT_RUN = """\
try() { what=$1; shift; if "$@" 2>/dev/null; then echo "attack $what: WORKED"; else echo "attack $what: refused"; fi; }
try 'root writes /proc/sysrq-trigger' sh -c 'echo h > /proc/sysrq-trigger'
try 'root renices to -5' renice -n -5 $$
try 'root sets a real-time priority' chrt -f 1 true
try 'root writes core_pattern' sh -c 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'
try 'root mounts /sys rw' mount -o remount,rw /sys
dd if=/dev/zero of=/var/tmp/big bs=1M count=%d 2>&1; echo "dd $?"
"""


def guest_section(tally: Tally, tmp: Path) -> None:
    from tests.executor import grading_cases as cases
    from tests.executor.helpers import run_job, vmr
    from tests.lab import lxc_unusable

    reason = lxc_unusable()
    if reason:
        tally.skipped("guest", reason)
        return
    from vmchecker.executor import get_host

    host = get_host("lxc")
    mine = {os.getpid()}

    def clones_left() -> list[str]:
        return [n for n in host.clones() if any(f"-{pid}-" in n for pid in mine)]

    counter = itertools.count()

    def job(files: dict[str, str], *, limits: dict | None = None, helper: float = cases.HELPER_TIMEOUT,
            timeout: int = 60, run: str | None = None):
        folder = tmp / "guest" / f"job{next(counter)}"
        try:
            ran, bundle = run_job(host, folder, {"limits": limits or {}}, files=files, build=cases.BUILD_SH,
                                  run=run or cases.run_sh(helper), tests=cases.TESTS, timeout=timeout,
                                  job_id=f"hostile{next(counter)}")
        finally:
            for name in clones_left():
                host.destroy_clone(name)
        return ran, bundle, cases.final_grade(bundle / "results")

    def alive() -> Outcome:
        left = clones_left()
        return not left, f"no clone left{'' if not left else ': ' + str(left)}"

    def nothing(files: dict[str, str], *reasons: str, **kw) -> Callable[[], Outcome]:
        def attack() -> Outcome:
            ran, _bundle, grade = job(files, **kw)
            first = grade.text.splitlines()[0] if grade.text else ""
            ok = ran.status == "done" and (grade.points, grade.uncapped) == (0, 0) and any(r in first for r in reasons)
            return ok, f"job {ran.status}, grade {grade.points} (uncapped {grade.uncapped}): {first}"
        return attack

    def exactly_full(files: dict[str, str], check: Callable[[Path], tuple[bool, str]] | None = None,
                     **kw) -> Callable[[], Outcome]:
        def attack() -> Outcome:
            ran, bundle, grade = job(files, **kw)
            ok = ran.status == "done" and (grade.points, grade.uncapped) == (10, 10) and grade.text == "done\n"
            what = f"job {ran.status}, grade {grade.points} (uncapped {grade.uncapped})"
            if check:
                fine, said = check(bundle)
                ok, what = ok and fine, f"{what}; {said}"
            return ok, what
        return attack

    def attacks_refused(step: str, names: tuple[str, ...] | None = None) -> Callable[[Path], tuple[bool, str]]:
        def check(bundle: Path) -> tuple[bool, str]:
            outcomes = cases.attack_outcomes(vmr(bundle, f"{step}.vmr"))
            wanted = {n: outcomes.get(n) for n in (names or outcomes)}
            worked = [n for n, o in wanted.items() if o != "refused"]
            return bool(wanted) and not worked, f"{len(wanted)} attacks, not refused: {worked}"
        return check

    def build_attacks(bundle: Path) -> tuple[bool, str]:
        fine, said = attacks_refused("build-stdout", cases.REFUSED_ATTACKS)(bundle)
        background = "ALIVE" not in vmr(bundle, "run-stderr.vmr") and "gone" in vmr(bundle, "run-stderr.vmr")
        return fine and background, f"{said}; the build's background process gone by the run: {background}"

    def disk(bundle: Path) -> tuple[bool, str]:
        said = re.search(r"fill: (\d+) bytes: (.*)", vmr(bundle, "run-stderr.vmr"))
        if not said:
            return False, "no fill line"
        written = int(said.group(1))
        return "No space left" in said.group(2) and written <= DISK_MB * MIB, \
            f"wrote {written / MIB:.1f} MiB then '{said.group(2)}' (disk_mb {DISK_MB})"

    t = tally.run
    t("guest: fork bomb", nothing(cases.FORK_BOMB, "hello", limits={"pids": 64}), alive)
    t("guest: memory hog (4 GiB in 64 MiB)", nothing(cases.MEMORY_HOG, "hello", limits={"memory_mb": 64}), alive)
    t("guest: output flood", nothing(cases.OUTPUT_FLOOD, "hello", limits={"output_kb": 16}), alive)
    t("guest: infinite loop (stopped by the tests)", nothing(cases.INFINITE_LOOP, "within 3 s", helper=3), alive)
    t("guest: infinite loop past the step's timeout",
      nothing(cases.INFINITE_LOOP, "time limit", "timed out", "did not finish", helper=600, timeout=5), alive)
    t("guest: kills its parent and ancestors", nothing(cases.KILLS_PARENT, "hello", "run"), alive)
    t("guest: compile error", nothing(cases.COMPILE_ERROR, "build"), alive)
    t("guest: empty archive", nothing(cases.EMPTY, "build"), alive)
    t("guest: correct program writes its own grade", exactly_full(cases.FORGING_PROGRAM), alive)
    t("guest: Makefile rewrites run.sh, forges, leaves a background process",
      exactly_full(cases.FORGING_BUILD, build_attacks), alive)
    t("guest: wrong program whose build forges", nothing(cases.WRONG_FORGING_BUILD, "hello"), alive)
    t(f"guest: program fills the disk past disk_mb={DISK_MB}",
      exactly_full(cases.with_makefile(cases.program('fill();\nputs("Hello, world!");\nreturn 0;', DISK_FILL)),
                   disk, limits={"disk_mb": DISK_MB}), alive)
    t("guest: program writes sysrq-trigger, renices, kills init",
      exactly_full(cases.with_makefile(cases.program(PRIVILEGED_BODY, PRIVILEGED)), attacks_refused("run-stderr")),
      alive)

    def root_attacks() -> Outcome:
        ran, bundle, _grade = job(cases.CORRECT, run=ROOT_RUN % (DISK_MB + 50), limits={"disk_mb": DISK_MB})
        fine, said = attacks_refused("run-stdout")(bundle)
        text = vmr(bundle, "run-stdout.vmr")
        copied = re.search(r"^(\d+) bytes", text, re.M)
        quota = "No space left on device" in text and "dd 1" in text and bool(copied) \
            and int(copied.group(1)) <= DISK_MB * MIB
        wrote = f"{int(copied.group(1)) / MIB:.1f} MiB" if copied else "?"
        return ran.status == "done" and fine and quota, \
            f"job {ran.status}; {said}; dd of {DISK_MB + 50} MiB stopped by ENOSPC at {wrote}: {quota}"

    t("guest: guest root: sysrq, renice, chrt, /proc, remount, disk fill", root_attacks, alive)

    def still_grades() -> Outcome:
        ran, _bundle, grade = job(cases.CORRECT)
        return ran.status == "done" and grade.points == 10, f"a correct program afterwards: {grade.points}"

    t("guest: a correct program after them all (the tester still grades)", still_grades, alive)


# =========================================================================== main

SECTIONS = {"rpc": rpc_section, "web": web_section, "upload": upload_section, "guest": guest_section}


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="vmck-hostile-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run (default {','.join(SECTIONS)})")
    p.add_argument("-v", "--verbose", action="store_true", help="show the components' log")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s")
    tally = Tally()
    saved_env = os.environ.get("VMCHECKER_CONFIG")
    with workspace() as tmp:
        for name in args.only.split(","):
            try:
                SECTIONS[name](tally, tmp)
            except Exception as exc:   # a section that cannot start: said, and the next one runs
                tally.rows.append((f"{name}: setup", False, f"{type(exc).__name__}: {exc}"))
                print(f"{name + ': setup':<52} contained=no   {one_line(f'{type(exc).__name__}: {exc}')}",
                      flush=True)
    if saved_env is None:
        os.environ.pop("VMCHECKER_CONFIG", None)
    contained = sum(1 for _n, ok, _w in tally.rows if ok)
    print(f"hostile_inputs={len(tally.rows)} contained={contained}", flush=True)
    return 0 if contained == len(tally.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
