"""Executors started ahead: a slot that takes a bundle hands it over at once
(docs/ARCHITECTURE.md, "Pre-started executors").

Starting an executor (the interpreter, the package, a backend and its binding) costs
about 0.1 s of CPU, all of it on the job's critical path when it starts after the slot
took the bundle. So the queue manager keeps one fork server (:mod:`.forkserver`) that
loaded the executor and the backends of the machine types seen here once, and forks the
executor of each job from it: a few milliseconds, and the CPU of the start is paid once
per server, not once per job.

- **A fresh process per job**, as before: the fork runs one job and exits.
- **Never stale**: the job reads the tester config when it comes. A machine type seen
  for the first time starts a new server that loads its backend too (the old one ends
  once its jobs have). The code is what was on disk when the server started: after an
  upgrade, restart the queue manager, as any daemon.
- **Never needed**: a server that cannot start or that died is logged (its log is
  ``work/.executor-server.log``) and started again after ``RESTART_PAUSE`` (one that
  cannot start is not started in a loop); meanwhile a job starts its executor cold, as
  when this is off.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vmchecker.tester import processes
from vmchecker.tester.forkserver import SERVER_LOG, ForkServer, ServedProcess

log = logging.getLogger(__name__)

RESTART_PAUSE = 5.0   # seconds between a fork server found dead and the next start


class Executors:
    """How the queue manager starts a job's executor: forked by its fork server when
    ``enabled``, else (or when the server cannot) ``command WORK`` started cold."""

    def __init__(self, command: Sequence[str], work_dir: Path, enabled: bool, kill_grace: float = 30.0):
        self.command = list(command)
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self.kill_grace = kill_grace
        self._server: ForkServer | None = None
        self._types: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._failed_at: float | None = None   # when a server was found dead, or could not start

    def note(self, machine_type: str) -> None:
        """A job of ``machine_type`` ran here: the server should have loaded its backend."""
        with self._lock:
            self._types.add(machine_type)

    def top_up(self) -> None:
        """Start the server if it is not running (none once stopped), or a new one when
        a machine type it did not load was seen; the one it replaces ends after its jobs."""
        if not self.enabled:
            return
        with self._lock:
            server = self._server
            if self._stopped or (server is not None and server.alive() and self._types <= server.preload):
                return
            if server is not None and not server.alive():
                tail = server.log_tail()
                log.error("the executors' fork server pid %d ended; starting another in %g s%s", server.pid,
                          RESTART_PAUSE, f":\n{tail}" if tail else "")
                self._server, self._failed_at = None, time.monotonic()
            if self._failed_at is not None and time.monotonic() - self._failed_at < RESTART_PAUSE:
                return   # one that cannot start is not started in a loop; jobs start cold meanwhile
            self._failed_at = None
            try:
                self._server = ForkServer(self.command, self.work_dir, sorted(self._types), self.kill_grace)
            except OSError as exc:   # e.g. out of processes
                log.error("cannot start the executors' fork server: %s; trying again in %g s", exc, RESTART_PAUSE)
                self._server, self._failed_at = None, time.monotonic()
        if server is not None and server.alive():
            server.retire()

    def start(self, work: Path, log_path: Path) -> subprocess.Popen | ServedProcess:
        """The executor of the job in ``work`` (a folder of ``work_dir``), its output in
        ``log_path`` (``work_dir/NAME.log``): forked, else started cold."""
        with self._lock:
            server = self._server
        if server is not None and server.alive() and log_path == self.work_dir / f"{work.name}.log":
            forked = server.fork(work.name)
            if forked is not None:
                return forked
        with open(log_path, "wb") as output:
            return processes.start([*self.command, str(work)], output, cwd=self.work_dir)

    def stop(self) -> None:
        """Stop the server (its running jobs were aborted before) and start no more."""
        with self._lock:
            self._stopped = True
            server, self._server = self._server, None
        if server is not None:
            server.stop()
        (self.work_dir / SERVER_LOG).unlink(missing_ok=True)
