"""SSH/SFTP from the storer to its testers (paramiko): bundles out, results in.

The storer pushes and pulls; a tester never reaches into the storer (DESIGN §1, §6).
One :class:`TesterLink` per tester keeps one SSH connection and reuses it across
jobs (a login costs ~0.1 s and a log line on the tester), reopening it when it
broke. Each operation opens its own SFTP channel on that connection, so threads
share a link safely and a slow upload does not hold up a results fetch.

Trust: the tester's host key must already be in the course's known_hosts
(recorded by ``vmchecker-init-course --add-tester``); an unknown or different
key is refused, never learned. Results are plain file names inside the job's
folder on the tester, fetched only when they are regular files under the size
caps (:mod:`vmchecker.storer.result_fetch` decides what may come back), into a
temporary folder, and moved into place only when all arrived.

On each new connection the link reads the tester's ``queue/.tester.json`` (its queue
manager's name and slots) and refuses a tester whose values are not the course's: a
tester running more jobs than the course counts, or configured as another tester,
is a silent disagreement otherwise.

Every failure is a :class:`TransportError` naming the tester, what was being
done, why, and what a sysadmin can do about it (those words live in
:mod:`vmchecker.storer.ssh_failures`); a refused result file is the subclass
:class:`~vmchecker.errors.ResultRefused`
(the tester misbehaved, as opposed to the network failing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from vmchecker import paramiko_compat
from vmchecker.config import CourseConfig, Tester
from vmchecker.contract import TESTER_INFO
from vmchecker.errors import NotFound, ResultRefused, TransportError
from vmchecker.fsutil import fsync_dir
from vmchecker.storer import holdings as held
from vmchecker.storer.holdings import Holdings
from vmchecker.storer.result_fetch import MAX_RESULT_FILE, MAX_RESULT_TOTAL, check_name, download_all
from vmchecker.storer.sftp_channels import SftpChannels
from vmchecker.storer.ssh_failures import (
    RejectUnknown,
    connect_error,
    describe,
    key_error,
    known_hosts_error,
    queue_error,
)
from vmchecker.tester_config import identity_disagreement

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect, SSH banner, key exchange, auth, channel open
OPERATION_TIMEOUT = 60.0  # seconds without progress on an SFTP operation
MAX_TESTER_INFO = 4096

T = TypeVar("T")


def known_hosts_entry(host: str, port: int) -> str:
    """How known_hosts (and paramiko) name a server: ``HOST`` on 22, else ``[HOST]:PORT``."""
    return host if port == 22 else f"[{host}]:{port}"


def _preferred_type(key_type: str) -> str:
    return "rsa-sha2-512" if key_type == "ssh-rsa" else key_type


def fetch_host_key(host: str, port: int = 22, timeout: float = CONNECT_TIMEOUT,
                   key_type: str | None = None) -> str:
    """Ask a server for its host key; return its known_hosts line.

    This trusts whatever answers: call it only to record a tester's key (the admin
    compares the fingerprint with the tester's own). ``key_type`` asks for one
    kind of key (e.g. the kind already recorded)."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to {where} to read its host key: {describe(exc)}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        if key_type:
            transport.get_security_options().key_types = [_preferred_type(key_type)]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise TransportError(f"cannot read the SSH host key of {where}: {describe(exc)}") from None
    finally:
        transport.close()
    return f"{known_hosts_entry(host, port)} {key.get_name()} {key.get_base64()}"


