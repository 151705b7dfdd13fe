"""Shell commands run on the host around a job (``kernel_messages``, ``host_commands``),
and how they are stopped, even when the executor that started them was SIGKILLed.

Each command runs in its own process group, so stopping it also stops what it started.
Those groups are not the executor's, so killing the executor's group does not reach
them: while they run, their pgids are listed in a dotfile of the job's ``results/``
(``.<what>.pgids``, never sent to the storer) for whoever kills the executor with
SIGKILL to kill them too (:func:`kill_recorded`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from vmchecker.executor.interrupts import uninterruptible
from vmchecker.executor.results import CappedWriter

log = logging.getLogger(__name__)

HOST_COMMAND_GRACE = 2.0     # seconds between SIGTERM and SIGKILL for host commands
PGIDS_SUFFIX = ".pgids"      # results/.<what>.pgids: process groups of running host commands


class HostCommands:
    """The host commands of one kind (``what``) for one job; their process groups are
    listed in ``record`` while they run (see the module's docstring)."""

    def __init__(self, what: str, record: Path | None = None):
        self.what = what
        self.record = record
        self._procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []

    def start(self, commands: list[str], env: dict[str, str], sink: CappedWriter | None) -> None:
        """Start ``commands`` with ``env`` added to ours; their output goes to ``sink``
        (or nowhere)."""
        for command in commands:
            log.debug("starting %s command: %s", self.what, command)
            with uninterruptible():   # started and recorded, or neither
                proc = subprocess.Popen(
                    command, shell=True, start_new_session=True, env={**os.environ, **env},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if sink else subprocess.DEVNULL,
                    stderr=subprocess.STDOUT if sink else subprocess.DEVNULL)
                self._procs.append(proc)
                if self.record is not None:
                    with open(self.record, "a", encoding="ascii") as f:
                        f.write(f"{proc.pid}\n")
            if sink is not None:
                t = threading.Thread(target=pump_into, args=(proc.stdout, sink), daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """SIGTERM each command's group, SIGKILL it after a grace period, forget them."""
        for proc in self._procs:
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + HOST_COMMAND_GRACE
        for proc in self._procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait()
            _killpg(proc, signal.SIGKILL)   # whatever the command left in its group
        for t in self._threads:
            t.join(HOST_COMMAND_GRACE)
        self._procs.clear()
        self._threads.clear()
        if self.record is not None:
            self.record.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie does not: it has exited and only
    waits for its parent to reap it, so a guest or a process group it held is abandoned."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"   # the state follows "(command)"


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass   # the whole group is gone already


def kill_recorded(bundle_dir: Path) -> list[int]:
    """SIGKILL the host-command process groups a dead executor recorded in
    ``bundle_dir`` (see :class:`HostCommands`); returns the groups that were alive.
    Call it only once the executor is gone: a live one stops its commands itself."""
    killed = []
    for record in (Path(bundle_dir) / "results").glob(f".*{PGIDS_SUFFIX}"):
        try:
            pgids = {int(line) for line in record.read_text(encoding="ascii").split()}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable list of host command groups: %s", record, exc)
            continue
        for pgid in sorted(pgids):
            if pgid <= 1 or pgid == os.getpgid(0):
                continue
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pgid)
        record.unlink(missing_ok=True)
    if killed:
        log.warning("killed host command groups %s left by a dead executor in %s", killed, bundle_dir)
    return killed


def pump_into(stream: IO[bytes], sink: CappedWriter) -> None:
    """Copy a pipe into a capped writer until EOF (a thread per stream, so neither blocks the other)."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        sink.write(chunk)
    stream.close()
