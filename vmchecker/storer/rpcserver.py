"""A threaded XML-RPC server that trusts nothing it receives.

After the thesis's SelectiveServer: each method is registered explicitly together with
the rule that decides which caller addresses may use it, and the method receives the
caller's address. Requests are size-capped before they are read and parsed with
defusedxml, so entity expansion and external entities are refused.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from xmlrpc.client import Fault
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import defusedxml.xmlrpc

from vmchecker import rpc
from vmchecker.errors import CallRefused, TryLater, VmcheckerError

log = logging.getLogger(__name__)

# xmlrpc.client's parser is the one the server uses: replace it with defusedxml's,
# which refuses entity declarations (billion laughs, external entities).
defusedxml.xmlrpc.monkey_patch()

MAX_REQUEST_BYTES = 1024 * 1024
MAX_CONCURRENT_REQUESTS = 64
REQUEST_TIMEOUT = 30.0

# Fault codes a caller can tell apart (xmlrpc.client.Fault.faultCode). A refusal is
# final; FAULT_TRY_LATER (also for a crash of the method) asks the caller to retry.
FAULT_REFUSED = rpc.FAULT_REFUSED
FAULT_TRY_LATER = rpc.FAULT_TRY_LATER
FAULT_BAD_REQUEST = 400
FAULT_NOT_FOUND = 404

AddressRule = Callable[[str], bool]


def loopback_or(allowed: Iterable[str] | Callable[[], Iterable[str]]) -> AddressRule:
    """A rule admitting loopback addresses and the listed addresses or networks.

    ``allowed`` may be a function: it is then asked afresh at each call from an address
    that is not loopback, so the list can follow config edits without a restart (the
    daemon's own addresses and each course's ``queue_task_from``)."""
    fixed = None if callable(allowed) else _networks(allowed)

    def rule(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if ip.is_loopback:
            return True
        networks = _networks(allowed()) if callable(allowed) else fixed
        return any(ip in n for n in networks or ())

    return rule


def _networks(allowed: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(a, strict=False) for a in allowed]


def anyone(address: str) -> bool:
    """A rule for methods that check their caller themselves (``notify``)."""
    return True


@dataclass(frozen=True)
class _Method:
    func: Callable[..., Any]
    rule: AddressRule
    signature: inspect.Signature  # what a call must match: (caller_address, *params)


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    timeout = REQUEST_TIMEOUT  # a client that sends half a request cannot hold a thread

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        try:
            length = int(self.headers.get("content-length", "-1"))
        except ValueError:
            length = -1
        if length < 0 or length > self.server.max_request_bytes:
            log.warning("refused a request of %s bytes from %s", length, self.client_address[0])
            self.send_response(413 if length > 0 else 411)
            self.send_header("Content-length", "0")
            self.end_headers()
            return
        self.server.local.address = self.client_address[0]
        super().do_POST()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


class RestrictedServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """XML-RPC over HTTP; only registered methods, each behind an address rule."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_concurrent: int = MAX_CONCURRENT_REQUESTS):
        self.max_request_bytes = max_request_bytes
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.local = threading.local()
        self._methods: dict[str, _Method] = {}
        SimpleXMLRPCServer.__init__(self, address, requestHandler=_Handler, logRequests=False,
                                    allow_none=True, use_builtin_types=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address) -> None:
        """One thread per request, at most ``max_concurrent`` at once; past that the
        connection is closed at once (the caller retries), so a flood cannot exhaust
        the daemon."""
        if not self._slots.acquire(blocking=False):
            log.warning("refused a connection from %s: %d requests already running", client_address[0],
                        MAX_CONCURRENT_REQUESTS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def register(self, name: str, func: Callable[..., Any], rule: AddressRule) -> None:
        """Expose ``func(caller_address, *params)`` as ``name`` to callers ``rule`` admits."""
        self._methods[name] = _Method(func, rule, inspect.signature(func))

    def _dispatch(self, method: str, params: tuple) -> Any:
        address = getattr(self.local, "address", "")
        entry = self._methods.get(method)
        if entry is None:
            raise Fault(FAULT_NOT_FOUND, f"no method {method!r}")
        if not entry.rule(address):
            log.warning("refused %s from %s: address not allowed", method, address)
            raise Fault(FAULT_REFUSED, f"{method} is not allowed from {address}")
        try:
            # A call that does not fit the method is the caller's fault; a TypeError
            # raised inside the method is a bug of ours, answered like any crash below.
            entry.signature.bind(address, *params)
        except TypeError as exc:
            log.warning("bad call to %s from %s: %s", method, address, exc)
            raise Fault(FAULT_BAD_REQUEST, f"bad arguments for {method}: {exc}") from None
        try:
            return entry.func(address, *params)
        except CallRefused as exc:
            log.warning("refused %s from %s: %s", method, address, exc.message)
            raise Fault(FAULT_REFUSED, exc.message) from None
        except TryLater as exc:
            raise Fault(FAULT_TRY_LATER, exc.message) from None
        except VmcheckerError as exc:
            log.warning("%s from %s failed: %s", method, address, exc.message)
            raise Fault(FAULT_BAD_REQUEST, exc.message) from None
        except Exception:
            log.exception("%s from %s crashed", method, address)
            raise Fault(FAULT_TRY_LATER, f"internal error in {method}; see the daemon's log") from None
