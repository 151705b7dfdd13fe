"""The restricted XML-RPC server: explicit methods, address rules, hardened parsing."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import xmlrpc.client

import pytest

from tests.util import hung_up, wait_for
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


def test_one_client_past_its_cap_loses_its_most_idle_connections():
    """Connections being read are capped per address; past the cap the one quiet longest
    goes, so the newest (a real call) always gets in."""
    srv = rpcserver.RestrictedServer(("127.0.0.1", 0), max_per_client=4)
    srv.register("echo", lambda address, value: value, rpcserver.loopback_or([]))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    idle: list[socket.socket] = []
    try:
        for n in range(10):
            idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            wait_for(lambda n=n: srv.connections_being_read() == min(n + 1, 4), "the server to read the connection")
        wait_for(lambda: all(hung_up(s) for s in idle[:6]), "the six most idle connections to be dropped")
        assert not any(hung_up(s) for s in idle[6:])
        assert _proxy(srv).echo("still served") == "still served"
        assert sum(hung_up(s) for s in idle[6:]) == 1  # the real call took the place of the oldest
    finally:
        for s in idle:
            s.close()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
def test_an_encoded_body_is_refused_without_inflating(server, encoding):
    body = gzip.compress(xmlrpc.client.dumps(("x" * 100_000,), "echo").encode())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "text/xml", "Content-Encoding": encoding})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 415
    assert server.calls == []
    assert _proxy(server).echo("after") == "after"


def test_a_request_past_the_slots_is_answered_503(server):
    """Slots are taken by complete requests only; with none free the caller is told at once."""
    for _ in range(rpcserver.MAX_CONCURRENT_REQUESTS):
        assert server._slots.acquire(blocking=False)
    try:
        with pytest.raises(xmlrpc.client.ProtocolError) as info:
            _proxy(server).echo("x")
        assert info.value.errcode == 503
    finally:
        for _ in range(rpcserver.MAX_CONCURRENT_REQUESTS):
            server._slots.release()
    assert _proxy(server).echo("x") == "x"
