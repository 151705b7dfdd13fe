"""The check step: a course's ``check.sh`` run on the tester once the guest is gone,
in a bubblewrap sandbox, reading the run's outputs and the tests and writing the grade.

Courses whose tests need root in the guest (kernel modules) cannot keep the grade out
of the student's reach there; the check moves the grading out of the guest. The tester
runs as root, so the sandbox is what keeps a check (and the student output it parses)
from the host:

- it runs as host uid/gid 65534 (``nobody``): bwrap is started already unprivileged,
  so even its user namespace maps to nobody, never to root; no capabilities, no
  further user namespaces (``--disable-userns``);
- it sees only copies: the outputs and the unpacked tests in a private staging folder,
  bound read-only, with ``/usr`` and a few files of ``/etc``; ``/`` and ``/dev`` are
  read-only, ``/tmp`` is a small private tmpfs; the only host file it can write is its
  grade file, alone in a folder it cannot write (no links, no other files), sized by
  RLIMIT_FSIZE and read back capped, never through a link;
- no network, no IPC, its own pids (``--unshare-all``), its own session; killing bwrap
  kills the whole sandbox (``--die-with-parent``: its init dies, the pid namespace goes);
- limits: processes (RLIMIT_NPROC, counted in its own user namespace), file size,
  memory: a transient cgroup holds memory and pids where the host lets one be made
  (bwrap waits on ``--block-fd`` until its init is inside, so nothing escapes it), and
  rlimits (RLIMIT_AS where there is no memory cgroup) are set by ``prlimit`` in the
  sandbox before it execs the check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vmchecker import archive
from vmchecker.config import Limits
from vmchecker.contract import CHECK_SCRIPT, GRADE_VMR
from vmchecker.errors import ExecutorError
from vmchecker.executor import cgroups, hostcmds
from vmchecker.executor.results import CappedWriter, StepResult, truncation_line

log = logging.getLogger(__name__)

SANDBOX_ID = 65534           # host uid and gid of the check (nobody/nogroup on Debian)
INSIDE = Path("/vmchecker")  # where the check finds its files in the sandbox
GRADE_NAME = GRADE_VMR
STAGED = (("outputs", False), ("tests", False), (CHECK_SCRIPT, False), ("grade", True))   # name, writable
PATH = "/usr/local/bin:/usr/bin:/bin"
ETC = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf")
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")   # merged-/usr links, or folders
KILL_TIMEOUT = 5.0           # seconds for a killed sandbox to disappear


def run_check(script: Path, outputs: Path, tests_zip: Path, grade_file: Path, timeout: float,
              limits: Limits, stdout: CappedWriter, stderr: CappedWriter) -> StepResult:
    """Run ``script`` sandboxed with copies of the regular files of ``outputs`` and the
    unpacked ``tests_zip``; the grade file it writes (``$VMCHECKER_GRADE``, there and
    writable, but it cannot be replaced or renamed over) is copied to ``grade_file``,
    capped to ``limits.output_kb`` KiB, whatever the exit status: the caller judges the
    step. A check that never wrote its grade file: ``grade_file`` is not created."""
    bwrap, prlimit = shutil.which("bwrap"), shutil.which("prlimit")
    if bwrap is None or prlimit is None:
        raise ExecutorError("the check step needs bubblewrap and prlimit: install them on the tester"
                            " (apt-get install bubblewrap util-linux, or tools/install-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="vmchecker-check-") as tmp:
        stage = Path(tmp)
        ours = {w.path.name for w in (stdout, stderr) if w.path.parent.resolve() == Path(outputs).resolve()}
        _stage(stage, script, outputs, tests_zip, skip=ours)
        cgroup = _Cgroup(limits)
        try:
            argv = [bwrap, *_sandbox_args(stage, limits), "--",
                    *_limits_argv(prlimit, limits, memory=not cgroup.has_memory), str(INSIDE / CHECK_SCRIPT)]
            result = _run(argv, timeout, cgroup, stdout, stderr)
        finally:
            cgroup.remove()
        _copy_grade(stage / "grade" / GRADE_NAME, grade_file, limits.output_kb * 1024, stderr)
    return result


def check_env() -> dict[str, str]:
    """The whole environment the check script sees."""
    return {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp",
            "VMCHECKER_GRADE": str(INSIDE / "grade" / GRADE_NAME),
            "VMCHECKER_OUTPUTS": str(INSIDE / "outputs"), "VMCHECKER_TESTS": str(INSIDE / "tests")}


def _stage(stage: Path, script: Path, outputs: Path, tests_zip: Path, skip: set[str]) -> None:
    """The copies the sandbox reads (root's, read-only to nobody) and its grade file
    (nobody's, dated 1970 until written, in a folder of root's). Copies, not the
    originals: whatever their modes and whatever the check does, the job's real files
    stay as they are. bwrap runs as nobody and binds by path, so it must be able to
    reach ``stage``; modes are set explicitly, whatever the tester's umask."""
    for folder in stage.parents:
        if not folder.stat().st_mode & stat.S_IXOTH:
            raise ExecutorError(f"{folder} is not searchable by others, so the check step's sandbox (uid"
                                f" {SANDBOX_ID}) cannot reach {stage}: point TMPDIR to a folder it can reach")
    stage.chmod(0o711)
    shutil.copyfile(script, stage / CHECK_SCRIPT)
    (stage / CHECK_SCRIPT).chmod(0o555)
    (stage / "outputs").mkdir()
    for entry in os.scandir(outputs):
        if entry.name.startswith(".") or entry.name in skip or not entry.is_file(follow_symlinks=False):
            continue
        shutil.copyfile(entry.path, stage / "outputs" / entry.name, follow_symlinks=False)
        (stage / "outputs" / entry.name).chmod(0o444)
    (stage / "outputs").chmod(0o555)
    archive.safe_extract(tests_zip, stage / "tests")    # 0644/0755 inside, root's
    (stage / "tests").chmod(0o755)
    (stage / "grade").mkdir()
    (stage / "grade").chmod(0o755)
    grade = stage / "grade" / GRADE_NAME
    grade.touch()
    grade.chmod(0o644)
    os.chown(grade, SANDBOX_ID, SANDBOX_ID)
    os.utime(grade, (0, 0))


def _sandbox_args(stage: Path, limits: Limits) -> list[str]:
    """bwrap's options: namespaces, identity, the file system the check sees, its
    environment."""
    args = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_ID),
            "--gid", str(SANDBOX_ID), "--hostname", "vmchecker-check", "--die-with-parent",
            "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in TOP_LINKS:
        top = Path("/", name)
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--size", str(limits.memory_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    for name, writable in STAGED:
        args += ["--bind" if writable else "--ro-bind", str(stage / name), str(INSIDE / name)]
    args += ["--remount-ro", "/", "--chdir", str(INSIDE / "outputs"), "--clearenv"]
    for key, value in check_env().items():
        args += ["--setenv", key, value]
    return args


