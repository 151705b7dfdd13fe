"""The generic executor: the whole flow of one job, written once (DESIGN.md section 8).

:meth:`Host.test_submission` runs: host kernel-message commands -> revert + start ->
wait for the guest -> host commands -> copy in -> build (timeout) -> run (timeout) ->
copy out -> stop -> stop the host commands, inside ONE failure boundary: whatever goes
wrong becomes status ``error`` with a readable reason in ``vmchecker-stderr.vmr`` (the
traceback goes to the log), and the guest is cleaned up in every case.

A backend subclasses :class:`VM` (revert, start, wait_ready, copy_to, copy_from, run,
stop, cleanup) and :class:`Host` (get_vm, cleanup_leftovers); it never writes results.

Results (``BUNDLE_DIR/results/``): ``build-stdout.vmr``, ``build-stderr.vmr``,
``run-stdout.vmr``, ``run-stderr.vmr``, ``vmchecker-stderr.vmr``, ``run-km.vmr`` when
kernel-message commands are configured, the ``*.vmr`` files the run script left in the
guest folder (``grade.vmr`` above all; the status word when there is none) and
``result.json``, written last and atomically: a killed executor never leaves a
``result.json`` that claims success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vmchecker import archive, bundle, fsutil
from vmchecker.config import Machine
from vmchecker.errors import ArchiveError, BundleError, ExecutorError, VmcheckerError

log = logging.getLogger(__name__)

STATUS_DONE = "done"
STATUS_ERROR = "error"
RESULT_JSON = "result.json"
GRADE_VMR = "grade.vmr"
VMCHECKER_STDERR = "vmchecker-stderr.vmr"
RUN_KM = "run-km.vmr"
STEP_FILES = {"build": ("build-stdout.vmr", "build-stderr.vmr"), "run": ("run-stdout.vmr", "run-stderr.vmr")}
RESERVED = {VMCHECKER_STDERR, RUN_KM, *(n for pair in STEP_FILES.values() for n in pair)}
MAX_GUEST_VMRS = 32          # *.vmr files taken from the guest folder
COPY_TIMEOUT = 120           # seconds for copying files in or out
HOST_COMMAND_GRACE = 2.0     # seconds between SIGTERM and SIGKILL for host commands
PGIDS_SUFFIX = ".pgids"      # results/.<what>.pgids: process groups of running host commands
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000

# Runs in the guest as root once the steps' processes are dead: the first $3 regular
# *.vmr files at the top of $1 (never a symlink: root would follow it to any file of the
# guest), each cut to $2 bytes, as a tar written to $4 ("-": stdout). A missing $1 gives
# an empty tar.
COPY_OUT = r'''
[ "$4" = - ] || rm -f -- "$4"
out=$(mktemp -d) || exit 1
if cd -- "$1" 2>/dev/null; then
  n=0
  for f in *.vmr; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    n=$((n + 1)); [ "$n" -le "$3" ] || break
    head -c "$2" -- "$f" > "$out/$f"
  done
fi
tar -cf "$4" -C "$out" . && rm -rf "$out"
'''


class Interrupted(BaseException):
    """The executor was told to stop (SIGTERM): clean the guest up and leave."""


class _Gate:
    """Holds back an interruption while a backend does something that must not be cut
    in half (starting a guest process and recording its pid, so cleanup can reap it)."""

    depth = 0
    pending: str | None = None


def interrupt(reason: str) -> None:
    """Called from a signal handler: raise Interrupted now, or when the critical
    section in progress ends."""
    if _Gate.depth:
        _Gate.pending = reason
    else:
        raise Interrupted(reason)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    _Gate.depth += 1
    try:
        yield
    finally:
        _Gate.depth -= 1
        if not _Gate.depth and _Gate.pending:
            reason, _Gate.pending = _Gate.pending, None
            raise Interrupted(reason)


# --------------------------------------------------------------------------- outputs


class CappedWriter:
    """A ``.vmr`` file that keeps the first ``cap`` bytes written to it and counts the
    rest, so gigabytes of output never reach memory or disk; a visible line at the end
    says when something was cut. Thread-safe (several host commands share run-km.vmr)."""

    def __init__(self, path: Path, cap: int):
        self.path = Path(path)
        self.cap = cap
        self.written = 0
        self.dropped = 0
        # unbuffered: chunks come from pipes, and a live log (run-km) is readable as it grows
        self._file: IO[bytes] | None = open(self.path, "wb", buffering=0)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            room = max(self.cap - self.written, 0)
            if self._file is not None and room:
                chunk = data[:room]
                self._file.write(chunk)
                self.written += len(chunk)
            self.dropped += max(len(data) - room, 0)

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            if self.dropped:
                self._file.write(truncation_line(self.cap, self.dropped))
            self._file.close()
            self._file = None


def truncation_line(cap: int, dropped: int | None = None) -> bytes:
    """The marker that ends a capped ``.vmr``."""
    more = f"; {dropped} more bytes were dropped" if dropped else ""
    return f"\n[vmchecker: output truncated at {cap // 1024} KiB{more}]\n".encode()


# --------------------------------------------------------------------------- results


@dataclass
class StepResult:
    """How one step (build or run) ended. Fields a backend cannot tell stay None."""

    attempted: bool = True
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    wall_s: float | None = None
    cpu_s: float | None = None
    max_rss_kb: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.attempted and not self.timed_out and self.exit_code == 0


@dataclass
class JobResult:
    """What ``result.json`` holds. ``status`` stays ``error`` until the flow completes."""

    job_id: str
    backend: str
    status: str = STATUS_ERROR
    message: str = ""
    vm: str = ""
    started_at: str = ""
    guest_start_s: float | None = None
    total_s: float | None = None
    steps: dict[str, StepResult] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record how long a part of the flow took (where the overhead goes)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - start, 4)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name, step in self.steps.items():
            data[f"{name}_s"] = step.wall_s
        return data


class ResultFiles:
    """The job's ``results/`` folder: prepared at the start, ``result.json`` written last."""

    def __init__(self, bundle_dir: Path, cap: int):
        self.dir = Path(bundle_dir) / "results"
        self.cap = cap
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            self.dir.unlink()
        self.dir.mkdir(exist_ok=True)
        for old in self.dir.iterdir():   # results of an earlier run by hand
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        self.errors = self.writer(VMCHECKER_STDERR)
        self._writers: list[CappedWriter] = [self.errors]

    def writer(self, name: str) -> CappedWriter:
        w = CappedWriter(self.dir / name, self.cap)
        if name != VMCHECKER_STDERR:
            self._writers.append(w)
        return w

    def error(self, text: str) -> None:
        self.errors.write(text.rstrip("\n").encode("utf-8", "replace") + b"\n")

    def take_guest_files(self, folder: Path) -> None:
        """Move the ``*.vmr`` files copied out of the guest in, capped, never over ours."""
        for path in sorted(folder.iterdir())[:MAX_GUEST_VMRS]:
            if path.name in RESERVED or not path.name.endswith(".vmr"):
                self.error(f"ignored {path.name} written by the guest: the name is reserved")
                continue
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > self.cap:
                with open(path, "r+b") as f:
                    f.truncate(self.cap)
                    f.seek(0, os.SEEK_END)
                    f.write(truncation_line(self.cap))
            os.replace(path, self.dir / path.name)

    def finish(self, job: JobResult) -> None:
        """Close every file, fill grade.vmr if the guest wrote none, write result.json."""
        for w in self._writers:
            w.close()
        grade = self.dir / GRADE_VMR
        if job.status != STATUS_DONE or not grade.is_file():
            grade.unlink(missing_ok=True)
            grade.write_text(f"{job.status}\n", encoding="utf-8")
        fsutil.write_atomic(self.dir / RESULT_JSON, json.dumps(job.to_dict(), indent=2) + "\n")