class TesterLink:
    """The storer's SSH/SFTP link to one tester: thread-safe, one reused connection.

    ``connects`` counts connections made; ``last_ok`` / ``last_error`` tell the
    daemon's status how the tester was last time.
    """

    def __init__(self, name: str, host: str, port: int, user: str, key_file: Path | str,
                 known_hosts: Path | str, *, queue: str = "", expect: tuple[str, int] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, operation_timeout: float = OPERATION_TIMEOUT,
                 max_file_size: int = MAX_RESULT_FILE, max_total_size: int = MAX_RESULT_TOTAL) -> None:
        """``queue``: the tester's queue folder; with ``expect`` (the course's name and
        slots for it), each new connection checks the tester's own against them."""
        self.name = name
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file)
        self.known_hosts = Path(known_hosts)
        self.queue = queue
        self.expect = expect
        self.mismatch: str | None = None  # why the tester was refused, while it disagrees
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.max_file_size = max_file_size
        self.max_total_size = max_total_size
        self.connects = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None
        # Called (with this link) when an operation succeeds after one that failed: the
        # tester answers again; the daemon then looks at its jobs at once.
        self.on_recovered: Callable[[TesterLink], object] | None = None
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._channels = SftpChannels()

    @classmethod
    def from_config(cls, course: CourseConfig, tester: str | Tester, **options: Any) -> TesterLink:
        """A link to a tester of ``course``, with the course's key and known_hosts."""
        if isinstance(tester, str):
            try:
                tester = course.testers[tester]
            except KeyError:
                raise NotFound(f"course {course.id!r} has no tester {tester!r}") from None
        return cls(tester.name, tester.host, tester.port, tester.user, course.resolve(course.storer.ssh_key),
                   course.resolve(course.storer.known_hosts), queue=tester.queue,
                   expect=(tester.name, tester.slots), **options)

    def __repr__(self) -> str:
        return f"TesterLink({self.name}: {self.user}@{self.host}:{self.port})"

    @property
    def where(self) -> str:
        return f"tester {self.name} ({self.user}@{self.host}:{self.port})"

    # ------------------------------------------------------------------ connection

    def _load_key(self) -> paramiko.PKey:
        try:
            return paramiko_compat.load_private_key(self.key_file)
        except (paramiko.SSHException, OSError, ValueError) as exc:
            raise key_error(exc, self.where, self.key_file) from None

    def _connect(self) -> paramiko.SSHClient:
        entry = known_hosts_entry(self.host, self.port)
        pkey = self._load_key()
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise known_hosts_error(exc, self.where, self.known_hosts) from None
        client.set_missing_host_key_policy(RejectUnknown())
        t = self.connect_timeout
        try:
            paramiko_compat.connect(client, self.host, self.port, self.user, pkey=pkey, timeout=t, banner_timeout=t,
                                    auth_timeout=t, channel_timeout=t, allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise connect_error(exc, where=self.where, entry=entry, known_hosts=self.known_hosts, user=self.user,
                                key_file=self.key_file) from None
        self.connects += 1
        log.info("connected to %s (connection %d)", self.where, self.connects)
        return client

    def _current(self) -> tuple[paramiko.SSHClient, bool]:
        """The live connection, opened if needed; True when opened by this call."""
        with self._lock:
            client = self._client
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client, False
                self._client = None
                client.close()
                log.info("connection to %s was closed; reopening", self.where)
            client = self._connect()
            self._verify(client)
            self._client = client
            return client, True

    def _verify(self, client: paramiko.SSHClient) -> None:
        """Refuse a tester whose own name or slots (its queue/TESTER_INFO) are not the
        course's. A tester that publishes none (its queue manager never ran) is let be:
        there is nothing to compare yet."""
        if self.expect is None or not self.queue:
            return
        raw = self._read_info(client)
        problem = None if raw is None else identity_disagreement(raw, *self.expect)
        self.mismatch = f"{self.where}: {problem}" if problem else None
        if self.mismatch:
            client.close()
            raise TransportError(self.mismatch)

    def _read_info(self, client: paramiko.SSHClient) -> bytes | None:
        try:
            sftp = client.open_sftp()
            try:
                sftp.get_channel().settimeout(self.operation_timeout)
                return self._info_over(sftp)
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise TransportError(f"{self.where}: cannot read {TESTER_INFO} in {self.queue}: {describe(exc)}") from None

    def _info_over(self, sftp: paramiko.SFTPClient) -> bytes | None:
        """queue/TESTER_INFO, or None when there is none to read (no such file, or the
        folder is closed to the account: probe() and send_bundle() say which)."""
        if not self.queue:
            return None
        try:
            with sftp.open(posixpath.join(self.queue, TESTER_INFO), "rb") as f:
                return f.read(MAX_TESTER_INFO)
        except (FileNotFoundError, PermissionError):
            return None

    def _drop(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def _run(self, what: str, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run ``operation`` on an SFTP channel of its own (an idle one reused,
        :mod:`~vmchecker.storer.sftp_channels`); map failures to TransportError.

        A reused connection that turns out broken is reopened once and the whole
        operation repeated (every operation here is idempotent). A timeout is
        not retried: a stalled tester must not hold the daemon twice as long."""
        for attempt in (1, 2):
            try:
                client, fresh = self._current()
            except TransportError as exc:
                self.last_error = exc.message
                raise
            try:
                sftp, clean = self._channels.take(client), False
                try:
                    sftp.get_channel().settimeout(self.operation_timeout)
                    result = operation(sftp)
                    clean = True
                finally:
                    if clean:
                        self._channels.give_back(client, sftp)
                    else:
                        sftp.close()
            except ResultRefused:
                self.last_ok = time.time()  # the tester answered; it sent something wrong
                raise
            except TransportError as exc:
                self.last_error = exc.message
                raise
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # an SFTP status (no such file, permission denied) leaves the connection usable
                transport = client.get_transport()
                timed_out = isinstance(exc, (socket.timeout, TimeoutError))
                broken = (transport is None or not transport.is_active()
                          or isinstance(exc, (paramiko.SSHException, EOFError)))
                if broken or timed_out:
                    self._drop(client)
                if broken and not timed_out and not fresh and attempt == 1:
                    log.info("connection to %s broke (%s); reconnecting", self.where, describe(exc))
                    continue
                message = f"{self.where}: cannot {what}: {describe(exc)}"
                self.last_error = message
                raise TransportError(message) from None
            self._answered()
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _answered(self) -> None:
        """An operation succeeded; on the first success after a failure, say so."""
        failed, self.last_error = self.last_error, None
        self.last_ok = time.time()
        if failed is None or self.on_recovered is None:
            return
        log.info("%s answers again (it had failed: %s)", self.where, failed)
        try:
            self.on_recovered(self)
        except Exception:  # the operation that succeeded must not pay for the listener
            log.exception("%s: acting on its return failed", self.where)

    # ------------------------------------------------------------------ operations

    def ping(self) -> float:
        """Check that the tester answers over SFTP; return the round trip in seconds."""
        start = time.monotonic()
        self._run("check the connection", lambda sftp: sftp.stat("."))
        return time.monotonic() - start

    def probe(self) -> None:
        """Connect (checking the tester's name and slots), then check that the account may
        write in the queue folder: what the daemon does with each tester when it starts.
        TransportError says what is wrong and what to do."""
        def check(sftp: paramiko.SFTPClient) -> None:
            probe = posixpath.join(self.queue, f".vmchecker-probe-{os.getpid()}")
            try:
                sftp.open(probe, "wb").close()
                sftp.remove(probe)
            except OSError as exc:
                raise self._queue_error(exc) from None

        self._run("check the connection and the queue folder", check)

    def _queue_error(self, exc: OSError) -> TransportError:
        return queue_error(exc, where=self.where, tester=self.name, user=self.user, queue=self.queue)

    def read_info(self) -> bytes | None:
        """The tester's own queue/TESTER_INFO as it stands (None if it has none), read
        without comparing it: how adding a tester learns its name and slots."""
        return self._run(f"read {TESTER_INFO}", self._info_over)

    def health(self) -> dict[str, Any]:
        """The tester's state as last seen, for the daemon's status()."""
        return {"tester": self.name, "host": self.host, "port": self.port, "ok": self.last_error is None
                and self.last_ok is not None, "last_ok": self.last_ok, "last_error": self.last_error,
                "connects": self.connects}

    def send_bundle(self, local_zip: Path | str, queue_dir: str, name: str) -> str:
        """Upload ``local_zip`` as ``queue_dir/name`` so the tester sees one complete file.

        It goes to ``NAME.part`` first (a stale one is removed) and is then
        posix-renamed into place, replacing a bundle of the same name (a resend).
        Returns the remote path."""
        if not name or "/" in name or "\0" in name or name.startswith("."):
            raise TransportError(f"{self.where}: bad bundle name {name!r}")
        local = Path(local_zip)
        if not local.is_file():
            raise TransportError(f"{self.where}: cannot send {local}: no such file")
        final = posixpath.join(queue_dir, name)
        part = final + ".part"

        def upload(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(part)
                log.info("%s: removed a stale %s", self.where, part)
            try:
                # The bundle holds the job's key: 0600 before a byte is written (put
                # truncates the file and keeps its mode), so no other local user of the
                # tester reads it; the queue manager is root.
                sftp.open(part, "wb").close()
                sftp.chmod(part, 0o600)
                sftp.put(str(local), part, confirm=True)
                sftp.posix_rename(part, final)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    sftp.remove(part)
                if isinstance(exc, (FileNotFoundError, PermissionError)) and queue_dir == self.queue:
                    raise self._queue_error(exc) from None
                raise

        self._run(f"send {local.name} to {final}", upload)
        log.info("sent %s to %s:%s", local.name, self.where, final)
        return final

    def holds(self, job_id: str, done_dir: str) -> str | None:
        """Whether the tester has job ``job_id``: ``"queued"`` when a complete bundle of
        it (``*_<job_id>.zip``, never a ``.part``) is in its queue folder, ``"done"`` when
        its ``done_dir/<job_id>/`` exists, None when neither. How a restarted daemon
        settles a send it journaled but may have died before finishing."""
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise TransportError(f"{self.where}: bad job id {job_id!r}")

        def look(sftp: paramiko.SFTPClient) -> str | None:
            try:
                if held.has_bundle(sftp.listdir(self.queue), job_id):
                    return "queued"
            except (FileNotFoundError, PermissionError) as exc:
                raise self._queue_error(exc) from None
            try:
                return "done" if stat.S_ISDIR(sftp.stat(posixpath.join(done_dir, job_id)).st_mode or 0) else None
            except FileNotFoundError:
                return None

        return self._run(f"look for job {job_id}", look)

    def holdings(self, done_dir: str) -> Holdings:
        """What the tester holds now (:func:`~vmchecker.storer.holdings.look`): how the
        daemon looks at every job it sent there at once (:meth:`holds` for one job)."""
        return self._run("list its queue and done folders", lambda sftp: held.look(
            sftp, self.queue, done_dir, self._queue_error))

    def finished_files(self, remote_dir: str) -> list[str] | None:
        """The result files of a complete job folder, or None (:func:`~vmchecker.storer.holdings.finished`)."""
        return self._run(f"list the results in {remote_dir}", lambda sftp: held.finished(sftp, remote_dir))

    def fetch_results(self, remote_dir: str, names: Iterable[str], local_dir: Path | str) -> list[Path]:
        """Download the named files of ``remote_dir`` into ``local_dir``; all or nothing.

        Names must be plain; each remote file must be a regular file (lstat: a
        symbolic link is refused) within the per-file and total caps. Files land
        in a temporary folder next to ``local_dir`` and are moved in only when all
        arrived. Returns the local paths."""
        wanted = list(dict.fromkeys(check_name(n) for n in names))
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.fetch-", dir=local_dir.parent))
        try:
            self._run(f"fetch results from {remote_dir}",
                      lambda sftp: download_all(sftp, remote_dir, wanted, staging, where=self.where,
                                                max_file_size=self.max_file_size, max_total_size=self.max_total_size))
            for name in wanted:
                os.replace(staging / name, local_dir / name)
            fsync_dir(local_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched %d result file(s) from %s:%s", len(wanted), self.where, remote_dir)
        return [local_dir / name for name in wanted]

    def close(self) -> None:
        """Close the connection (a later operation opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        self._channels.clear()
        if client is not None:
            client.close()

    def __enter__(self) -> TesterLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
