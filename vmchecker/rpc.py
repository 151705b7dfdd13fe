"""The storer daemon's wire format, in one module (STYLE.md habit 8).

The daemon's method names and the payloads they carry are defined here once, and the
same validators run on both sides: the tester checks a notification before it journals
it (so a bad one is never retried forever), the daemon checks every call on arrival
(a tester is only semi-trusted: ``files`` name files in the tester's own job folder and
must never be able to reach anything else on the storer).

:class:`Client` is the only way the CLI, the web and the tester reach the daemon: a
call with a socket timeout whose failures become :class:`~vmchecker.errors.RpcError`
with a message a sysadmin can act on. An ``http://`` daemon is called through
:mod:`vmchecker.rpc_http` (no ``http.client``, ``ssl`` nor ``email`` to import: most of a
command's start-up otherwise); ``https://`` through the stdlib's ``ServerProxy``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from xml.parsers.expat import ExpatError

from vmchecker import rpc_http
from vmchecker.contract import ID_RE, JOB_ID_RE, ResultStatus
from vmchecker.errors import CallRefused, RpcError, TryLater

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    import xmlrpc.client
    from typing import Any

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- methods

QUEUE_TASK = "queue_task"
NOTIFY = "notify"
STATUS = "status"
TESTER_BACK = "tester_back"
TIMELINES = "timelines"
METHODS = (QUEUE_TASK, NOTIFY, STATUS, TESTER_BACK, TIMELINES)

# --------------------------------------------------------------------------- limits

MAX_FILES = 64
MAX_NAME_LENGTH = 128
MAX_STATS = 64
MAX_STAT_KEY_LENGTH = 64
MAX_STAT_STRING_LENGTH = 1024
MAX_KEY_LENGTH = 256
MAX_TIMELINES = 100       # jobs per timelines() call: a page of submissions
# XML-RPC <int> is 32-bit: larger Python ints cannot be marshalled.
XMLRPC_INT_MIN, XMLRPC_INT_MAX = -(2**31), 2**31 - 1

KEY_RE = re.compile(r"^[A-Za-z0-9_.+/=~-]+$")


# Fault codes the daemon answers with. FAULT_TRY_LATER says "I cannot take this now"
# (e.g. pulling the files failed): the caller keeps the call and retries it, exactly as
# if the daemon had not answered. Any other fault is a refusal that retrying cannot fix.
FAULT_REFUSED = 403
FAULT_TRY_LATER = 503


# --------------------------------------------------------------------------- validators


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise RpcError(f"bad job_id {job_id!r}: letters, digits, '_', '.', '-', at most 128")
    return job_id


def check_job_ids(job_ids: Any) -> list[str]:
    """``timelines(job_ids)``: a list of at most MAX_TIMELINES job ids."""
    if not isinstance(job_ids, (list, tuple)) or len(job_ids) > MAX_TIMELINES:
        raise RpcError(f"bad job_ids: expected a list of at most {MAX_TIMELINES} job ids")
    return [check_job_id(job_id) for job_id in job_ids]


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not KEY_RE.match(key):
        raise RpcError(f"bad key: expected 1 to {MAX_KEY_LENGTH} URL-safe characters")
    return key


def check_id(what: str, value: Any) -> str:
    """A course or tester name as the configs write them."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise RpcError(f"bad {what} {str(value)[:70]!r}: letters, digits, '_', '.', '-', at most 64")
    return value


def check_status(status: Any) -> str:
    """How the job ended (a :class:`~vmchecker.contract.ResultStatus`), as the plain
    string XML-RPC can carry (it cannot marshal an enum)."""
    if not isinstance(status, str) or status not in tuple(ResultStatus):
        raise RpcError(f"bad status {status!r}: expected one of {', '.join(ResultStatus)}")
    return ResultStatus(status).value


