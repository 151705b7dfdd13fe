"""Pre-started executors: started before a job comes, so a slot that takes a bundle hands
it over at once (docs/ARCHITECTURE.md, "Pre-started executors").

Starting an executor (a Python interpreter, the package, a backend and its binding) costs
about 0.1 s, all of it on the job's critical path when it starts after the slot took the
bundle. So the queue manager keeps up to ``slots`` executors started with
``--await-job WORK_DIR/``: each loads what a job needs, then blocks reading one line, the
name of the job's folder in ``work/``, on its stdin. That line is the handover; from then
on the process is the job's executor exactly as a cold one is (its own session and
process group, killed as a group, its output in the job's log), and it runs that one job
only: still a fresh process per job.

- **Output**: an idle executor writes to ``work/.executor-N.log``, which the handover
  renames to the job's log (the same file: nothing it wrote while idle is lost).
- **Never left**: an idle executor whose queue manager dies reads the end of its stdin
  and exits; its command line names ``work/``, so a starting queue manager's sweep for
  orphaned executors stops one too (:func:`vmchecker.tester.processes.find_orphans`).
- **Never stale**: it reads the tester config when its job comes. The code is what was
  on disk when it started: after an upgrade, restart the queue manager, as any daemon.
- **Never needed**: one that died while idle is replaced (its log says why in ours) and
  the job starts a cold executor, as it does when none is idle.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from vmchecker.tester import processes

log = logging.getLogger(__name__)

AWAIT_OPTION = "--await-job"
PRELOAD_OPTION = "--preload"
IDLE_LOG_PREFIX = ".executor-"


class Executors:
    """Up to ``size`` idle executors of ``command`` (``command WORK`` runs the job in
    ``WORK`` cold; ``command --await-job WORK_DIR/`` waits for its job's name)."""

    def __init__(self, command: Sequence[str], work_dir: Path, size: int, kill_grace: float = 30.0):
        self.command = list(command)
        self.work_dir = Path(work_dir)
        self.size = size
        self.kill_grace = kill_grace
        self._idle: deque[tuple[subprocess.Popen, Path]] = deque()
        self._types: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._serial = itertools.count(1)

    def note(self, machine_type: str) -> None:
        """A job of ``machine_type`` ran here: the next executors load its backend ahead."""
        self._types.add(machine_type)

    def top_up(self) -> None:
        """Start executors until ``size`` are idle (none once stopped)."""
        with self._lock:
            while not self._stopped and len(self._idle) < self.size:
                started = self._spawn()
                if started is None:
                    return
                self._idle.append(started)

    def start(self, work: Path, log_path: Path) -> subprocess.Popen:
        """The executor of the job in ``work`` (a folder of ``work_dir``), its output in
        ``log_path``: an idle one handed the job, else one started cold."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                proc, idle_log = self._idle.popleft()
            if self._hand_over(proc, idle_log, work, log_path):
                self.top_up()   # the next one loads while this job runs
                return proc
        with open(log_path, "wb") as output:
            return processes.start([*self.command, str(work)], output, cwd=self.work_dir)

    def stop(self) -> None:
        """Stop the idle executors (each exits at the end of its stdin; a group that does
        not is killed) and remove their logs; start no more."""
        with self._lock:
            self._stopped = True
            idle, self._idle = list(self._idle), deque()
        for proc, _log in idle:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc, idle_log in idle:
            if not processes.wait_exit(proc, self.kill_grace):
                processes.kill_child(proc, self.kill_grace)
            processes.reap_group(proc)
            idle_log.unlink(missing_ok=True)

    def _spawn(self) -> tuple[subprocess.Popen, Path] | None:
        idle_log = self.work_dir / f"{IDLE_LOG_PREFIX}{next(self._serial)}.log"
        command = [*self.command, AWAIT_OPTION, f"{self.work_dir.absolute()}/"]
        for machine_type in sorted(self._types):
            command += [PRELOAD_OPTION, machine_type]
        try:
            with open(idle_log, "wb") as output:
                return processes.start(command, output, cwd=self.work_dir, stdin=subprocess.PIPE), idle_log
        except OSError as exc:   # e.g. out of processes: jobs start cold meanwhile
            log.error("cannot pre-start an executor: %s", exc)
            idle_log.unlink(missing_ok=True)
            return None

    def _hand_over(self, proc: subprocess.Popen, idle_log: Path, work: Path, log_path: Path) -> bool:
        """Give ``proc`` its job; False (and it is gone) when it died while idle."""
        if proc.poll() is None:
            try:
                os.replace(idle_log, log_path)
                proc.stdin.write(f"{work.name}\n".encode())
                proc.stdin.close()
                return True
            except OSError as exc:   # BrokenPipeError: it died just now
                log.warning("pre-started executor pid %d cannot take job %s: %s", proc.pid, work.name, exc)
                idle_log = log_path if log_path.exists() else idle_log
        processes.kill_child(proc, self.kill_grace)
        tail = _tail(idle_log)
        log.error("pre-started executor pid %d exited (code %s) while idle; starting one cold%s",
                  proc.pid, proc.returncode, f":\n{tail}" if tail else "")
        idle_log.unlink(missing_ok=True)
        return False


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:].strip()
    except OSError:
        return ""
