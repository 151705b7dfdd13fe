"""One XML-RPC call over plain HTTP, without ``http.client``.

``xmlrpc.client`` imports ``http.client`` when it is imported, and that brings ``ssl``
and the ``email`` parser: about 40 ms of a ``vmchecker-submit`` whose every other step
takes less. The daemon is called over ``http://`` on the storer itself or a private
network, with a handful of strings, so :mod:`vmchecker.rpc` sends such calls through
this module and keeps ``xmlrpc.client`` for ``https://`` (and a URL carrying a user).

It speaks what ``xmlrpc.client`` does, for the types the wire format uses (strings,
integers, booleans, floats, lists, mappings; ``nil`` in answers; not bytes nor dates,
which no method carries), and fails the same
ways: :class:`Fault` for a fault, :class:`ProtocolError` for an HTTP status other than
200, :class:`ResponseError` for an answer that is not one, ``OSError`` (a refused
connection, ``timed out``) and ``ExpatError`` as they come. Like ``xmlrpc.client``, it
tries once more when the connection was dropped before an answer began.
"""

from __future__ import annotations

import errno
import socket
from xml.parsers import expat

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any

MAXINT, MININT = 2**31 - 1, -(2**31)
MAX_LINE = 65536          # as http.client: a status or header line longer than this is no answer
MAX_HEADERS = 100
_RETRIED = (errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE)


class Fault(Exception):
    """The daemon answered with a fault (as ``xmlrpc.client.Fault``)."""

    def __init__(self, faultCode: Any, faultString: Any):  # noqa: N803 (the XML-RPC names)
        super().__init__(faultCode, faultString)
        self.faultCode = faultCode
        self.faultString = faultString


class ProtocolError(Exception):
    """An HTTP status other than 200 (as ``xmlrpc.client.ProtocolError``)."""

    def __init__(self, url: str, errcode: int, errmsg: str):
        super().__init__(url, errcode, errmsg)
        self.url, self.errcode, self.errmsg = url, errcode, errmsg


class ResponseError(Exception):
    """What came back is not an XML-RPC answer."""


class _Disconnected(ResponseError):
    """The connection closed before an answer began (http.client's RemoteDisconnected)."""


# --------------------------------------------------------------------------- marshalling


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dump(value: Any, out: list[str]) -> None:
    kind = type(value)   # the exact type, as xmlrpc.client: a str enum does not marshal
    if kind is str:
        out.append(f"<value><string>{_escape(value)}</string></value>\n")
    elif kind is bool:
        out.append(f"<value><boolean>{int(value)}</boolean></value>\n")
    elif kind is int:
        if not MININT <= value <= MAXINT:
            raise OverflowError("int exceeds XML-RPC limits")
        out.append(f"<value><int>{value}</int></value>\n")
    elif kind is float:
        out.append(f"<value><double>{value!r}</double></value>\n")
    elif kind in (list, tuple):
        out.append("<value><array><data>\n")
        for item in value:
            _dump(item, out)
        out.append("</data></array></value>\n")
    elif kind is dict:
        out.append("<value><struct>\n")
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError("dictionary key must be string")
            out.append(f"<member>\n<name>{_escape(key)}</name>\n")
            _dump(item, out)
            out.append("</member>\n")
        out.append("</struct></value>\n")
    elif value is None:
        raise TypeError("cannot marshal None unless allow_none is enabled")
    else:
        raise TypeError(f"cannot marshal {kind} objects")


def dumps(method: str, params: tuple[Any, ...]) -> bytes:
    """The body of an XML-RPC call of ``method`` with ``params``."""
    out = ["<?xml version='1.0'?>\n<methodCall>\n", f"<methodName>{_escape(method)}</methodName>\n<params>\n"]
    for param in params:
        out.append("<param>\n")
        _dump(param, out)
        out.append("</param>\n")
    out.append("</params>\n</methodCall>\n")
    return "".join(out).encode("utf-8")


class _Unmarshaller:
    """The values of a ``methodResponse``, as ``xmlrpc.client.Unmarshaller`` reads them."""

    _SCALARS = {"int": int, "i1": int, "i2": int, "i4": int, "i8": int, "biginteger": int,
                "double": float, "float": float, "string": str, "name": str}

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.data: list[str] = []
        self.kind: str | None = None     # "params" or "fault", once seen
        self.bare_value = False          # a <value> with no type inside is a string

    def start(self, tag: str, attrs: Any) -> None:
        if tag in ("array", "struct"):
            self.marks.append(len(self.stack))
        self.data = []
        self.bare_value = tag == "value"

    def text(self, text: str) -> None:
        self.data.append(text)

    def end(self, tag: str) -> None:
        data = "".join(self.data)
        if tag in self._SCALARS:
            self.stack.append(self._SCALARS[tag](data))
        elif tag == "boolean":
            if data not in ("0", "1"):
                raise ResponseError("bad boolean value")
            self.stack.append(data == "1")
        elif tag == "nil":
            self.stack.append(None)
        elif tag == "value":
            if self.bare_value:
                self.stack.append(data)
            self.bare_value = False
        elif tag in ("array", "struct"):
            mark = self.marks.pop()
            items, self.stack[mark:] = self.stack[mark:], []
            self.stack.append(items if tag == "array" else dict(zip(items[::2], items[1::2], strict=True)))
        elif tag in ("params", "fault"):
            self.kind = tag
        elif tag in ("base64", "dateTime.iso8601", "bigdecimal"):
            raise ResponseError(f"<{tag}> is not part of the daemon's answers")
        # any other element is skipped, as xmlrpc.client skips it

    def close(self) -> Any:
        if self.kind is None or self.marks:
            raise ResponseError()   # as xmlrpc.client: reported by its name
        if self.kind == "fault":
            raise Fault(**self.stack[0])
        return self.stack[0] if len(self.stack) == 1 else tuple(self.stack)


def loads(body: bytes) -> Any:
    """The value of an XML-RPC answer; :class:`Fault` for a fault."""
    reader = _Unmarshaller()
    parser = expat.ParserCreate(None, None)
    parser.StartElementHandler, parser.EndElementHandler = reader.start, reader.end
    parser.CharacterDataHandler = reader.text
    parser.buffer_text = True
    parser.Parse(body, True)
    return reader.close()


# --------------------------------------------------------------------------- HTTP


def _read_line(stream: Any) -> bytes:
    line = stream.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ResponseError("got a line longer than 65536 bytes")
    return line


def _exchange(host: str, port: int, request: bytes, timeout: float) -> tuple[int, str, bytes]:
    """Send ``request`` on a new connection: (status, reason, body)."""
    with socket.create_connection((host, port), timeout) as sock, sock.makefile("rb") as stream:
        sock.sendall(request)
        status_line = _read_line(stream)
        if not status_line:
            raise _Disconnected("Remote end closed connection without response")
        try:
            version, status, reason = (status_line.decode("iso-8859-1").rstrip("\r\n").split(None, 2) + [""])[:3]
            code = int(status)
        except ValueError:
            raise ResponseError(f"bad status line {status_line!r}") from None
        if not version.startswith("HTTP/") or not 100 <= code <= 999:
            raise ResponseError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        while (line := _read_line(stream)) not in (b"\r\n", b"\n", b""):
            if len(headers) >= MAX_HEADERS:
                raise ResponseError(f"got more than {MAX_HEADERS} headers")
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _read_chunks(stream)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body = stream.read(length)
            if len(body) < length:
                raise ResponseError(f"IncompleteRead({len(body)} bytes read, {length - len(body)} more expected)")
        else:
            body = stream.read()
        return code, reason, body


def _read_chunks(stream: Any) -> bytes:
    parts = []
    while (size := int(_read_line(stream).split(b";", 1)[0].strip() or b"0", 16)) > 0:
        parts.append(stream.read(size))
        _read_line(stream)
    while _read_line(stream) not in (b"\r\n", b"\n", b""):
        pass   # trailers
    return b"".join(parts)


def call(host: str, port: int, handler: str, method: str, params: tuple[Any, ...], timeout: float) -> Any:
    """Call ``method(*params)`` on the XML-RPC server at ``http://host:port{handler}``."""
    body = dumps(method, params)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = (f"POST {handler} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: vmchecker\r\n"
            f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    for attempt in (0, 1):
        try:
            code, reason, answer = _exchange(host, port, head.encode("ascii") + body, timeout)
            break
        except ValueError as exc:   # a length or chunk size that is no number
            raise ResponseError(f"bad answer: {exc}") from None
        except _Disconnected:
            if attempt:
                raise
        except OSError as exc:
            if attempt or exc.errno not in _RETRIED:
                raise
    if code != 200:
        raise ProtocolError(netloc + handler, code, reason)
    return loads(answer)