def check_file_name(name: Any) -> str:
    """A plain file name inside the job's folder: no path, no way out, nothing odd."""
    if not isinstance(name, str) or not name:
        raise RpcError(f"bad file name {name!r}: expected a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise RpcError(f"bad file name {name[:40]!r}...: longer than {MAX_NAME_LENGTH} characters")
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or ".." in name:
        raise RpcError(f"bad file name {name!r}: must be a plain name (no '/', '..' or NUL)")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise RpcError(f"bad file name {name!r}: control characters are not allowed")
    return name


def check_files(files: Any) -> tuple[str, ...]:
    if not isinstance(files, (list, tuple)):
        raise RpcError(f"bad files: expected a list of names, got {type(files).__name__}")
    if len(files) > MAX_FILES:
        raise RpcError(f"bad files: {len(files)} names, at most {MAX_FILES} allowed")
    names = tuple(check_file_name(f) for f in files)
    if len(set(names)) != len(names):
        raise RpcError("bad files: a name is listed twice")
    return names


def _check_stat_value(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not XMLRPC_INT_MIN <= value <= XMLRPC_INT_MAX:
            raise RpcError(f"bad stats[{key!r}]: integer {value} outside XML-RPC's 32-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RpcError(f"bad stats[{key!r}]: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STAT_STRING_LENGTH:
            raise RpcError(f"bad stats[{key!r}]: string longer than {MAX_STAT_STRING_LENGTH}")
        return value
    raise RpcError(f"bad stats[{key!r}]: expected a number, string or boolean, got {type(value).__name__}")


def check_stats(stats: Any) -> dict[str, Any]:
    if not isinstance(stats, Mapping):
        raise RpcError(f"bad stats: expected a mapping, got {type(stats).__name__}")
    if len(stats) > MAX_STATS:
        raise RpcError(f"bad stats: {len(stats)} entries, at most {MAX_STATS} allowed")
    out = {}
    for key, value in stats.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_STAT_KEY_LENGTH:
            raise RpcError(f"bad stats key {str(key)[:40]!r}: expected 1 to {MAX_STAT_KEY_LENGTH} characters")
        out[key] = _check_stat_value(key, value)
    return out


def coerce_stats(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Make a sender's measurements fit :func:`check_stats`: drop what cannot travel
    (nested values, None, bad keys), send integers too big for XML-RPC as floats."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if len(out) >= MAX_STATS:
            break
        if not isinstance(key, str) or not 0 < len(key) <= MAX_STAT_KEY_LENGTH:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not XMLRPC_INT_MIN <= value <= XMLRPC_INT_MAX:
            value = float(value)
        if isinstance(value, str):
            value = value[:MAX_STAT_STRING_LENGTH]
        try:
            out[key] = _check_stat_value(key, value)
        except RpcError:
            continue
    return out


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class NotifyRequest:
    """``notify(job_id, key, status, files, stats)``: a tester says a job's results are ready."""

    job_id: str
    key: str
    status: str
    files: tuple[str, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def validate(cls, job_id: Any, key: Any, status: Any, files: Any, stats: Any) -> NotifyRequest:
        """Check every field as received (or about to be sent); raise RpcError naming the field."""
        return cls(check_job_id(job_id), check_key(key), check_status(status), check_files(files),
                   check_stats(stats))

    def params(self) -> tuple[Any, ...]:
        """The positional XML-RPC parameters, in the method's order."""
        return (self.job_id, self.key, self.status, list(self.files), dict(self.stats))

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "key": self.key, "status": self.status,
                "files": list(self.files), "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, data: Any) -> NotifyRequest:
        if not isinstance(data, Mapping):
            raise RpcError("bad notification: expected a mapping")
        return cls.validate(data.get("job_id"), data.get("key"), data.get("status"),
                            data.get("files"), data.get("stats"))


@dataclass(frozen=True)
class BackRequest:
    """``tester_back(course, tester, key)``: a tester's queue manager says it is back (it
    restarted), so the daemon should look at once at what it sent there. ``key`` is the
    tester's own key for the course, which every bundle sent to it carries (``tester_key``
    in its submission-config); it proves the caller is that tester, not another one."""

    course: str
    tester: str
    key: str

    @classmethod
    def validate(cls, course: Any, tester: Any, key: Any) -> BackRequest:
        return cls(check_id("course", course), check_id("tester", tester), check_key(key))

    def params(self) -> tuple[str, str, str]:
        return (self.course, self.tester, self.key)


# --------------------------------------------------------------------------- client


def _https_proxy(url: str, timeout: float) -> xmlrpc.client.ServerProxy:
    """The stdlib's proxy, its connections timing out (a hung daemon cannot hang the
    caller); imported here, since only an https:// (or user@) URL needs it."""
    import xmlrpc.client

    class TimeoutTransport(xmlrpc.client.SafeTransport if url.startswith("https:") else xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> Any:
            conn = super().make_connection(host)
            conn.timeout = timeout
            return conn

    return xmlrpc.client.ServerProxy(url, transport=TimeoutTransport(), allow_none=False)


def _failures(stdlib: bool) -> tuple[tuple[type[Exception], ...], ...]:
    """The exceptions a call ends with: (faults, HTTP statuses, no answer), rpc_http's
    and, when the stdlib's proxy makes the call, xmlrpc.client's and http.client's."""
    faults: tuple[type[Exception], ...] = (rpc_http.Fault,)
    statuses: tuple[type[Exception], ...] = (rpc_http.ProtocolError,)
    silences: tuple[type[Exception], ...] = (OSError, rpc_http.ResponseError, ExpatError)
    if stdlib:
        import http.client
        import xmlrpc.client

        faults += (xmlrpc.client.Fault,)
        statuses += (xmlrpc.client.ProtocolError,)
        silences += (http.client.HTTPException, xmlrpc.client.ResponseError)
    return faults, statuses, silences


def check_url(url: Any) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise RpcError(f"bad storer daemon URL {url!r}: expected http://HOST:PORT/")
    return url


def _plain_http(url: str) -> tuple[str, int, str] | None:
    """(host, port, path) of a plain ``http://`` URL without a user, which rpc_http
    calls; None for any other, left to the stdlib (and its errors, a bad port's too)."""
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or "@" in parts.netloc or not parts.hostname:
        return None
    return parts.hostname, port, parts.path + (f"?{parts.query}" if parts.query else "") or "/RPC2"


class Client:
    """Calls the storer daemon; every failure is an RpcError: CallRefused for a refusal
    fault, TryLater when the daemon asks to retry."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = check_url(url)
        self.timeout = timeout
        self._plain = _plain_http(self.url)

    def _send(self, method: str, params: tuple[Any, ...]) -> Any:
        if self._plain is not None:
            return rpc_http.call(*self._plain, method, params, self.timeout)
        # A fresh proxy per call: ServerProxy is not thread-safe, and calls are rare.
        return getattr(_https_proxy(self.url, self.timeout), method)(*params)

    def call(self, method: str, *params: Any) -> Any:
        if method not in METHODS:
            raise RpcError(f"unknown storer daemon method {method!r}")
        faults, statuses, silences = _failures(stdlib=self._plain is None)
        try:
            return self._send(method, params)
        except faults as exc:
            if exc.faultCode == FAULT_TRY_LATER:
                raise TryLater(f"storer daemon at {self.url} asks to retry {method} later: {exc.faultString}") from None
            raise CallRefused(f"storer daemon at {self.url} refused {method}: {exc.faultString}") from None
        except statuses as exc:
            raise RpcError(f"storer daemon at {self.url} answered HTTP {exc.errcode} {exc.errmsg}") from None
        except silences as exc:
            raise RpcError(f"storer daemon at {self.url} is not answering: {str(exc) or type(exc).__name__}") from None

    def notify(self, request: NotifyRequest) -> Any:
        return self.call(NOTIFY, *request.params())

    def queue_task(self, course: str, assignment: str, account: str, submission: str) -> str:
        return self.call(QUEUE_TASK, course, assignment, account, submission)

    def status(self) -> Any:
        return self.call(STATUS)

    def tester_back(self, request: BackRequest) -> Any:
        return self.call(TESTER_BACK, *request.params())

    def timelines(self, job_ids: list[str]) -> Any:
        """Each known job's timeline by id (:mod:`vmchecker.storer.timeline`)."""
        return self.call(TIMELINES, list(job_ids))
