"""KVM backend: jobs run in libvirt/QEMU guests driven through the QEMU guest agent.

Two ways to give each job a clean guest (the machine's ``revert``):

- ``snapshot`` (the fast path): the persistent domain ``machine.vm`` holds an internal
  snapshot with RAM (``machine.snapshot``, taken by kvm-resources/build-image.sh once its
  agent answered and its page cache was warm). Each job loads it into the running QEMU
  with the monitor's ``loadvm`` (0.1 s under TCG; libvirt 9's ``revertToSnapshot``
  restarts QEMU and takes 2 s, so it is only the fallback for a domain that is not
  running). One job at a time per domain (a lock file, taken before the job's
  kernel_messages commands start, so they see its console only); the domain is paused
  between jobs, so what a job leaves running burns no CPU. The guest clock is set per job.
- ``overlay``: each job boots a transient copy of ``machine.vm``'s definition on a fresh
  qcow2 overlay of the read-only ``base_image``: stateless, as many at once as slots.
  With ``keep_failed`` the overlay of a job that ended in ``error`` is kept.

Commands and files go through the guest agent (``guest-exec``, ``guest-file-*``, see
:mod:`vmchecker.executor.kvm_agent`); the guest needs no network. Each step runs under a
small Perl wrapper (perl-base is in every Debian guest; POSIX.pm is avoided: it costs
0.4 s to load under TCG) that puts the step in a cgroup v2 of its own with the machine's
memory, pids and CPU limits, keeps the first bytes of its output and counts the rest,
kills the whole cgroup (``cgroup.kill``) at the timeout and when the step's main process
ends (leftover background processes), and reports exit code or signal, CPU time and
peak memory. The host keeps its own deadline too: if the wrapper does not report in
time, the host kills the cgroup through the agent.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import io
import logging
import os
import re
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import libvirt
import libvirt_qemu

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest, payload, results
from vmchecker.executor.kvm_agent import Agent, describe, output

log = logging.getLogger(__name__)

libvirt.registerErrorHandler(lambda *_args: None, None)   # errors arrive as exceptions; polling must not flood stderr

PREFIX = guest.GUEST_PREFIX
URI = os.environ.get("VMCHECKER_LIBVIRT_URI", "qemu:///system")
DEFAULT_STATE = os.environ.get("VMCHECKER_KVM_STATE", "/var/lib/vmchecker/kvm")
HOST_GRACE = 15.0           # seconds past a step's timeout before the host kills the step itself
KILL_GRACE = 15.0           # seconds for the wrapper to report once the host killed the step
MAX_STREAM = 6 * 1024 * 1024   # bytes of a step's stdout or stderr brought back (agent limit 16 MiB)
IN_TAR, OUT_TAR = "/run/vmck-in.tar", "/run/vmck-out.tar"
TAIL_BYTES = 4096
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# One step, run as root in the guest. Args: cgroup name, bytes kept per stream, timeout
# (s), memory.max, pids.max, cpu.max, uid, gid, home, cwd, argv... Prints one line
# "vmck EXIT SIGNAL TIMED_OUT CPU_USEC PEAK_BYTES OUT_KEPT OUT_TOTAL ERR_KEPT ERR_TOTAL"
# ("-" where unknown), then the kept stdout and stderr bytes.
STEP_PL = r'''
use strict; use warnings;
my ($name, $cap, $timeout, $mem, $pids, $cpu, $uid, $gid, $home, $cwd, @argv) = @ARGV;
my $top = "/sys/fs/cgroup/vmck"; my $cg = "$top/$name";
sub put { my ($f, $v) = @_; open(my $h, ">", $f) or return 0; print {$h} $v; return close($h) }
sub slurp { my ($f) = @_; open(my $h, "<", $f) or return ""; local $/; my $v = <$h>; return $v // "" }
sub now { return (split " ", slurp("/proc/uptime"))[0] }
sub nap { select(undef, undef, undef, $_[0]) }
sub kill_all { put("$cg/cgroup.kill", 1); my $end = now() + 5; nap(0.01) while slurp("$cg/cgroup.procs") =~ /\d/ && now() < $end }
mkdir $top; put("$top/cgroup.subtree_control", "+memory +pids +cpu");
mkdir $cg or die "cannot create cgroup $cg: $!\n";
put("$cg/memory.max", $mem) && put("$cg/pids.max", $pids) or die "cannot set limits in $cg: $!\n";
put("$cg/memory.swap.max", 0); put("$cg/cpu.max", $cpu);
pipe(my $or, my $ow) && pipe(my $er, my $ew) or die "pipe: $!\n";
my $start = now();
my $pid = fork() // die "fork: $!\n";
if (!$pid) {
    close $or; close $er;
    open(STDIN, "<", "/dev/null"); open(STDOUT, ">&", $ow); open(STDERR, ">&", $ew);
    put("$cg/cgroup.procs", $$) or do { print STDERR "vmchecker: cannot enter cgroup $cg: $!\n"; exit 126 };
    if ($uid != 0) { $( = $gid; $) = "$gid $gid"; $< = $> = $uid; $< == $uid or do { print STDERR "vmchecker: cannot become uid $uid\n"; exit 126 } }
    chdir $cwd or do { print STDERR "vmchecker: cannot enter $cwd: $!\n"; exit 126 };
    %ENV = (PATH => "@PATH@", HOME => $home, LANG => "C.UTF-8", TERM => "dumb");
    exec { $argv[0] } @argv or do { print STDERR "vmchecker: cannot run $argv[0]: $!\n"; exit 127 };
}
close $ow; close $ew;
my @streams = ([$or, "", 0], [$er, "", 0]);
my %sink = map { fileno($_->[0]) => $_ } @streams;
my ($status, $timed_out, $deadline) = (undef, 0, $start + $timeout);
while (1) {
    if (!defined $status) {
        if (waitpid($pid, 1) == $pid) { $status = $?; kill_all(); $deadline = now() + 5 }
        elsif (now() >= $deadline) { $timed_out = 1; kill_all(); waitpid($pid, 0); $status = $?; $deadline = now() + 5 }
    }
    last if defined $status && (!%sink || now() >= $deadline);
    if (!%sink) { nap(0.02); next }
    my $rin = ""; vec($rin, $_, 1) = 1 for keys %sink;
    next if select(my $rout = $rin, undef, undef, 0.02) <= 0;
    for my $fd (keys %sink) {
        next unless vec($rout, $fd, 1);
        my $s = $sink{$fd};
        my $got = sysread($s->[0], my $chunk, 65536);
        if (!$got) { close $s->[0]; delete $sink{$fd}; next }
        $s->[2] += $got;
        my $room = $cap - length $s->[1];
        $s->[1] .= substr($chunk, 0, $room) if $room > 0;
    }
}
my ($usec) = slurp("$cg/cpu.stat") =~ /usage_usec (\d+)/;
my ($peak) = slurp("$cg/memory.peak") =~ /(\d+)/;
kill_all(); rmdir $cg;
binmode STDOUT;
printf "vmck %s %s %d %s %s %d %d %d %d\n", ($status & 127) ? "-" : $status >> 8, ($status & 127) || "-",
    $timed_out, $usec // "-", $peak // "-", length $streams[0][1], $streams[0][2], length $streams[1][1], $streams[1][2];
print $streams[0][1], $streams[1][1];
'''.replace("@PATH@", guest.GUEST_PATH)

# Root, before the first step: set the stale clock (a snapshot's), unpack the job's files.
COPY_IN = 'date -u -s "@$2" >/dev/null; mkdir -p -- "$1" && tar --numeric-owner -xpf "$3" -C "$1"; rc=$?; rm -f "$3"; exit $rc'


# --------------------------------------------------------------------------- helpers


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


def tail(path: Path | None) -> str:
    """The last lines of a serial console log (for error messages)."""
    if path is None:
        return "(no serial console log)"
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read the serial console log {path}: {exc.strerror})"
    return text.strip() or "(the serial console log is empty)"


def _serial_path(domain_xml: ET.Element) -> Path | None:
    """The file a domain's serial console is logged to, if any."""
    source = domain_xml.find("devices/serial[@type='file']/source")
    return Path(source.get("path")) if source is not None else None


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