# --------------------------------------------------------------------------- payload


def prepare_payload(bundle_dir: Path, work: Path) -> Path:
    """The folder copied to the guest: the student's files, the tests unpacked over
    them, then build.sh and run.sh, so course files always win over student files."""
    files, tests = work / "files", work / "tests"
    for name, dest in ((bundle.ARCHIVE, files), (bundle.TESTS, tests)):
        try:
            archive.safe_extract(bundle_dir / name, dest)
        except ArchiveError as exc:
            raise BundleError(f"cannot unpack {name}: {exc.message}") from None
    _overlay(tests, files)
    for name in (bundle.BUILD_SCRIPT, bundle.RUN_SCRIPT):
        _remove(files / name)
        shutil.copyfile(bundle_dir / name, files / name)
    return files


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _overlay(src: Path, dst: Path) -> None:
    """Move the tree ``src`` onto ``dst``; where both have an entry, ``src`` wins."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            if not target.is_dir() or target.is_symlink():
                _remove(target)
            _overlay(entry, target)
        else:
            _remove(target)
            os.replace(entry, target)


# --------------------------------------------------------------------------- host commands


class HostCommands:
    """Shell commands run on the host around a job (kernel messages, host_commands),
    each in its own process group so stopping them also stops what they started.

    Their groups are not the executor's, so killing the executor's group does not reach
    them: while they run, their pgids are listed in ``record`` (a dotfile in the job's
    ``results/``, never sent to the storer) for whoever kills the executor with SIGKILL
    to kill them too (:func:`kill_recorded`)."""

    def __init__(self, what: str, record: Path | None = None):
        self.what = what
        self.record = record
        self._procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []

    def start(self, commands: list[str], env: dict[str, str], sink: CappedWriter | None) -> None:
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
                t = threading.Thread(target=_pump, args=(proc.stdout, sink), daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
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


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


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


def _pump(stream: IO[bytes], sink: CappedWriter) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        sink.write(chunk)
    stream.close()


# --------------------------------------------------------------------------- guests

GUEST_PREFIX = "vmck-"
_GUEST_RE = re.compile(rf"^{re.escape(GUEST_PREFIX)}[A-Za-z0-9]*-(\d+)-[0-9a-f]+$")


def guest_name(job_id: str) -> str:
    """A job guest's name, ``vmck-<job>-<executor pid>-<random>``: the pid lets a later
    executor tell a leftover of a dead one from a guest still in use."""
    job = re.sub(r"[^A-Za-z0-9]", "", job_id)[:20]
    return f"{GUEST_PREFIX}{job}-{os.getpid()}-{secrets.token_hex(3)}"


def owner_alive(name: str) -> bool:
    """Whether the executor that made guest ``name`` may still run (this one included).
    A name :func:`guest_name` did not make counts as alive: it is not ours to remove."""
    match = _GUEST_RE.match(name)
    if not match:
        return True
    pid = int(match.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(names: Iterable[str], remove: Callable[[str], None], what: str) -> list[str]:
    """Call ``remove`` on each guest of ``names`` whose executor is dead; the names
    removed. A failure is logged and the rest go on."""
    removed = []
    for name in names:
        if not name.startswith(GUEST_PREFIX) or owner_alive(name):
            continue
        log.warning("removing %s %s left by a dead executor", what, name)
        try:
            remove(name)
        except (VmcheckerError, OSError) as exc:
            log.error("removing %s %s failed: %s", what, name, getattr(exc, "message", exc))
            continue
        removed.append(name)
    return removed


def cpu_quota_us(cpus: float) -> int:
    """The CFS quota per CPU_PERIOD_US for a ``cpus`` limit (at least 1 ms)."""
    return max(int(cpus * CPU_PERIOD_US), 1000)


def write_payload(src: Path, stream: IO[bytes], uid: int, gid: int) -> None:
    """Write the folder ``src`` to ``stream`` as a tar stream whose files all belong to
    ``uid:gid`` (the guest user), whatever owns them on the host."""
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        tf.add(src, arcname=".", filter=owned)


def passwd_entry(text: str, user: str) -> tuple[int, int, str] | None:
    """(uid, gid, home) of ``user`` in passwd-format ``text``, or None."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            try:
                return int(fields[2]), int(fields[3]), fields[5] or "/"
            except ValueError:
                return None
    return None


