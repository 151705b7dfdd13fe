"""A threaded XML-RPC server that trusts nothing it receives.

After the thesis's SelectiveServer: each method is registered explicitly together with
the rule that decides which caller addresses may use it, and the method receives the
caller's address. Requests are size-capped before they are read and parsed with
defusedxml, so entity expansion and external entities are refused.
"""

from __future__ import annotations

import http
import http.client
import inspect
import io
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
MAX_HEADER_BYTES = 16 * 1024
MAX_CONCURRENT_REQUESTS = 64     # requests being answered at once (each a thread)
REQUEST_DEADLINE = 10.0          # seconds from accept for the whole request to arrive
REPLY_TIMEOUT = 30.0             # per send, while a reply is written
MAX_OPEN_CONNECTIONS = 512       # connections being read at once (no thread, no slot)
MAX_CONNECTIONS_PER_CLIENT = 32  # of those, from one address

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


@dataclass
class _Reading:
    """A connection whose request is still arriving; it holds no slot."""

    sock: socket.socket
    address: str
    accepted: float                  # monotonic: the whole request is due by accepted + deadline
    last: float                      # monotonic time of the last bytes, for dropping the most idle
    buf: bytearray = field(default_factory=bytearray)
    need: int | None = None          # total bytes of headers and body, once the headers are in


@dataclass(frozen=True)
class _Request:
    """A complete request read by the reader, handed to a handler thread with its slot."""

    sock: socket.socket
    data: bytes

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class _Handler(SimpleXMLRPCRequestHandler):
    """Answers one request the reader has already read whole: it reads from memory, so
    a slow client never holds a slot; only the reply is written to the socket."""

    rpc_paths = ("/", "/RPC2")
    timeout = REPLY_TIMEOUT  # a caller that does not read its reply cannot hold a slot

    def setup(self) -> None:
        self.connection = self.request.sock
        self.connection.settimeout(self.timeout)
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = self.connection.makefile("wb")

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        self.server.local.address = self.client_address[0]
        super().do_POST()

    def decode_request_content(self, data: bytes) -> bytes:
        return data  # the reader refused every Content-Encoding: nothing is ever inflated

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


def _refusal(head: bytes, max_body: int) -> tuple[int, int]:
    """(HTTP status, body length) for a request's head; status 0 when it may be read on.

    Everything a request may be refused for is decided here, before its body is read."""
    try:
        line, _, rest = head.partition(b"\r\n")
        method, _target, version = line.decode("ascii").split()
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n"))
    except (ValueError, UnicodeDecodeError, http.client.HTTPException):
        return 400, 0
    if method != "POST" or not version.startswith("HTTP/1."):
        return 501, 0
    if headers.get("transfer-encoding") is not None:
        return 501, 0  # bodies come with a Content-Length, as xmlrpc.client sends them
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        return 415, 0  # a gzip body is refused, not inflated (1 MiB would be 20 MiB of XML)
    try:
        length = int(headers.get("content-length", "-1"))
    except ValueError:
        length = -1
    if length < 0 or length > max_body:
        return (413 if length > 0 else 411), 0
    return 0, length