def _run(argv: list[str], timeout: float, cgroup: _Cgroup,
         stdout: CappedWriter, stderr: CappedWriter) -> StepResult:
    """Start bwrap as nobody, held before the check starts until its init is in
    ``cgroup``; wait up to ``timeout``; kill the whole sandbox on timeout."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    argv = [argv[0], "--info-fd", str(info_w), "--block-fd", str(block_r), *argv[1:]]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(info_w, block_r), cwd="/", env={"PATH": PATH},
                                user=SANDBOX_ID, group=SANDBOX_ID, extra_groups=[], start_new_session=True)
    except BaseException:
        for fd in (info_r, info_w, block_r, block_w):
            os.close(fd)
        raise
    os.close(info_w)
    os.close(block_r)
    pumps = [threading.Thread(target=hostcmds.pump_into, args=(s, w), daemon=True)
             for s, w in ((proc.stdout, stdout), (proc.stderr, stderr))]
    for t in pumps:
        t.start()
    timed_out = True
    try:
        init = _init_pid(info_r, start + timeout)
        if init is not None:     # else bwrap failed before its init: its stderr says why
            cgroup.add(init)
            os.write(block_w, b"go")
        os.close(block_w)
        block_w = -1
        proc.wait(max(start + timeout - time.monotonic(), 0))
        timed_out = False
    except subprocess.TimeoutExpired:
        log.info("check step: no end within %s s, killing its sandbox", timeout)
    finally:
        os.close(info_r)
        if block_w >= 0:
            os.close(block_w)
        if proc.returncode is None:
            _kill(proc)
        wall = time.monotonic() - start
        oom = cgroup.oom_killed()
        for t in pumps:
            t.join(KILL_TIMEOUT)
    result = StepResult(exit_code=proc.returncode if proc.returncode >= 0 else None,
                        signal=-proc.returncode if proc.returncode < 0 else None,
                        timed_out=timed_out, wall_s=round(wall, 3))
    known = {f.name for f in dataclasses.fields(result)}
    if "timeout_s" in known:
        result = dataclasses.replace(result, timeout_s=timeout)
    if "oom_killed" in known and cgroup.has_memory:
        result = dataclasses.replace(result, oom_killed=oom)
    return result


def _init_pid(info_fd: int, deadline: float) -> int | None:
    """The host pid of the sandbox's init, from bwrap's ``--info-fd`` JSON; None when
    bwrap ended first. Raises TimeoutExpired at ``deadline``."""
    data = b""
    while True:
        ready, _, _ = select.select([info_fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise subprocess.TimeoutExpired("bwrap", 0)
        chunk = os.read(info_fd, 4096)
        if not chunk:
            return None
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])


def _limits_argv(prlimit: str, limits: Limits, memory: bool) -> list[str]:
    """The check's rlimits, set by ``prlimit`` inside the sandbox on itself, then it
    execs the check: RLIMIT_NPROC counts nobody's processes in the sandbox's own user
    namespace, so neither other sandboxes nor the host's nobody eat into it (set on
    bwrap outside, it would count them all). Both limits are hard: no way back up."""
    argv = [prlimit, f"--nproc={limits.pids}", f"--fsize={limits.disk_mb * 1024 * 1024}", "--core=0"]
    if memory:
        argv.append(f"--as={limits.memory_mb * 1024 * 1024}")
    return [*argv, "--"]


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL bwrap's group: the sandbox's init dies with it (``--die-with-parent``)
    and takes every process of the pid namespace along."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(KILL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"the check's sandbox (bwrap pid {proc.pid}) survived SIGKILL") from None


def _copy_grade(src: Path, dest: Path, cap: int, notes: CappedWriter) -> None:
    """Copy the check's grade file to ``dest``, at most ``cap`` bytes, only if it is a
    regular file: never through a link, never from a FIFO or a device."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        notes.write(f"\n[vmchecker: the check's grade file is not readable: {exc.strerror}]\n".encode())
        return
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            notes.write(b"\n[vmchecker: the check's grade file is not a regular file: ignored]\n")
            return
        if info.st_size == 0 and info.st_mtime == 0:
            notes.write(b"\n[vmchecker: the check wrote no grade file]\n")
            return
        data = f.read(cap + 1)
    if len(data) > cap:
        data = data[:cap] + truncation_line(cap)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(out, "wb") as f:
        f.write(data)


class _Cgroup:
    """Transient memory and pids cgroups for one check, beside the tester's own (cgroup
    v1 controllers, or cgroup v2 where its root delegates them). Best effort: where none
    can be made the rlimits alone hold the check."""

    def __init__(self, limits: Limits):
        self.dirs: list[Path] = []
        self.has_memory = False
        name = f"vmchecker-check-{os.getpid()}-{secrets.token_hex(3)}"
        memory = str(limits.memory_mb * 1024 * 1024)
        settings = {"memory": [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)],
                    "pids": [("pids.max", str(limits.pids))]}
        mounts = cgroups.cgroup_mounts()
        own = _own_cgroups()
        try:
            for controller, items in settings.items():
                if controller in mounts:
                    folder = self._make(mounts[controller] / own.get(controller, "") / name)
                    self._write(folder, items)
                    self.has_memory |= controller == "memory"
            if not self.dirs and "unified" in mounts:
                folder = self._make(mounts["unified"] / name)
                available = (folder / "cgroup.controllers").read_text().split()
                self._write(folder, [("memory.max", memory), ("memory.swap.max", "0")] if "memory" in available else [])
                self._write(folder, [("pids.max", str(limits.pids))] if "pids" in available else [])
                self.has_memory = "memory" in available
        except OSError as exc:
            log.info("check step: no cgroup for its limits (%s); rlimits only", exc)
            self.remove()
            self.has_memory = False

    def _make(self, folder: Path) -> Path:
        folder.mkdir()
        self.dirs.append(folder)
        return folder

    @staticmethod
    def _write(folder: Path, items: list[tuple[str, str]]) -> None:
        for key, value in items:
            if (folder / key).exists():
                (folder / key).write_text(value)

    def add(self, pid: int) -> None:
        """Move ``pid`` in (one that already ended has nothing left to limit)."""
        for folder in self.dirs:
            with contextlib.suppress(ProcessLookupError):
                (folder / "cgroup.procs").write_text(str(pid))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the check for memory."""
        for folder in self.dirs:
            for key in ("memory.oom_control", "memory.events"):
                with contextlib.suppress(OSError):
                    for line in (folder / key).read_text().splitlines():
                        if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                            return True
        return False

    def remove(self) -> None:
        """Kill what is left inside (nothing, once bwrap is gone) and remove the folders."""
        deadline = time.monotonic() + KILL_TIMEOUT
        for folder in reversed(self.dirs):
            while True:
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("check step: cannot remove cgroup %s: %s", folder, exc)
                        break
                    time.sleep(0.01)
        self.dirs.clear()


def _own_cgroups() -> dict[str, str]:
    """Controller -> this process's cgroup path (relative), from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _n, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                paths[c] = path.lstrip("/")
    return paths
