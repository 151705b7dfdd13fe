"""The wire format's validators and the client, against a real XML-RPC server on loopback."""

from __future__ import annotations

import socket
import xmlrpc.client

import pytest

from tests.tester.helpers import KEY, RecordingStorer
from tests.util import free_port
from vmchecker import rpc
from vmchecker.errors import CallRefused, RpcError, TryLater


@pytest.mark.parametrize("name", ["", "a/b", "../x", "..", ".", "a\0b", "x" * 129, "a..b", "tab\there", 7])
def test_bad_file_names_are_refused(name):
    with pytest.raises(RpcError, match="bad file name"):
        rpc.check_file_name(name)


def test_good_payload_round_trips():
    req = rpc.NotifyRequest.validate("j-1.2", KEY, "done", ["result.json", "run-stdout.vmr"],
                                     {"total": 1.5, "exit": 0, "backend": "lxc", "timed_out": False})
    assert rpc.NotifyRequest.from_dict(req.to_dict()) == req
    assert req.params() == ("j-1.2", KEY, "done", ["result.json", "run-stdout.vmr"], req.stats)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("job_id", "../j", "bad job_id"),
    ("key", "", "bad key"),
    ("key", "a b", "bad key"),
    ("status", "running", "bad status"),
    ("files", "result.json", "expected a list"),
    ("files", ["a"] * 2, "listed twice"),
    ("files", [f"f{i}" for i in range(rpc.MAX_FILES + 1)], "at most"),
    ("stats", [], "expected a mapping"),
    ("stats", {"nested": {"a": 1}}, "expected a number"),
    ("stats", {"big": 2**40}, "32-bit"),
    ("stats", {"nan": float("nan")}, "finite"),
    ("stats", {f"k{i}": 1 for i in range(rpc.MAX_STATS + 1)}, "at most"),
    ("stats", {"": 1}, "bad stats key"),
])
def test_each_field_is_validated(field, value, message):
    fields = {"job_id": "j1", "key": KEY, "status": "done", "files": [], "stats": {}}
    fields[field] = value
    with pytest.raises(RpcError, match=message):
        rpc.NotifyRequest.validate(**fields)


def test_coerce_stats_makes_measurements_travel():
    stats = rpc.coerce_stats({"peak_bytes": 2**40, "none": None, "nested": [1], "ok": 3, "s": "x" * 5000})
    assert stats == {"peak_bytes": float(2**40), "ok": 3, "s": "x" * rpc.MAX_STAT_STRING_LENGTH}
    rpc.check_stats(stats)


def test_client_calls_a_real_server_and_maps_faults():
    with RecordingStorer() as storer:
        client = rpc.Client(storer.url, timeout=5)
        req = rpc.NotifyRequest.validate("j1", KEY, "error", ["result.json"], {"t": 1})
        assert client.notify(req) is True
        assert storer.calls == [("j1", KEY, "error", ["result.json"], {"t": 1})]
        with pytest.raises(CallRefused, match="refused status"):
            client.status()  # not registered on this server: a fault


def test_try_later_fault_is_not_a_refusal():
    def answer(*args):
        raise xmlrpc.client.Fault(rpc.FAULT_TRY_LATER, "busy")

    with RecordingStorer(answer=answer) as storer:
        with pytest.raises(TryLater, match="retry notify later") as info:
            rpc.Client(storer.url).notify(rpc.NotifyRequest.validate("j1", KEY, "done", [], {}))
        assert not isinstance(info.value, CallRefused)


def test_absent_and_silent_daemons_are_reported_clearly():
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(RpcError, match=f"storer daemon at {url} is not answering"):
        rpc.Client(url, timeout=2).status()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(RpcError, match="not answering: timed out"):
            rpc.Client(url, timeout=0.5).status()


@pytest.mark.parametrize("url", ["", "ftp://x/", "localhost:1999", None])
def test_bad_urls_are_refused(url):
    with pytest.raises(RpcError, match="bad storer daemon URL"):
        rpc.Client(url)


def test_unknown_method_is_refused_before_sending():
    with pytest.raises(RpcError, match="unknown storer daemon method"):
        rpc.Client("http://127.0.0.1:1/").call("system.listMethods")
