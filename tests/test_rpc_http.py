"""vmchecker.rpc_http speaks XML-RPC as xmlrpc.client does, against the stdlib's server
and the daemon's own (RestrictedServer), and fails the same ways."""

from __future__ import annotations

import socket
import threading
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCServer

import pytest

from vmchecker import rpc, rpc_http
from vmchecker.errors import CallRefused, RpcError, TryLater
from vmchecker.storer.rpcserver import RestrictedServer

VALUES = [
    "plain", "", "<&> ünïcødé \u2603", "x" * 100_000, 0, -(2**31), 2**31 - 1, True, False, 1.5, -0.0,
    [], [1, "a", [2.5, {"k": 7}]], {"a": 1, "b": [True, {"c": "d"}], "": ""},
]


@pytest.fixture
def echo_server():
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    server.register_function(lambda *args: list(args), "echo")
    server.register_function(lambda value: value, "same")
    server.register_function(lambda: [None, {"k": None}, "x"], "nil")

    def fault(code, text):
        raise xmlrpc.client.Fault(code, text)

    server.register_function(fault, "fault")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_an_answer_reads_as_xmlrpc_client_reads_it(echo_server, value):
    """Every type the daemon answers with, nested; nil too (its server allows it,
    though neither client sends it)."""
    stdlib = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{echo_server}/")
    assert rpc_http.call("127.0.0.1", echo_server, "/", "same", (value,), 5) == stdlib.same(value)
    assert rpc_http.call("127.0.0.1", echo_server, "/RPC2", "echo", (value, "z"), 5) == stdlib.echo(value, "z")
    assert rpc_http.call("127.0.0.1", echo_server, "/", "nil", (), 5) == stdlib.nil() == [None, {"k": None}, "x"]


def test_what_xmlrpc_client_cannot_send_is_refused_alike():
    for value, error in ((None, TypeError), (2**31, OverflowError), ({1: "a"}, TypeError),
                         (rpc.ResultStatus.DONE, TypeError)):
        with pytest.raises(error):
            rpc_http.dumps("m", (value,))
        with pytest.raises(error):
            xmlrpc.client.dumps((value,), "m", allow_none=False)


def test_a_body_parses_to_the_call_xmlrpc_client_would_send():
    params = ("so", "1-hello", 5, [1.25, True], {"a": "<b>"})
    assert xmlrpc.client.loads(rpc_http.dumps("queue_task", params)) == \
        (xmlrpc.client.loads(xmlrpc.client.dumps(params, "queue_task"))[0], "queue_task")


def test_faults_map_as_before(echo_server):
    client = rpc.Client(f"http://127.0.0.1:{echo_server}/")
    with pytest.raises(TryLater, match="asks to retry fault later: busy"):
        _mapped(client, "fault", rpc.FAULT_TRY_LATER, "busy")
    with pytest.raises(CallRefused, match="refused fault: no"):
        _mapped(client, "fault", 403, "no")
    with pytest.raises(CallRefused, match="refused status: .*status"):
        client.status()   # not registered: a fault


def _mapped(client: rpc.Client, method: str, *params):
    """Client.call's mapping for a method outside METHODS (the echo server's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rpc, "METHODS", (*rpc.METHODS, method))
        return client.call(method, *params)


def test_the_daemons_server_answers_it():
    server = RestrictedServer(("127.0.0.1", 0))
    server.register("same", lambda address, value: {**value, "tester": None}, lambda address: True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        value = {"jobs": [{"id": "j1", "state": "queued", "eta": 1.5}], "n": 3}
        assert rpc_http.call("127.0.0.1", server.port, "/", "same", (value,), 5) == {**value, "tester": None}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("answer", "message"), [
    (b"", "not answering: Remote end closed connection without response"),
    (b"HTTP/1.0 500 Broken\r\nContent-Length: 2\r\n\r\nno", "answered HTTP 500 Broken"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n<a/>\n", "not answering: ResponseError"),
    (b"HTTP/1.0 200 OK\r\n\r\n<not xml", "not answering: "),
    (b"garbage\r\n\r\n", "not answering: bad status line"),
])
def test_a_bad_answer_is_reported_as_before(answer, message):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve():
            for _ in range(2):   # a dropped connection is tried once more
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                if answer:
                    return

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with pytest.raises(RpcError, match=message):
            rpc.Client(f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout=5).status()
        thread.join(5)


def test_https_and_users_go_to_the_stdlib():
    assert rpc._plain_http("http://127.0.0.1:5/") == ("127.0.0.1", 5, "/")
    assert rpc._plain_http("http://[::1]:5") == ("::1", 5, "/RPC2")
    assert rpc._plain_http("https://127.0.0.1:5/") is None
    assert rpc._plain_http("http://u:p@127.0.0.1:5/") is None
    assert rpc._plain_http("http://127.0.0.1:99999/") is None