class _Reader:
    """One thread that reads every request before it may take a slot.

    Connections wait here, without a thread or a slot, until their whole request
    (headers and body) has arrived; a request that is not complete ``deadline`` seconds
    after its connection was accepted is dropped however slowly it keeps trickling.
    At most ``max_open`` connections are read at once and ``max_per_client`` from one
    address: past either cap the connection that has been quiet longest is dropped, so
    idle sockets cannot keep a tester's notify out."""

    def __init__(self, server: RestrictedServer):
        self.server = server
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: list[_Reading] = []
        self._lock = threading.Lock()
        self._reading: dict[socket.socket, _Reading] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rpc-reader", daemon=True)
        self._thread.start()

    def count(self) -> int:
        """Connections being read (accepted, request not yet complete)."""
        with self._lock:
            return len(self._reading) + len(self._incoming)

    def add(self, sock: socket.socket, address: str) -> None:
        sock.setblocking(False)
        now = time.monotonic()
        with self._lock:
            self._incoming.append(_Reading(sock, address, now, now))
        self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(5)
        for reading in list(self._reading.values()) + self._incoming:
            reading.sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already woken, or stopped

    def _run(self) -> None:
        while not self._stopping:
            due = [r.accepted + self.server.request_deadline for r in self._reading.values()]
            timeout = max(min(due) - time.monotonic(), 0) if due else None
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wake_r:
                    self._admit_incoming()
                elif key.fileobj in self._reading:
                    self._read(self._reading[key.fileobj])
            now = time.monotonic()
            for reading in [r for r in self._reading.values()
                            if now >= r.accepted + self.server.request_deadline]:
                log.info("dropped a connection from %s: no whole request within %gs (%d bytes)",
                         reading.address, self.server.request_deadline, len(reading.buf))
                self._drop(reading, 408)

    def _admit_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for reading in incoming:
            same = [r for r in self._reading.values() if r.address == reading.address]
            if len(same) >= self.server.max_per_client:
                victim = min(same, key=lambda r: r.last)
                log.warning("dropped the most idle connection from %s: %d open", reading.address, len(same))
                self._drop(victim, 0)
            if len(self._reading) >= self.server.max_open:
                victim = min(self._reading.values(), key=lambda r: r.last)
                log.warning("dropped the most idle connection (from %s): %d open", victim.address,
                            len(self._reading))
                self._drop(victim, 0)
            with self._lock:
                self._reading[reading.sock] = reading
            self._selector.register(reading.sock, selectors.EVENT_READ)

    def _read(self, reading: _Reading) -> None:
        try:
            data = reading.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(reading, 0)
            return
        reading.buf += data
        reading.last = time.monotonic()
        if reading.need is None:
            end = reading.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(reading.buf) > MAX_HEADER_BYTES:
                    self._drop(reading, 431)
                return
            status, length = _refusal(bytes(reading.buf[:end]), self.server.max_request_bytes)
            if status:
                log.warning("refused a request from %s: HTTP %d", reading.address, status)
                self._drop(reading, status)
                return
            reading.need = end + 4 + length
        if len(reading.buf) >= reading.need:
            self._forget(reading)
            self.server.start_handler(_Request(reading.sock, bytes(reading.buf[:reading.need])),
                                      (reading.address, 0))

    def _forget(self, reading: _Reading) -> None:
        self._selector.unregister(reading.sock)
        with self._lock:
            del self._reading[reading.sock]

    def _drop(self, reading: _Reading, status: int) -> None:
        self._forget(reading)
        if status:
            _answer_and_close(reading.sock, status)
        else:
            reading.sock.close()


def _answer_and_close(sock: socket.socket, status: int) -> None:
    """Best effort, never blocking: a short answer, what already arrived discarded (so
    the close is not a reset that loses the answer), then the close."""
    phrase = http.HTTPStatus(status).phrase
    try:
        sock.setblocking(False)
        sock.send(f"HTTP/1.0 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        while sock.recv(65536):
            pass
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class RestrictedServer(SimpleXMLRPCServer):
    """XML-RPC over HTTP; only registered methods, each behind an address rule.

    A connection is read whole by one reader thread (see :class:`_Reader`) before it takes
    one of ``max_concurrent`` slots and a thread of its own, so slow or idle clients
    cost a socket each and never stop the calls of others."""

    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: a burst of connects is accepted, not stalled

    def __init__(self, address: tuple[str, int], max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_concurrent: int = MAX_CONCURRENT_REQUESTS, *,
                 request_deadline: float = REQUEST_DEADLINE, max_open: int = MAX_OPEN_CONNECTIONS,
                 max_per_client: int = MAX_CONNECTIONS_PER_CLIENT):
        """``request_deadline``: seconds from accept by which headers and body must have
        arrived; ``max_open``/``max_per_client``: connections being read at once, in all
        and from one address."""
        self.max_request_bytes = max_request_bytes
        self.max_concurrent = max_concurrent
        self.request_deadline = request_deadline
        self.max_open = max_open
        self.max_per_client = max_per_client
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.local = threading.local()
        self._methods: dict[str, _Method] = {}
        self._reader: _Reader | None = None
        self._reader_lock = threading.Lock()
        SimpleXMLRPCServer.__init__(self, address, requestHandler=_Handler, logRequests=False,
                                    allow_none=True, use_builtin_types=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def connections_being_read(self) -> int:
        """Accepted connections whose request has not arrived whole yet."""
        return self._reader.count() if self._reader else 0

    def process_request(self, request, client_address) -> None:
        """Hand the accepted connection to the reader; it takes no slot yet."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = _Reader(self)
        self._reader.add(request, client_address[0])

    def start_handler(self, request: _Request, client_address: tuple[str, int]) -> None:
        """Answer a complete request in a thread of its own, at most ``max_concurrent`` at
        once; past that it is answered 503 at once (the caller retries)."""
        if not self._slots.acquire(blocking=False):
            log.warning("refused a request from %s: %d requests already running", client_address[0],
                        self.max_concurrent)
            _answer_and_close(request.sock, 503)
            return
        request.sock.setblocking(True)
        try:
            threading.Thread(target=self._handle, args=(request, client_address), name="rpc", daemon=True).start()
        except BaseException:
            self._slots.release()
            request.close()
            raise

    def _handle(self, request: _Request, client_address: tuple[str, int]) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.stop()
                self._reader = None
        super().server_close()

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
