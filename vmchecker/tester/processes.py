"""Executor processes: run one in its own process group, kill the whole group, and find
the ones a killed queue manager left behind.

The executor runs the guest's tools (lxc-attach, ssh...) as its children; killing only
the executor would leave them running. Each executor is started in a new session, so its
pid is its process group, and every kill here targets that group: first SIGTERM, which
lets the executor tear its guest down, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from vmchecker.executor.hostcmds import pid_alive

log = logging.getLogger(__name__)


def start(command: Sequence[str], output: IO[bytes], cwd: Path | None = None,
          stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``command`` as the leader of a new session (and process group), with the
    usual umask 022: the queue manager's own 077 guards job keys, and must not change
    the modes of what the executor puts in its guests. ``stdin`` is /dev/null, or a pipe
    for a pre-started executor's handover (:mod:`vmchecker.tester.prestart`)."""
    return subprocess.Popen(list(command), stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                            cwd=cwd, start_new_session=True, close_fds=True, umask=0o022)


def wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit; True when it did (reaped).

    Woken by the exit itself (:func:`wait_gone`'s pidfd), so the job's end is seen at
    once: ``Popen.wait(timeout)`` looks every 50 ms instead."""
    if not wait_gone(proc.pid, timeout):
        return False
    proc.wait()
    return True


def wait_gone(pid: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: no limit) for process ``pid``, which need
    not be our child, to exit; True when it has (or no such process is left). Woken by
    the exit itself, through a pidfd; where pidfds are missing (Linux before 5.3) it
    looks every 50 ms."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid_alive(pid):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        wait_ms = -1 if timeout is None else min(math.ceil(max(timeout, 0) * 1000), 2**31 - 1)
        return bool(poller.poll(wait_ms))
    finally:
        os.close(fd)


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when no process is left in it."""
    if pgid <= 1 or pgid == os.getpgid(0):
        raise ValueError(f"refusing to signal process group {pgid}")  # a bug, never a job's group
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_child(proc: subprocess.Popen, grace: float) -> None:
    """Stop a child started by :func:`start` and everything in its group; reap it."""
    if _killpg(proc.pid, signal.SIGTERM):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def reap_group(proc: subprocess.Popen) -> None:
    """After the leader exited on its own, kill whatever it left in its group."""
    with contextlib.suppress(ValueError):
        if _killpg(proc.pid, signal.SIGKILL):
            log.debug("killed processes left behind by pid %d", proc.pid)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def find_orphans(work_dir: Path) -> list[int]:
    """Processes whose command line names a folder under ``work_dir``: executors started
    by an earlier queue manager of this tester (each gets its bundle folder as argument)."""
    prefix = str(Path(work_dir).absolute()).rstrip("/") + "/"
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if any(arg.startswith(prefix) for arg in _cmdline(pid)[1:]) and pid_alive(pid):
            found.append(pid)
    return found


def kill_orphan(pid: int, grace: float) -> None:
    """Stop an executor that is not our child (so it cannot be reaped by us)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    log.warning("stopping executor pid %d left by an earlier queue manager", pid)
    if pgid == pid:  # it leads its own group, as :func:`start` makes it
        def send(sig: int) -> None:
            _killpg(pgid, sig)
    else:
        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    send(signal.SIGKILL)
    # Wait until it is reaped too (by init): nothing of it left in /proc once we go on.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
