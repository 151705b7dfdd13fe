"""The executors' fork server: one process that loaded the executor once, and forks a
child per job (docs/ARCHITECTURE.md, "Pre-started executors").

Starting an executor from nothing (the interpreter, the package, a backend and its
binding) costs about 0.1 s of CPU per job; a fork of a process that did it once costs a
few milliseconds. The queue manager starts the server (:class:`ForkServer`, the
executor's ``--serve-jobs WORK_DIR/``); the server's side is :func:`serve`.

The protocol, one line each: the queue manager writes a job folder's name (in
``WORK_DIR``) on the server's stdin; the server forks, and answers ``started NAME PID``
on its stdout, later ``exited PID CODE`` (the exit status as ``subprocess`` gives it:
-N for a signal) once it reaped the child. The child is the job's executor as a cold one
is: it leads a session of its own (killed as a group), its stdin is /dev/null, its
output goes to ``WORK_DIR/NAME.log``, its umask is 022, and it exits after that job
(:func:`vmchecker.quick_exit.exit_now`). The server is single-threaded, so a fork copies
no lock held by another thread.

At the end of its stdin (the queue manager stopped, or was killed) the server takes no
more jobs, reaps the children it has, reports them, and exits. Its command line names
``WORK_DIR/``, and so do its children's: a starting queue manager's sweep for orphaned
executors stops both (:func:`vmchecker.tester.processes.find_orphans`). A server that
dies leaves its children running; their exit status is then unknown
(:data:`UNKNOWN_EXIT`), which the queue manager reports as such, the results decide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from vmchecker.quick_exit import exit_now
from vmchecker.tester import processes

log = logging.getLogger(__name__)

SERVE_OPTION = "--serve-jobs"
PRELOAD_OPTION = "--preload"
SERVER_LOG = ".executor-server.log"
UNKNOWN_EXIT = -255          # a child whose server died before reporting it
FORK_ANSWER_WAIT = 60.0      # seconds a fork's answer may take: a guard, never reached by a working server


# --------------------------------------------------------------------------- the server


def serve(folder: Path, run: Callable[[Path], int]) -> int:
    """The server's loop (see the module docstring): ``run(job_folder)`` is the job's
    work in the forked child, its result the child's exit status."""
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)   # only to wake the select
    children: set[int] = set()
    pending, open_input = b"", True
    while open_input or children:
        readable, _, _ = select.select([0, wake_r] if open_input else [wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
        _reap(children)
        if 0 in readable:
            data = os.read(0, 4096)
            open_input = bool(data)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                name = line.decode("utf-8", "replace").strip()
                pid = _fork(folder, name, run, (wake_r, wake_w))
                if pid:
                    children.add(pid)
                _say(f"started {name} {pid}")
    return 0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _fork(folder: Path, name: str, run: Callable[[Path], int], close: Sequence[int]) -> int:
    """Fork the child of job ``name``; its pid (0: not a job folder's name, refused)."""
    if not name or "/" in name or name in (".", ".."):
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        output = os.open(folder / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(null)
        os.close(output)
        os.chdir(folder)
        os.umask(0o022)
        code = run(folder / name)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        exit_now(code)


# --------------------------------------------------------------------------- the queue manager's side


class ForkServer:
    """The queue manager's handle on its fork server (``command --serve-jobs WORK_DIR/``)."""

    def __init__(self, command: Sequence[str], work_dir: Path, preload: Sequence[str], kill_grace: float = 30.0):
        self.work_dir = Path(work_dir)
        self.kill_grace = kill_grace
        self.args = [*command, SERVE_OPTION, f"{self.work_dir.absolute()}/"]
        self.preload = frozenset(preload)
        for machine_type in sorted(preload):
            self.args += [PRELOAD_OPTION, machine_type]
        self._started: dict[str, int] = {}
        self._exited: dict[int, int] = {}
        self._gone = False
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        with open(self.work_dir / SERVER_LOG, "ab") as output:
            self._proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=output,
                                          cwd=self.work_dir, start_new_session=True, close_fds=True, umask=0o022)
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        with self._cond:
            return not self._gone

    def fork(self, name: str) -> ServedProcess | None:
        """The executor of job folder ``name``, forked; None when the server cannot."""
        with self._send_lock:
            try:
                self._proc.stdin.write(f"{name}\n".encode())
                self._proc.stdin.flush()
            except (OSError, ValueError) as exc:   # gone, or stopped
                log.warning("fork server pid %d cannot take job %s: %s", self.pid, name, exc)
                return None
            with self._cond:
                self._cond.wait_for(lambda: name in self._started or self._gone, FORK_ANSWER_WAIT)
                pid = self._started.pop(name, 0)
        if not pid:
            log.error("fork server pid %d did not fork job %s", self.pid, name)
            return None
        return ServedProcess(self, pid)

    def exit_status(self, pid: int, timeout: float | None) -> int | None:
        """The exit status of child ``pid`` once reported (within ``timeout``, None:
        no limit); None if not by then. A child of a server that died: UNKNOWN_EXIT
        once it is gone."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exited or self._gone, timeout)
            if pid in self._exited:
                return self._exited.pop(pid)
            if not self._gone:
                return None
        return UNKNOWN_EXIT if processes.wait_gone(pid, timeout) else None

    def retire(self) -> None:
        """Take no more jobs here; the server exits once its running jobs have ended."""
        with self._send_lock, contextlib.suppress(OSError):
            self._proc.stdin.close()

    def stop(self) -> None:
        """End the server: it takes no more jobs, reaps its children and exits."""
        self.retire()
        if not processes.wait_exit(self._proc, self.kill_grace):
            processes.kill_child(self._proc, self.kill_grace)
        self._reader.join(self.kill_grace)
        self._proc.stdout.close()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.work_dir / SERVER_LOG).read_text(encoding="utf-8", errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def _read(self) -> None:
        for raw in self._proc.stdout:
            words = raw.decode("utf-8", "replace").split()
            with self._cond:
                if len(words) == 3 and words[0] == "started" and words[2].lstrip("-").isdigit():
                    self._started[words[1]] = int(words[2])
                elif len(words) == 3 and words[0] == "exited" and words[1].isdigit():
                    self._exited[int(words[1])] = int(words[2])
                else:
                    log.warning("fork server pid %d said %r", self.pid, raw[:200])
                self._cond.notify_all()
        self._proc.wait()   # its output ends as it exits: reap it
        with self._cond:
            self._gone = True
            self._cond.notify_all()


class ServedProcess:
    """A forked executor, as much of ``subprocess.Popen`` as the queue manager uses."""

    def __init__(self, server: ForkServer, pid: int):
        self.server = server
        self.pid = pid
        self.args = [*server.args, f"(pid {pid})"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_status(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.exit_status(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode
