"""The guest of one KVM job, whichever way it was made clean: what both revert modes
(:mod:`.kvm_modes`) share.

Commands and files go through the QEMU guest agent (:mod:`.kvm_agent`); the guest needs
no network. Each step runs under the step wrapper ``guest/step.pl`` (Perl: perl-base is
in every Debian guest), which puts the step in a cgroup v2 of its own with the machine's
memory, pids and CPU limits, keeps the first bytes of its output and counts the rest,
kills the whole cgroup at the timeout and when the step's main process ends, and reports
exit code or signal, CPU time and peak memory. The host keeps its own deadline too: if
the wrapper does not report in time, the host kills the cgroup through the agent. From
boot to cleanup :mod:`.kvm_guard` keeps the serial console log under the output cap and
pauses a guest whose disk file grew past the disk quota.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest, payload, results
from vmchecker.executor.kvm_agent import Agent, describe, output
from vmchecker.executor.kvm_guard import GuestWatch, tail

log = logging.getLogger(__name__)

URI = os.environ.get("VMCHECKER_LIBVIRT_URI", "qemu:///system")
DEFAULT_STATE = os.environ.get("VMCHECKER_KVM_STATE", "/var/lib/vmchecker/kvm")
HOST_GRACE = 15.0           # seconds past a step's timeout before the host kills the step itself
KILL_GRACE = 15.0           # seconds for the wrapper to report once the host killed the step
MAX_STREAM = 6 * 1024 * 1024   # bytes of a step's stdout or stderr brought back (agent limit 16 MiB)
IN_TAR, OUT_TAR = "/run/vmck-in.tar", "/run/vmck-out.tar"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
STEP_CGROUPS = "/sys/fs/cgroup/vmck"   # the guest's cgroup v2 folder for the steps' cgroups
STEP_PL = guest.program("step.pl")

FILE_READS_MAX = 8   # more result files than this come out as one tar (3 agent calls a file)
# Root, at the copy-out: "1 NAME\0" (or "0 NAME\0": empty) for each regular *.vmr file,
# not a symlink, at the top of the folder $1; nothing when it is missing (as copy-out.sh).
LIST_OUT = ('cd -- "$1" 2>/dev/null || exit 0; for f in *.vmr; do'
            ' if [ -f "$f" ] && [ ! -L "$f" ]; then [ -s "$f" ] && s=1 || s=0; printf "%s %s\\0" $s "$f"; fi;'
            ' done')
IN_DATA_MAX = 4 * 1024 * 1024   # a payload up to this size travels as the copy-in's stdin: no file to remove
# Root, before the first step: set the stale clock (a snapshot's) to $2, unpack the job's
# files from the tar $3 ("-": standard input; owners by name: the guest's passwd decides),
# check the guest can keep the contract.
COPY_IN = ('date -u -s "@$2" >/dev/null; { [ -d "$1" ] || mkdir -p -- "$1"; } &&'
           ' tar -xpf "$3" -C "$1"; rc=$?; [ "$3" = - ] || rm -f "$3";'
           f' [ $rc = 0 ] && exec /bin/sh "$1"/course/bin/{payload.STEP_PROGRAM} prepare; exit $rc')
# The same in a parked guest, which had all but the job's files (see SnapshotVM.park).
UNPACK = 'tar -xpf "$2" -C "$1"; rc=$?; rm -f "$2"; exit $rc'


@functools.cache
def kvm_usable() -> bool:
    """Hardware virtualization that can run a guest: vmx/svm in /proc/cpuinfo AND a
    /dev/kvm that opens (nested setups have /dev/kvm without the flags, and hang).
    Checked once per process: the hardware does not change under a running tester."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.M) is not None


def domain_type(setting: str) -> str:
    """The libvirt domain type for the machine's ``domain_type``."""
    if setting not in ("auto", "kvm", "qemu"):
        raise ExecutorError(f"domain_type must be auto, kvm or qemu, not {setting!r}")
    if setting == "auto":
        return "kvm" if kvm_usable() else "qemu"
    return setting


def state_dir(machine: Machine) -> Path:
    """Where the base image lives; per-job overlays and consoles go to its ``jobs/``."""
    return Path(machine.base_image).parent if machine.base_image else Path(DEFAULT_STATE)


def base_image(machine: Machine) -> Path:
    return Path(machine.base_image) if machine.base_image else Path(DEFAULT_STATE) / "base.qcow2"


def _parse_report(status: dict) -> tuple[list[str], bytes, bytes]:
    """Split the step wrapper's output into its report fields, kept stdout, kept stderr."""
    data = output(status)
    line, _, rest = data.partition(b"\n")
    fields = line.decode("ascii", "replace").split()
    if status.get("exitcode") != 0 or len(fields) != 10 or fields[0] != "vmck":
        err = output(status, "err").decode("utf-8", "replace").strip()
        raise ExecutorError(f"the step wrapper failed in the guest ({describe(status)}): {err or line!r}")
    out_kept, err_kept = int(fields[6]), int(fields[8])
    return fields, rest[:out_kept], rest[out_kept:out_kept + err_kept]


def _result_files(agent: Agent, folder: str) -> list[tuple[str, bool]] | None:
    """The first MAX_GUEST_VMRS regular ``*.vmr`` files at the top of ``folder``, as
    ``copy-out.sh`` chooses them (byte order, no dotfiles, no symlinks), each with
    whether it holds anything; listed by shell builtins alone (one program started in the
    slow guest, where the script starts three). None when a name is not UTF-8 (it must
    travel in JSON) or the list is longer than the agent brings back: ``copy-out.sh``
    decides then."""
    listing = agent.shell_whole(LIST_OUT, folder)
    if listing is None:
        return None
    files = []
    for entry in listing.split(b"\0")[:-1]:
        try:
            files.append((entry[2:].decode("utf-8"), entry[:1] == b"1"))
        except UnicodeDecodeError:
            return None
    return sorted(files)[:results.MAX_GUEST_VMRS]   # str order is byte order for UTF-8


def _number(text: str) -> int | None:
    return None if text == "-" else int(text)


class KvmVM(base.VM):
    """One job's guest, reached through its agent once started. A revert mode
    (:mod:`.kvm_modes`) says how the guest is made clean, started, stopped and released:
    ``revert``, ``start``, ``stop``, ``prepare_console`` and ``_release``."""

    def __init__(self, machine: Machine, name: str, conn: libvirt.virConnect):
        super().__init__(machine, name)
        self.conn = conn
        self.jobs = state_dir(machine) / "jobs"
        self.console = self.jobs / f"{name}.console"   # kernel_messages: tail -n0 -F this
        self.kept: Path | None = None   # the disk kept for inspection, if any
        self._dom: libvirt.virDomain | None = None
        self._agent: Agent | None = None
        self._console_source: Path | None = None
        self._disk: Path | None = None   # the file the guest's writes grow
        self._watch: GuestWatch | None = None
        self._user = (0, 0, "/root")
        self._steps = 0
        # A warm guest's: park ran the copy-in of a job without files in it, and nothing
        # ran since (the folders, vmchecker-step's checks, the clock): only unpack is left.
        self._parked = False

    # -- what each revert mode does its own way

    def prepare_console(self) -> None:
        """Make ``jobs/NAME.console`` (the job's serial log) before the kernel_messages
        commands start."""
        raise NotImplementedError

    def keep_for_inspection(self) -> Path | None:
        """Keep the disk of a failed job (``keep_failed``); its path, or None when the
        guest has no disk of its own."""
        return None

    def _release(self) -> None:
        """Give back what the job held (the guest, its disk, a lock), in any state."""
        raise NotImplementedError

    # -- primitives both modes share

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        dom = self._domain()
        if self._watch is None:   # from boot: the console and the disk grow from now on
            self._watch = GuestWatch(self.name, self._console_source, self.machine.limits.output_kb << 10,
                                     self._disk, self.machine.limits.disk_mb, self._stop_for_quota)
        last = ""
        while time.monotonic() < deadline:
            if not dom.isActive():
                raise ExecutorError(f"guest {self.name} stopped while booting; its serial console"
                                    f" ends with:\n{tail(self._console_source)}")
            try:
                libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 1, 0)
                return
            except libvirt.libvirtError as exc:
                last = exc.get_error_message()
            time.sleep(0.05)
        raise ExecutorError(f"guest {self.name} was not ready within {timeout} s (guest agent: {last});"
                            f" its serial console ends with:\n{tail(self._console_source)}")

    def copy_to(self, load: payload.Payload, guest_dir: str) -> None:
        agent = self._require_agent()
        if self.machine.guest_user not in ("", "root"):
            self._user = self._guest_user(agent, self.machine.guest_user)
        buf = io.BytesIO()
        load.write(buf)
        data = buf.getvalue()
        stdin = data if len(data) <= IN_DATA_MAX else None
        if stdin is None:
            agent.write_file(IN_TAR, data)
        if not self._parked:
            agent.shell(COPY_IN, guest_dir, f"{time.time():.6f}", "-" if stdin is not None else IN_TAR,
                        stdin=stdin)
        elif stdin is not None:
            agent.run(["/bin/tar", "-xpf", "-", "-C", guest_dir], stdin=stdin)   # one program: no shell
        else:
            agent.shell(UNPACK, guest_dir, IN_TAR)

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        with self._quota():
            self._copy_from(guest_dir, dest, cap)

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        with self._quota():
            return self._run(argv, cwd, timeout, stdout, stderr)

    def _copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        agent = self._require_agent()
        listed = _result_files(agent, guest_dir)
        if listed is not None and len(listed) <= FILE_READS_MAX:
            for name, full in listed:   # the guest's processes are dead: nothing swaps a file for a link now
                (dest / name).write_bytes(agent.read_file(f"{guest_dir}/{name}", cap + 1) if full else b"")
            return
        args = (guest_dir, str(cap + 1), str(results.MAX_GUEST_VMRS))
        data = agent.shell_whole(guest.COPY_OUT, *args, "-")   # the tar as the command's output: one call
        if data is None:   # more than the agent brings back at once
            agent.shell(guest.COPY_OUT, *args, OUT_TAR)
            data = agent.read_file(OUT_TAR, results.MAX_GUEST_VMRS * (cap + 2048) + 64 * 1024)
        results.extract_vmrs(data, dest, cap, self.name)

    def _run(self, argv: list[str], cwd: str, timeout: float,
             stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        agent = self._require_agent()
        self._steps += 1
        cgroup = f"step{self._steps}-{secrets.token_hex(3)}"
        limits = self.machine.limits
        cpu = "max" if limits.cpus >= 1 else f"{guest.cpu_quota_us(limits.cpus)} {guest.CPU_PERIOD_US}"
        uid, gid, home = self._user
        keep = min(stdout.cap + 1, MAX_STREAM)
        wrapper = ["/usr/bin/perl", "-e", STEP_PL, STEP_CGROUPS, cgroup, str(keep), str(timeout),
                   str(limits.memory_mb << 20), str(limits.pids), cpu, str(uid), str(gid), guest.GUEST_PATH,
                   home, cwd, *argv]
        started = time.monotonic()
        pid = agent.exec(wrapper)
        status = agent.wait(pid, started + timeout + HOST_GRACE)
        host_killed = status is None
        if host_killed:
            log.warning("%s: the step wrapper did not report %.0f s after the timeout; killing the step",
                        self.name, HOST_GRACE)
            try:
                agent.shell(f"echo 1 > {STEP_CGROUPS}/{cgroup}/cgroup.kill", timeout=KILL_GRACE)
            except ExecutorError as exc:
                log.warning("%s: killing the step's cgroup failed: %s", self.name, exc.message)
            status = agent.wait(pid, time.monotonic() + KILL_GRACE)
            if status is None:
                raise ExecutorError(f"the guest {self.name} did not end a step that outlived its {timeout} s timeout")
        wall = time.monotonic() - started
        fields, out, err = _parse_report(status)
        for writer, data, total in ((stdout, out, int(fields[7])), (stderr, err, int(fields[9]))):
            writer.write(data)
            writer.dropped += max(total - len(data), 0)   # counted in the guest, never sent
        usec, peak = _number(fields[4]), _number(fields[5])
        return results.StepResult(
            exit_code=_number(fields[1]), signal=_number(fields[2]),
            timed_out=host_killed or fields[3] == "1", wall_s=round(wall, 3),
            cpu_s=None if usec is None else round(usec / 1e6, 3),
            max_rss_kb=None if peak is None else peak // 1024)

    def cleanup(self, failed: bool = False) -> str | None:
        if self._watch is not None:
            self._watch.stop()
        note = self._keep_failed() if failed and self.machine.keep_failed else None
        try:
            self._release()
        finally:
            if self.kept is None:   # with the copies virtlogd rotated out of the console log
                for path in (self.console, *self.jobs.glob(f"{self.name}.console.*")):
                    path.unlink(missing_ok=True)
        return note

    # -- helpers

    @contextlib.contextmanager
    def _quota(self) -> Iterator[None]:
        """Whatever a guest stopped for its disk quota made fail, the job fails for the quota."""
        try:
            yield
        except ExecutorError:
            if self._watch is not None:
                self._watch.check()
            raise
        if self._watch is not None:
            self._watch.check()

    def _stop_for_quota(self) -> None:
        """Pause the guest: it writes no more, the agent fails at once, and a snapshot
        domain is left as between two jobs (the next one's revert loads the snapshot)."""
        try:
            self._domain().suspend()
        except (ExecutorError, libvirt.libvirtError) as exc:
            log.warning("%s: stopping the guest over its disk quota failed: %s", self.name, exc)

    def _keep_failed(self) -> str | None:
        """Keep a failed job's disk; the line that says where, or why it could not."""
        try:
            kept = self.keep_for_inspection()
        except (OSError, ExecutorError) as exc:
            return f"keeping the failed guest's disk failed: {getattr(exc, 'message', exc)}"
        return None if kept is None else f"the failed guest's disk is kept for inspection: {kept}"

    def _lookup(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            raise ExecutorError(f"libvirt domain {name!r} does not exist on {URI}: build it with"
                                f" kvm-resources/build-image.sh {name}") from None

    def _domain(self) -> libvirt.virDomain:
        if self._dom is None:
            raise ExecutorError(f"guest {self.name} was not started")
        return self._dom

    def _require_agent(self) -> Agent:
        if self._agent is None:
            raise ExecutorError(f"guest {self.name} was not started")
        return self._agent

    @staticmethod
    def _guest_user(agent: Agent, user: str) -> tuple[int, int, str]:
        if not NAME_RE.match(user):
            raise ExecutorError(f"bad guest_user {user!r}")
        try:
            entry = guest.passwd_entry(agent.shell('getent passwd "$1"', user).decode("utf-8", "replace"), user)
        except ExecutorError:
            entry = None   # getent exits 2 for a user it does not know
        if entry is None:
            raise ExecutorError(f"guest_user {user!r} does not exist in the guest")
        return entry