def extract_vmrs(data: bytes, dest: Path, cap: int, guest: str) -> None:
    """Write the regular top-level files of a tar stream copied out of a guest into
    ``dest``, each cut to ``cap + 1`` bytes; links, folders and dotfiles are skipped."""
    if not data:
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if member.isreg() and name and "/" not in name and not name.startswith("."):
                    with tf.extractfile(member) as f:
                        (dest / name).write_bytes(f.read(cap + 1))
    except tarfile.TarError as exc:
        raise ExecutorError(f"results copied out of {guest} are not a valid tar stream: {exc}") from None


# --------------------------------------------------------------------------- VM, Host


class VM:
    """One guest for one job. Backends override the primitives below; ``name`` is known
    before ``revert`` so host commands can be told which guest is theirs."""

    def __init__(self, machine: Machine, name: str):
        self.machine = machine
        self.name = name

    def revert(self) -> None:
        """Bring the guest to its clean state (an LXC clone, a KVM overlay...)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Return when commands can run in the guest; raise ExecutorError after ``timeout``."""
        raise NotImplementedError

    def copy_to(self, src: Path, guest_dir: str) -> None:
        """Copy the contents of the host folder ``src`` into ``guest_dir`` (created),
        owned by the machine's guest user."""
        raise NotImplementedError

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        """Copy the regular ``*.vmr`` files at the top of ``guest_dir`` into the empty
        host folder ``dest``, each cut to at most ``cap + 1`` bytes while reading."""
        raise NotImplementedError

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: CappedWriter, stderr: CappedWriter) -> StepResult:
        """Run ``argv`` in the guest as the guest user; on timeout kill every process
        the step started inside the guest, and say so in the result."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self, failed: bool = False) -> str | None:
        """Remove whatever ``revert`` created; safe to call in any state, twice.

        ``failed`` says the job did not finish: a backend may then keep the guest for
        inspection and return a note for ``vmchecker-stderr.vmr`` (where it is)."""
        return None


class Host:
    """The tester side of a backend: makes VMs and runs jobs in them."""

    backend = "generic"

    def get_vm(self, machine: Machine, job_id: str) -> VM:
        raise NotImplementedError

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        """Remove guests a killed executor left behind; return their names. ``machines``
        are the machines the caller knows of (a backend may keep state per machine)."""
        return []

    def test_submission(self, bundle_dir: Path, machine: Machine, info: bundle.BundleInfo) -> JobResult:
        """Run one unpacked bundle and write its results; never raises for a job problem."""
        started = time.monotonic()
        bundle_dir = Path(bundle_dir)
        out = ResultFiles(bundle_dir, machine.limits.output_kb * 1024)
        job = JobResult(job_id=info.job_id, backend=machine.type,
                        started_at=dt.datetime.now().isoformat(timespec="seconds"))
        vm: VM | None = None
        kernel_messages, host_commands = (HostCommands(what, out.dir / f".{what}{PGIDS_SUFFIX}")
                                          for what in ("kernel_messages", "host_commands"))
        try:
            with tempfile.TemporaryDirectory(prefix=f"vmchecker-{info.job_id[:40]}-") as tmp:
                with job.phase("prepare"):
                    payload = prepare_payload(bundle_dir, Path(tmp))
                vm = self.get_vm(machine, info.job_id)
                job.vm = vm.name
                env = {"VMCHECKER_VM": vm.name, "VMCHECKER_JOB_ID": info.job_id, "VMCHECKER_BACKEND": machine.type}
                if machine.kernel_messages:
                    kernel_messages.start(machine.kernel_messages, env, out.writer(RUN_KM))
                with job.phase("revert"):
                    vm.revert()
                with job.phase("start"):
                    vm.start()
                    vm.wait_ready(machine.boot_timeout)
                job.guest_start_s = job.phases["start"]
                host_commands.start(machine.host_commands, env, None)
                with job.phase("copy_in"):
                    vm.copy_to(payload, machine.guest_base_path)
                self._steps(vm, machine, info, out, job)
                guest_out = Path(tmp) / "out"
                guest_out.mkdir()
                with job.phase("copy_out"):
                    vm.copy_from(machine.guest_base_path, guest_out, out.cap)
                    out.take_guest_files(guest_out)
                with job.phase("stop"):
                    vm.stop()
                job.status = STATUS_DONE
        except VmcheckerError as exc:
            log.error("job %s: %s", info.job_id, exc.message, exc_info=log.isEnabledFor(logging.DEBUG))
            job.message = exc.message
        except Exception as exc:  # the one failure boundary per job
            log.exception("job %s: unexpected error", info.job_id)
            job.message = f"internal error in the executor: {type(exc).__name__}: {exc}"
        except (Interrupted, KeyboardInterrupt) as exc:
            job.message = f"the executor was stopped ({exc or 'SIGINT'}) before the job finished"
            raise
        finally:
            with uninterruptible():   # a SIGTERM now must not cut the cleanup or result.json
                self._finish(vm, out, job, (host_commands, kernel_messages), started)
        return job

    def _steps(self, vm: VM, machine: Machine, info: bundle.BundleInfo, out: ResultFiles, job: JobResult) -> None:
        """build, then run if the build succeeded; each under the assignment's timeout."""
        for name, script in (("build", bundle.BUILD_SCRIPT), ("run", bundle.RUN_SCRIPT)):
            stdout, stderr = (out.writer(n) for n in STEP_FILES[name])
            try:
                if name == "run" and not job.steps["build"].succeeded:
                    job.steps[name] = StepResult(attempted=False)
                    continue
                step = vm.run([machine.guest_shell, script], machine.guest_base_path, info.timeout, stdout, stderr)
                job.steps[name] = step
                if step.timed_out:
                    out.error(f"the {name} step did not finish within {info.timeout} s and was killed")
            finally:
                stdout.close()
                stderr.close()

    def _finish(self, vm: VM | None, out: ResultFiles, job: JobResult,
                commands: tuple[HostCommands, ...], started: float) -> None:
        """Always: stop host commands, remove the guest, write the results."""
        for c in commands:
            try:
                c.stop()
            except OSError as exc:
                log.warning("job %s: stopping %s commands: %s", job.job_id, c.what, exc)
        if vm is not None:
            try:
                with job.phase("cleanup"):
                    note = vm.cleanup(failed=job.status != STATUS_DONE)
                if note:
                    out.error(note)
            except Exception as exc:  # the job's results stand; the leftover is logged
                log.exception("job %s: cleaning up guest %s failed", job.job_id, vm.name)
                out.error(f"cleaning up guest {vm.name} failed: {exc}")
        if job.message:
            out.error(job.message)
        job.total_s = round(time.monotonic() - started, 3)
        out.finish(job)
        log.info("job %s: %s in %.3f s", job.job_id, job.status, job.total_s)
