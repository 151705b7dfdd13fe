"""A process attached to an LXC clone, seen from the host: its pipes read into capped
sinks while it runs, its end awaited with a deadline, what it left in the guest killed.

The attached process is our child (the binding forks it), so its end is a pidfd and
``wait4`` gives its exit status and resource use; the guest's cgroup is killed through a
callback, which is all this module knows of the guest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

from vmchecker.executor.results import CappedWriter, StepResult

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0         # seconds to read what is left in the pipes after a step ended


class Buffer:
    """A sink that keeps at most ``limit`` bytes in memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.overflow = False

    def write(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.overflow |= len(chunk) > room

    def text(self) -> str:
        return self.data.decode("utf-8", "replace").strip()


def pump(pid: int, sinks: dict[int, CappedWriter | Buffer], timeout: float,
         kill: Callable[[], None]) -> tuple[int, object, bool]:
    """Feed the pipes ``sinks`` reads while ``pid`` (our child) runs, at most ``timeout``
    seconds; then ``kill`` what is left in the guest (all of it on a timeout, the
    leftovers otherwise) and drain the pipes. Returns (wait status, rusage, timed out)."""
    deadline = time.monotonic() + timeout
    status = rusage = None
    timed_out = False
    pidfd = os.pidfd_open(pid)
    sel = selectors.DefaultSelector()
    sel.register(pidfd, selectors.EVENT_READ)
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while status is None or len(sel.get_map()) > 0:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if status is not None:
                    log.warning("guest process %d ended but its output pipes stayed open", pid)
                    break
                timed_out = True
                kill()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                sel.unregister(pidfd)
                _, status, rusage = os.wait4(pid, 0)
                deadline = time.monotonic() + DRAIN_TIMEOUT
                continue
            for key, _ in sel.select(wait):
                if key.fd == pidfd:
                    sel.unregister(pidfd)
                    _, status, rusage = os.wait4(pid, 0)
                    kill()
                    deadline = time.monotonic() + DRAIN_TIMEOUT
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    sinks[key.fd].write(chunk)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
        os.close(pidfd)
        for fd in sinks:
            os.close(fd)
        if status is None:
            # Interrupted (SIGTERM): reap the attached process anyway. Its zombie belongs
            # to the guest's pid namespace, whose init cannot exit (so stop() would hang)
            # while a process of that namespace waits to be reaped by us.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return status, rusage, timed_out


def step_result(status: int, rusage, timed_out: bool, wall: float) -> StepResult:
    """How a step ended, from :func:`pump`'s wait status and resource use."""
    result = StepResult(timed_out=timed_out, wall_s=round(wall, 3),
                        cpu_s=round(rusage.ru_utime + rusage.ru_stime, 3), max_rss_kb=rusage.ru_maxrss)
    if os.WIFSIGNALED(status):
        result.signal = os.WTERMSIG(status)
    else:
        result.exit_code = os.WEXITSTATUS(status)
    return result