def _number(text: str) -> int | None:
    return None if text == "-" else int(text)


# --------------------------------------------------------------------------- VM


class KvmVM(base.VM):
    """One job's guest: the snapshot domain for a while, or a transient overlay domain."""

    def __init__(self, machine: Machine, name: str, conn: libvirt.virConnect):
        super().__init__(machine, name)
        self.conn = conn
        self.jobs = state_dir(machine) / "jobs"
        self.console = self.jobs / f"{name}.console"   # kernel_messages: tail -n0 -F this
        self.overlay = self.jobs / f"{name}.qcow2"
        self.kept: Path | None = None
        self._dom: libvirt.virDomain | None = None
        self._base: libvirt.virDomain | None = None   # the snapshot domain, once locked
        self._agent: Agent | None = None
        self._lock: int | None = None
        self._console_source: Path | None = None
        self._user = (0, 0, "/root")
        self._steps = 0

    @property
    def snapshot_mode(self) -> bool:
        return self.machine.revert == "snapshot"

    # -- primitives

    def revert(self) -> None:
        if self.snapshot_mode:
            self._revert_snapshot()
        else:
            self.overlay.unlink(missing_ok=True)
            proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                   "-b", str(base_image(self.machine)), str(self.overlay)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise ExecutorError(f"creating the overlay {self.overlay} failed: {proc.stderr.strip()}")

    def start(self) -> None:
        if self.snapshot_mode:
            dom = self._domain()
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            return
        xml = self._transient_xml()
        try:
            self._dom = self.conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise ExecutorError(f"starting guest {self.name} failed: {exc.get_error_message()}") from None
        self._agent = Agent(self._dom, self.name)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        dom = self._domain()
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

    def copy_to(self, src: Path, guest_dir: str) -> None:
        agent = self._require_agent()
        if self.machine.guest_user not in ("", "root"):
            self._user = self._guest_user(agent, self.machine.guest_user)
        uid, gid, _home = self._user
        buf = io.BytesIO()
        payload.write_payload(src, buf, uid, gid)
        agent.write_file(IN_TAR, buf.getvalue())
        agent.shell(COPY_IN, guest_dir, f"{time.time():.6f}", IN_TAR)

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        agent = self._require_agent()
        agent.shell(guest.COPY_OUT, guest_dir, str(cap + 1), str(results.MAX_GUEST_VMRS), OUT_TAR)
        data = agent.read_file(OUT_TAR, results.MAX_GUEST_VMRS * (cap + 2048) + 64 * 1024)
        results.extract_vmrs(data, dest, cap, self.name)

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        agent = self._require_agent()
        self._steps += 1
        cgroup = f"step{self._steps}-{secrets.token_hex(3)}"
        limits = self.machine.limits
        cpu = "max" if limits.cpus >= 1 else f"{guest.cpu_quota_us(limits.cpus)} {guest.CPU_PERIOD_US}"
        uid, gid, home = self._user
        keep = min(stdout.cap + 1, MAX_STREAM)
        wrapper = ["/usr/bin/perl", "-e", STEP_PL, cgroup, str(keep), str(timeout), str(limits.memory_mb << 20),
                   str(limits.pids), cpu, str(uid), str(gid), home, cwd, *argv]
        started = time.monotonic()
        pid = agent.exec(wrapper)
        status = agent.wait(pid, started + timeout + HOST_GRACE)
        host_killed = status is None
        if host_killed:
            log.warning("%s: the step wrapper did not report %.0f s after the timeout; killing the step",
                        self.name, HOST_GRACE)
            with contextlib.suppress(ExecutorError):
                agent.shell(f"echo 1 > /sys/fs/cgroup/vmck/{cgroup}/cgroup.kill", timeout=KILL_GRACE)
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

    def stop(self) -> None:
        if self.snapshot_mode:
            self._pause()
        else:
            self._destroy()

    def cleanup(self, failed: bool = False) -> str | None:
        note = None
        if failed and self.machine.keep_failed:
            try:
                kept = self.keep_for_inspection()
            except OSError as exc:
                note = f"keeping the failed guest's disk failed: {exc}"
            else:
                if kept is not None:
                    note = f"the failed guest's disk is kept for inspection: {kept}"
        try:
            if self.snapshot_mode:
                self._pause()
            else:
                self._destroy()
                if self.kept is None:
                    self.overlay.unlink(missing_ok=True)
        finally:
            if self.kept is None:
                self.console.unlink(missing_ok=True)
            if self._lock is not None:
                os.close(self._lock)   # releases the domain for the next job
                self._lock = None
        return note

    def keep_for_inspection(self) -> Path | None:
        """Keep the overlay of a failed job (``keep_failed``); its path, or None."""
        if self.snapshot_mode or not self.overlay.exists():
            return None
        self._destroy()
        self.kept = self.jobs / f"kept-{self.name}.qcow2"
        os.replace(self.overlay, self.kept)
        if self.console.exists():
            os.replace(self.console, self.jobs / f"kept-{self.name}.console")
        return self.kept

    def prepare_console(self) -> None:
        """Make ``jobs/NAME.console`` before the kernel_messages commands start: the job's
        own serial log (overlay), or a link to the snapshot domain's log, made only once
        this job holds the domain: the shared log must show no other job's messages."""
        self.console.unlink(missing_ok=True)
        if self.snapshot_mode:
            self._take_domain()
            if self._console_source is not None:
                self.console.symlink_to(self._console_source)
        else:
            self.console.touch()
            self._console_source = self.console

    # -- snapshot mode

    def _revert_snapshot(self) -> None:
        if not _NAME_RE.match(self.machine.snapshot):
            raise ExecutorError(f"bad snapshot name {self.machine.snapshot!r}")
        dom = self._take_domain()
        try:
            snap = dom.snapshotLookupByName(self.machine.snapshot)
        except libvirt.libvirtError:
            raise ExecutorError(f"domain {self.machine.vm!r} has no snapshot {self.machine.snapshot!r}:"
                                f" build it with kvm-resources/build-image.sh {self.machine.vm}") from None
        self._dom, self._agent = dom, Agent(dom, self.machine.vm)
        if self._console_source is not None:   # this job's messages only (tail -F follows)
            with contextlib.suppress(OSError):
                os.truncate(self._console_source, 0)
        if dom.state()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
            reply = libvirt_qemu.qemuMonitorCommand(dom, f"loadvm {self.machine.snapshot}",
                                                    libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            if not reply.strip():
                return
            log.warning("%s: loadvm said %r; reverting through libvirt", self.machine.vm, reply.strip())
        try:
            dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
        except libvirt.libvirtError as exc:
            raise ExecutorError(f"reverting {self.machine.vm!r} to snapshot {self.machine.snapshot!r} failed:"
                                f" {exc.get_error_message()}") from None

    def _take_domain(self) -> libvirt.virDomain:
        """Lock the snapshot domain for this job (once; held until cleanup), check its
        type and find its serial log, from one reading of its definition."""
        if self._base is None:
            dom = self._lookup(self.machine.vm)
            self._lock_domain()
            root = ET.fromstring(dom.XMLDesc(0))
            self._check_type(root.get("type"))
            self._console_source = _serial_path(root)
            self._base = dom
        return self._base

    def _lock_domain(self) -> None:
        self.jobs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.jobs / f".{self.machine.vm}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for domain %s (revert: snapshot runs one job at a time)", self.name, self.machine.vm)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock = fd

    def _pause(self) -> None:
        dom = self._dom
        if dom is not None and self._lock is not None and dom.isActive() \
                and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
            dom.suspend()

    def _check_type(self, actual: str | None) -> None:
        wanted = domain_type(self.machine.domain_type)
        if actual != wanted and (self.machine.domain_type != "auto" or actual == "kvm"):
            raise ExecutorError(f"domain {self.machine.vm!r} is of type {actual!r} but this machine needs"
                                f" {wanted!r} (domain_type: {self.machine.domain_type}); rebuild it with"
                                f" VMCHECKER_KVM_DOMAIN_TYPE={wanted} kvm-resources/build-image.sh")

    # -- overlay mode

    def _transient_xml(self) -> str:
        """``machine.vm``'s definition, renamed, on this job's overlay and console."""
        root = ET.fromstring(self._lookup(self.machine.vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        root.set("type", domain_type(self.machine.domain_type))
        root.find("name").text = self.name
        for tag in ("uuid", "description"):
            for el in root.findall(tag):
                root.remove(el)
        devices = root.find("devices")
        disk = next((d for d in devices.findall("disk") if d.get("device", "disk") == "disk"), None)
        if disk is None:
            raise ExecutorError(f"domain {self.machine.vm!r} has no disk to put the job's overlay on")
        disk.set("type", "file")
        for el in disk.findall("source") + disk.findall("backingStore"):
            disk.remove(el)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", "qcow2")
        ET.SubElement(disk, "source", file=str(self.overlay))
        for el in devices.findall("serial") + devices.findall("console"):
            devices.remove(el)
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(self.console), append="on")
        ET.SubElement(serial, "target", port="0")
        return ET.tostring(root, encoding="unicode")

    def _destroy(self) -> None:
        if self.snapshot_mode:
            return
        with contextlib.suppress(libvirt.libvirtError):
            dom = self._dom or self.conn.lookupByName(self.name)
            if dom.isActive():
                dom.destroy()
        self._dom = None

    # -- helpers

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
        if not _NAME_RE.match(user):
            raise ExecutorError(f"bad guest_user {user!r}")
        try:
            entry = guest.passwd_entry(agent.shell('getent passwd "$1"', user).decode("utf-8", "replace"), user)
        except ExecutorError:
            entry = None
        if entry is None:
            raise ExecutorError(f"guest_user {user!r} does not exist in the guest")
        return entry


# --------------------------------------------------------------------------- Host


class KvmHost(base.Host):
    backend = "kvm"

    def __init__(self, uri: str = URI):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self.state_dirs = {Path(DEFAULT_STATE)}
        atexit.register(self.close)  # before interpreter shutdown tears libvirt's module down

    def connection(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise ExecutorError(f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()};"
                                    " start it with kvm-resources/build-image.sh (virtlogd -d; libvirtd -d)") from None
        return self._conn

    def close(self) -> None:
        """Close the libvirt connection (a later call opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def get_vm(self, machine: Machine, job_id: str) -> KvmVM:
        if machine.channel == "ssh":
            raise ExecutorError(f"machine {machine.name!r}: channel: ssh is not implemented on this tester;"
                                " use channel: agent (qemu-guest-agent in the guest)")
        if machine.channel != "agent":
            raise ExecutorError(f"machine {machine.name!r}: unknown channel {machine.channel!r} (agent or ssh)")
        if machine.revert not in ("snapshot", "overlay"):
            raise ExecutorError(f"machine {machine.name!r}: revert must be snapshot or overlay, not {machine.revert!r}")
        if machine.network:
            raise ExecutorError(f"machine {machine.name!r}: network: true is not supported by the KVM backend;"
                                " set network: false")
        self.state_dirs.add(state_dir(machine))
        (state_dir(machine) / "jobs").mkdir(parents=True, exist_ok=True)
        vm = KvmVM(machine, guest.guest_name(job_id), self.connection())
        try:
            vm.prepare_console()
        except BaseException:
            vm.cleanup()   # releases the domain lock it may hold
            raise
        return vm

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        """Destroy the transient guests of dead executors and remove the overlays and
        consoles they left in the state folder of every machine known here: the default
        one, those this process ran, and ``machines`` (the caller's: a queue manager's)."""
        try:
            domains = [d.name() for d in self.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)]
        except (ExecutorError, libvirt.libvirtError) as exc:
            log.warning("cannot list libvirt domains to clean leftovers: %s", exc)
            domains = []
        removed = guest.remove_leftovers(domains, self._destroy_domain, "KVM guest")
        dirs = self.state_dirs | {state_dir(m) for m in machines if m.type == "kvm"}
        for jobs in sorted(d / "jobs" for d in dirs):
            stems = sorted({p.stem for p in jobs.glob(f"{PREFIX}*") if p.suffix in (".qcow2", ".console")})

            def remove(stem: str, jobs: Path = jobs) -> None:
                for suffix in (".qcow2", ".console"):
                    (jobs / f"{stem}{suffix}").unlink(missing_ok=True)

            removed += [s for s in guest.remove_leftovers(stems, remove, f"files in {jobs} of guest")
                        if s not in removed]
        return removed

    def _destroy_domain(self, name: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.connection().lookupByName(name).destroy()


def create_host() -> KvmHost:
    return KvmHost()
