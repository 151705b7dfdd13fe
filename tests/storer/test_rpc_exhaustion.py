"""The daemon's RPC port under a connection flood: idle and trickling sockets cost the
daemon a socket each, never a slot, so a tester's notify and a status call still get in.

The real daemon serves XML-RPC on loopback; the attack sockets come from many loopback
addresses (127.0.0.2, 127.0.0.3, ...), as a flood from many hosts would, so the cap per
address does not simply drop them."""

from __future__ import annotations

import gzip
import http.client
import itertools
import socket
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.util import hung_up, wait_for, write_course
from vmchecker import rpc
from vmchecker.errors import CallRefused
from vmchecker.storer.daemon import StorerDaemon

IDLE = 110
TRICKLING = 110
HEAD = b"POST /RPC2 HTTP/1.1\r\nHost: storer\r\nContent-Type: text/xml\r\nContent-Length: 4000\r\n\r\n"


@pytest.fixture
def start_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``start_daemon(rpc_deadline)``: the real daemon's XML-RPC server on 127.0.0.1 (its
    testers on TEST-NET, never contacted); stopped after the test."""
    write_course(tmp_path, extra={"testers": {"t1": {"host": "192.0.2.7"}},
                                  "machines": {"linux": {"testers": ["t1"]}}})
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    started: list[tuple[StorerDaemon, threading.Thread]] = []

    def start(rpc_deadline: float) -> StorerDaemon:
        d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state",
                         rpc_deadline=rpc_deadline)
        thread = threading.Thread(target=d.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        started.append((d, thread))
        return d

    yield start
    for d, thread in started:
        d.server.shutdown()
        d.server.server_close()
        d.courses.close()
        d.journal.close()
        thread.join(5)


class Attack:
    """Sockets to the daemon, one per loopback source address; the trickling ones get
    one byte a second (first the head of a request with a 4000-byte body, then the body)
    from a thread until :meth:`close`."""

    def __init__(self, port: int, idle: int, trickling: int):
        sources = (f"127.0.{a}.{b}" for a, b in itertools.product(range(1, 255), range(2, 255)))
        self.idle = [self._connect(port, next(sources)) for _ in range(idle)]
        self.trickling = [self._connect(port, next(sources)) for _ in range(trickling)]
        self.sent = dict.fromkeys(self.trickling, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(port: int, source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        sock.setblocking(False)
        return sock

    def _trickle(self) -> None:
        stream = HEAD + b"x" * 4000
        while not self._stop.is_set():
            for sock in self.trickling:
                try:
                    sock.send(stream[self.sent[sock]:self.sent[sock] + 1])
                    self.sent[sock] += 1
                except OSError:
                    pass  # closed by the server
            self._stop.wait(1.0)

    def hung_up(self, socks: list[socket.socket]) -> int:
        return sum(hung_up(s) for s in socks)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.idle + self.trickling:
            sock.close()


def test_idle_and_trickling_sockets_do_not_stop_notify_or_status(start_daemon):
    """Two hundred and twenty sockets, far past the 64 slots, all accepted and held by the
    daemon; a status call and a notify from another client are answered meanwhile."""
    daemon = start_daemon(rpc_deadline=60.0)  # long: the attackers must still be connected after the calls
    attack = Attack(daemon.port, IDLE, TRICKLING)
    try:
        # the barrier: every attack socket is accepted and being read by the daemon
        wait_for(lambda: daemon.server.connections_being_read() == IDLE + TRICKLING,
                 "the daemon to accept every attack socket")
        wait_for(lambda: all(attack.sent.values()), "every trickling socket to have sent a byte")
        client = rpc.Client(f"http://127.0.0.1:{daemon.port}/", timeout=10)
        assert client.status()["jobs"] == []
        with pytest.raises(CallRefused, match="unknown job"):
            client.call(rpc.NOTIFY, "20260101T000000-0123456789abcdef", "k" * 43, "done", ["grade.vmr"], {})
        # ... while every attack socket is still connected and being read
        assert daemon.server.connections_being_read() == IDLE + TRICKLING
        assert attack.hung_up(attack.idle + attack.trickling) == 0
    finally:
        attack.close()
    wait_for(lambda: daemon.server.connections_being_read() == 0, "the daemon to see the attackers gone")


def test_trickling_and_idle_sockets_are_closed_at_the_whole_request_deadline(start_daemon):
    """A byte a second would never trip a timeout per recv; the deadline counts from the
    accept, so the daemon closes them all, and still answers."""
    daemon = start_daemon(rpc_deadline=2.0)
    attack = Attack(daemon.port, IDLE, TRICKLING)
    try:
        wait_for(lambda: attack.hung_up(attack.idle) == IDLE, "the daemon to close the idle sockets")
        wait_for(lambda: attack.hung_up(attack.trickling) == TRICKLING, "the daemon to close the trickling sockets")
        assert max(attack.sent.values()) >= 2  # they kept sending until the daemon hung up
        assert daemon.server.connections_being_read() == 0
        assert rpc.Client(f"http://127.0.0.1:{daemon.port}/").status()["jobs"] == []
    finally:
        attack.close()


def test_a_gzip_body_is_refused_with_415_and_the_daemon_still_answers(start_daemon):
    daemon = start_daemon(rpc_deadline=10.0)
    xml = xmlrpc.client.dumps(("20260101T000000-0123456789abcdef", "k" * 43, "done", ["a" * 20_000_000], {}),
                              rpc.NOTIFY).encode()
    body = gzip.compress(xml)  # about 20 MB of XML in a small body
    assert len(body) < daemon.server.max_request_bytes
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml", "Content-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.read() == b""
    finally:
        conn.close()
    assert resp.status == 415
    assert rpc.Client(f"http://127.0.0.1:{daemon.port}/").status()["jobs"] == []
