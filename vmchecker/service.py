"""The shared base of vmchecker's long-running processes (STYLE.md habit 2).

The queue manager and the storer daemon both need the same few things, and they must
behave the same way when a sysadmin stops them: SIGTERM/SIGINT turned into a request
to stop cleanly (the main loop sees ``stop`` and winds down; no work is abandoned
half-written), an optional pid file that refuses a second copy of the
process, and a drain mode (``once``) in which the loop does what is pending and returns
(STYLE.md habit 11). A subclass implements :meth:`Service.serve` and nothing else.
Their logging is every command's: :func:`vmchecker.cli.common.setup_logging`, which
their ``main`` calls.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)


class PidFile:
    """A pid file held with an flock for the life of the process.

    The lock, not the number in the file, says whether another copy is alive: the
    kernel drops it when the holder dies, even by ``kill -9``, so a stale file left by a
    crash never blocks a restart, and a reused pid never fakes a live holder."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (a no-op when this object holds it already)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise VmcheckerError(f"{self.path}: cannot lock pid file: {exc.strerror}") from None
            holder = self.path.read_text(errors="replace").strip() or "?"
            raise VmcheckerError(
                f"{self.path}: another process (pid {holder}) is already running; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class Service:
    """Base of a long-running process: subclasses implement :meth:`serve`.

    ``serve`` must return soon after :attr:`stop` is set, and, when :attr:`once` is
    true, as soon as the work pending at start is done."""

    name = "service"

    def __init__(self, *, pid_file: Path | str | None = None, once: bool = False):
        self.stop = threading.Event()
        self.once = once
        self.pid_file = PidFile(pid_file) if pid_file else None

    def serve(self) -> int | None:
        raise NotImplementedError

    def request_stop(self, reason: str = "asked to stop") -> None:
        """Ask the main loop to finish cleanly (safe from a signal handler or a thread)."""
        if not self.stop.is_set():
            log.info("%s: %s, stopping", self.name, reason)
        self.stop.set()

    def run(self) -> int:
        """Hold the pid file, route SIGTERM/SIGINT to :meth:`request_stop`, call ``serve``."""
        if self.pid_file:
            self.pid_file.acquire()
        try:
            with self._signals():
                return self.serve() or 0
        finally:
            if self.pid_file:
                self.pid_file.release()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        # Signal handlers can only be set from the main thread; tests run services in
        # threads and stop them through ``stop`` instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(f"got {signal.Signals(signum).name}")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
