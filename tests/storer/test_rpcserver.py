"""The restricted XML-RPC server: explicit methods, address rules, hardened parsing."""

from __future__ import annotations

import http.client
import select
import socket
import threading
import xmlrpc.client

import pytest

from tests.util import wait_for
from vmchecker.errors import CallRefused
from vmchecker.storer import rpcserver


@pytest.fixture
def server():
    srv = rpcserver.RestrictedServer(("127.0.0.1", 0), max_request_bytes=4096)
    calls = []

    def echo(address, value):
        calls.append((address, value))
        return value

    def buggy(address, value):
        return len(value) + value  # a bug: TypeError inside the method

    def refuse(address):
        raise CallRefused("not you")

    srv.register("echo", echo, rpcserver.loopback_or([]))
    srv.register("refuse", refuse, rpcserver.anyone)
    srv.register("buggy", buggy, rpcserver.anyone)
    srv.register("remote_only", echo, lambda addr: addr == "10.9.9.9")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.calls = calls
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _proxy(srv):
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{srv.port}/", allow_none=True)


def _post(srv, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("POST", "/", body=body, headers={"Content-Type": "text/xml"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_registered_method_gets_caller_address(server):
    assert _proxy(server).echo("hi") == "hi"
    assert server.calls == [("127.0.0.1", "hi")]


def test_unknown_method_and_address_rule_refused(server):
    with pytest.raises(xmlrpc.client.Fault) as info:
        _proxy(server).system.listMethods()
    assert info.value.faultCode == rpcserver.FAULT_NOT_FOUND
    with pytest.raises(xmlrpc.client.Fault) as info:
        _proxy(server).remote_only("x")
    assert info.value.faultCode == rpcserver.FAULT_REFUSED
    with pytest.raises(xmlrpc.client.Fault, match="not you"):
        _proxy(server).refuse()
    assert server.calls == []


def test_a_call_that_does_not_fit_the_method_is_a_bad_request(server, caplog):
    for params in ((), ("a", "b")):
        with pytest.raises(xmlrpc.client.Fault) as info:
            _proxy(server).echo(*params)
        assert info.value.faultCode == rpcserver.FAULT_BAD_REQUEST
        assert "bad arguments for echo" in info.value.faultString
    assert server.calls == []
    assert "bad call to echo" in caplog.text


def test_a_type_error_inside_the_method_is_ours_and_retried(server, caplog):
    """A bug in a method must not be blamed on the caller: it is logged with its
    traceback and answered with the fault that makes a caller keep the call."""
    with pytest.raises(xmlrpc.client.Fault) as info:
        _proxy(server).buggy("abc")
    assert info.value.faultCode == rpcserver.FAULT_TRY_LATER
    assert "internal error in buggy" in info.value.faultString
    crash = [r for r in caplog.records if "buggy from 127.0.0.1 crashed" in r.getMessage()]
    assert crash and crash[0].exc_info and crash[0].exc_info[0] is TypeError


def test_loopback_or_admits_loopback_and_the_listed_networks() -> None:
    fixed = rpcserver.loopback_or(["10.1.0.0/16", "192.0.2.7"])
    assert all(fixed(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "192.0.2.7"))
    assert not fixed("10.2.0.1") and not fixed("192.0.2.8")
    allowed: list[str] = []
    live = rpcserver.loopback_or(lambda: allowed)  # asked at each call: follows config edits
    assert live("127.0.0.1") and not live("192.0.2.7")
    allowed.append("192.0.2.0/24")
    assert live("192.0.2.7")


def test_entity_expansion_refused(server):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<methodCall><methodName>echo</methodName><params><param><value><string>&b;</string>"
            b"</value></param></params></methodCall>")
    status, body = _post(server, bomb)
    assert server.calls == []
    assert b"aaaaaaaaaa" not in body
    assert status in (200, 500)


def test_oversized_request_refused_before_parsing(server):
    big = xmlrpc.client.dumps(("x" * 10000,), "echo").encode()
    status, _ = _post(server, big)
    assert status == 413
    assert server.calls == []


def test_stalled_clients_cannot_exhaust_the_server():
    srv = rpcserver.RestrictedServer(("127.0.0.1", 0), max_concurrent=4)
    srv.register("echo", lambda address, value: value, rpcserver.loopback_or([]))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    stalled = []
    try:
        for _ in range(12):  # headers promising a body that never comes
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            stalled.append(s)
        def hung_up() -> int:   # readable with nothing to read (or reset): the server closed it
            count = 0
            for s in select.select(stalled, [], [], 0)[0]:
                try:
                    count += s.recv(1, socket.MSG_PEEK) == b""
                except ConnectionError:
                    count += 1
            return count

        # the server hangs up on those past the cap (when it gets to them), and holds the rest
        wait_for(lambda: hung_up() >= 8, "the server to hang up on the connections past its cap")
        assert hung_up() == 8

        def served() -> bool:
            try:
                return _proxy(srv).echo("back") == "back"
            except (ConnectionError, xmlrpc.client.ProtocolError, http.client.HTTPException):
                return False

        for s in stalled:
            s.close()
        wait_for(served, "calls to be served again once the stalled clients are gone")
    finally:
        for s in stalled:
            s.close()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
