"""The guest of one VMware job, whichever way it was made clean: what both revert modes
(:mod:`.vmware_modes`) share.

Before power-on the VM is given the machine's limits: its RAM is ``limits.memory_mb``
(the memory limit: the whole guest has no more), its vCPUs ``limits.cpus`` rounded up,
and, unless the machine has ``network: true``, its network cards are disconnected. Once
VMware Tools answers, every command runs as the guest user under the in-guest wrapper
``guest/vmware-step.pl``, each in a folder of its own under ``BASE/steps`` (root's,
0700): output to files there, the student's processes bounded by RLIMIT_NPROC
(``limits.pids``), whatever the command left killed when it ends. The host polls for the
end with ``ListProcessesInGuest``; at the time limit it ends the command with
``TerminateProcessInGuest`` and has the wrapper kill its process group and every process
of the student user, then reads the output files capped (the dropped bytes are counted
from the file size, never read).
"""

from __future__ import annotations

import io
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVmomi import vim

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest, payload, results
from vmchecker.executor.vmware_api import Session
from vmchecker.executor.vmware_guest import GuestOps

log = logging.getLogger(__name__)

STEP_PL = guest.program("vmware-step.pl")
STEPS = "steps"             # BASE/steps/N: the files of the job's Nth command
KILL_GRACE = 30.0           # seconds for the wrapper to end a step that outlived its time
REPORT_HEAD = 256          # bytes of a report's first line
REPORT_KEEP = 16 * 1024    # bytes of our own commands' output brought back (their errors)
# sh: perl runs the wrapper text given as the first argument.
WRAPPER = 'p=$1; shift; exec /usr/bin/perl -e "$p" -- "$@"'
# Root, in BASE: unpack the job's files (owners by name: the guest's passwd decides),
# then check the guest can keep the contract.
COPY_IN = (f'chmod 0700 {STEPS} && tar -xpf {STEPS}/in.tar; rc=$?; rm -f {STEPS}/in.tar;'
           f' [ $rc = 0 ] && exec /bin/sh course/bin/{payload.STEP_PROGRAM} prepare; exit $rc')


def _number(text: str) -> int | None:
    return None if text == "-" else int(text)


@dataclass(frozen=True)
class Report:
    """How a command ended, as the wrapper's report says, with the first bytes of its
    output and the whole size of each stream."""

    folder: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    cpu_us: int | None
    max_rss_kb: int | None
    out: bytes
    out_total: int
    err: bytes
    err_total: int

    @property
    def succeeded(self) -> bool:
        return not self.timed_out and self.exit_code == 0

    def why(self) -> str:
        """Why a command of ours failed, in its own words where it has some."""
        if self.timed_out:
            return "it did not finish in time"
        return self.err.decode("utf-8", "replace").strip() or f"exit code {self.exit_code}, signal {self.signal}"

    @classmethod
    def parse(cls, data: bytes, folder: str, code: int | None, vm: str) -> Report:
        """The report in ``data``; ``code`` is the wrapper's exit code (None: it was
        killed at the time limit and the report is the kill's)."""
        line, _, rest = data.partition(b"\n")
        fields = line.decode("ascii", "replace").split()
        try:
            if len(fields) != 9 or fields[0] != "vmck":
                raise ValueError(line)
            out_kept, out_total, err_kept, err_total = (int(f) for f in fields[5:])
            return cls(folder, _number(fields[1]), _number(fields[2]), code is None, _number(fields[3]),
                       _number(fields[4]), rest[:out_kept], out_total, rest[out_kept:out_kept + err_kept], err_total)
        except ValueError:
            raise ExecutorError(f"the step wrapper failed in VMware VM {vm!r} (exit code {code}):"
                                f" {line.decode('utf-8', 'replace').strip() or 'no report'}") from None


class VmwareVM(base.VM):
    """One job's VMware VM, found (or made) by a revert mode, which sets ``self._vm`` in
    ``revert`` and gives it back in ``_release``."""

    def __init__(self, machine: Machine, name: str, session: Session):
        super().__init__(machine, name)
        self.session = session
        self.base = machine.guest_base_path.rstrip("/") or "/vmchecker"
        self._vm: Any = None
        self._ops: GuestOps | None = None
        self._commands = 0

    @property
    def vm_name(self) -> str:
        """The VM in vSphere, as messages name it: the guest's own name unless its revert
        mode says otherwise (a warm-up's VM of a snapshot pool)."""
        return self.name

    # -- what each revert mode does its own way

    def _release(self, failed: bool) -> str | None:
        """Give back what the job held (a VM, a clone); a note for vmchecker-stderr.vmr."""
        raise NotImplementedError

    # -- primitives both modes share

    def start(self) -> None:
        vm = self._require_vm()
        self._configure(vm)
        self.session.wait("PowerOnVM_Task", self.vm_name, vm.PowerOnVM_Task)

    def wait_ready(self, timeout: float) -> None:
        vm = self._require_vm()
        deadline = time.monotonic() + timeout
        tools = "not checked"
        while time.monotonic() < deadline:
            state = self.session.call("reading the guest state", self.vm_name, lambda: vm.guest)
            tools = state.toolsRunningStatus
            if tools == "guestToolsRunning" and state.guestOperationsReady is not False:
                if self._ops is None:
                    self._ops = GuestOps(self.session, vm, self.vm_name, self.machine.guest_user)
                if self._ops.mkdir(f"{self.base}/{STEPS}"):
                    return
                tools = "running, guest operations not ready yet"
            time.sleep(0.1)
        raise ExecutorError(f"VMware VM {self.vm_name!r} was not ready within {timeout} s (VMware Tools: {tools});"
                            " are VMware Tools (open-vm-tools) installed and started at boot in the guest?")

    def copy_to(self, load: payload.Payload, guest_dir: str) -> None:
        ops = self._require_ops()
        buf = io.BytesIO()
        load.write(buf)
        if guest_dir != self.base:   # wait_ready made the base's
            ops.mkdir(f"{guest_dir}/{STEPS}")
        ops.upload(f"{guest_dir}/{STEPS}/in.tar", buf.getvalue(), guest.COPY_TIMEOUT)
        done = self._command(["/bin/sh", "-c", COPY_IN], guest_dir, guest.COPY_TIMEOUT, 0)
        if not done.succeeded:
            raise ExecutorError(f"copying the job's files into {guest_dir} in VMware VM {self.vm_name!r} failed:"
                                f" {done.why()}")

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        argv = ["/bin/sh", "-c", guest.COPY_OUT, "sh", guest_dir, str(cap + 1), str(results.MAX_GUEST_VMRS), "-"]
        limit = results.MAX_GUEST_VMRS * (cap + 2048) + 64 * 1024   # the tar comes back in the report
        done = self._command(argv, "/", guest.COPY_TIMEOUT, limit)
        if not done.succeeded:
            raise ExecutorError(f"copying results out of {guest_dir} in VMware VM {self.vm_name!r} failed:"
                                f" {done.why()}")
        if done.out_total > len(done.out):
            raise ExecutorError(f"the results copied out of VMware VM {self.vm_name!r} are {done.out_total} bytes,"
                                f" more than {limit}")
        results.extract_vmrs(done.out, dest, cap, self.vm_name)

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        started = time.monotonic()
        done = self._command(argv, cwd, timeout, stdout.cap + 1, nproc=str(self.machine.limits.pids))
        wall = round(time.monotonic() - started, 3)
        for writer, data, total in ((stdout, done.out, done.out_total), (stderr, done.err, done.err_total)):
            writer.write(data)
            writer.dropped += max(total - len(data), 0)   # counted from the file's size, never read
        if done.timed_out:
            return results.StepResult(signal=signal.SIGKILL, timed_out=True, wall_s=wall)
        return results.StepResult(exit_code=done.exit_code, signal=done.signal, wall_s=wall,
                                  cpu_s=None if done.cpu_us is None else round(done.cpu_us / 1e6, 3),
                                  max_rss_kb=done.max_rss_kb)

    def stop(self) -> None:
        if self._vm is not None:
            self._power_off(self._vm)

    def cleanup(self, failed: bool = False) -> str | None:
        return self._release(failed)

    # -- helpers

    def _command(self, argv: list[str], cwd: str, timeout: float, keep: int, nproc: str = "-") -> Report:
        """Run ``argv`` in the guest under the wrapper, at most ``timeout`` seconds (then
        it is killed there), and read its report with the first ``keep`` bytes of its
        stdout and stderr (``keep`` 0: only whether it succeeded, and why not)."""
        ops = self._require_ops()
        self._commands += 1
        folder = f"{self.base}/{STEPS}/{self._commands}"
        student = self.machine.student_user
        pid = ops.start(WRAPPER, [STEP_PL, "run", folder, student, nproc, str(keep), guest.GUEST_PATH, cwd, *argv])
        code = ops.wait(pid, time.monotonic() + timeout)
        if code is None:
            log.info("%s: a command outlived its %s s; killing it in the guest", self.vm_name, timeout)
            ops.terminate(pid)
            killer = ops.start(WRAPPER, [STEP_PL, "kill", folder, student, str(keep)])
            killed = ops.wait(killer, time.monotonic() + KILL_GRACE)
            if killed is None:
                raise ExecutorError(f"VMware VM {self.vm_name!r} did not end a command that outlived its {timeout} s")
            if killed != 0:
                log.warning("%s: processes of %s survived being killed", self.vm_name, student)
        if code == 0 and keep == 0:   # nothing to read back: save the round trips
            return Report(folder, 0, None, False, None, None, b"", 0, b"", 0)
        keep = keep or REPORT_KEEP
        data, _ = ops.download(f"{folder}/report", REPORT_HEAD + 2 * keep, guest.COPY_TIMEOUT)
        return Report.parse(data, folder, code, self.vm_name)

    def _configure(self, vm: Any) -> None:
        """RAM, vCPUs and network cards as the machine says, in one reconfiguration
        (none when the VM already matches)."""
        hardware = self.session.call("reading the VM's hardware", self.vm_name, lambda: vm.config.hardware)
        limits = self.machine.limits
        spec = vim.vm.ConfigSpec()
        changed = False
        memory = -(-limits.memory_mb // 4) * 4          # vSphere wants a multiple of 4 MB
        if hardware.memoryMB != memory:
            spec.memoryMB, changed = memory, True
        cpus = max(1, math.ceil(limits.cpus))
        if hardware.numCPU != cpus:
            spec.numCPUs, changed = cpus, True
        if not self.machine.network:
            for device in hardware.device:
                link = getattr(device, "connectable", None)
                if isinstance(device, vim.vm.device.VirtualEthernetCard) and link is not None \
                        and (link.startConnected or link.connected):
                    link.startConnected = link.connected = False
                    spec.deviceChange.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=device))
                    changed = True
        if changed:
            self.session.wait("ReconfigVM_Task", self.vm_name, lambda: vm.ReconfigVM_Task(spec=spec))

    def _power_off(self, vm: Any) -> None:
        state = self.session.call("reading the power state", self.vm_name, lambda: vm.runtime.powerState)
        if state != vim.VirtualMachinePowerState.poweredOff:
            self.session.wait("PowerOffVM_Task", self.vm_name, vm.PowerOffVM_Task)

    def _require_vm(self) -> Any:
        if self._vm is None:
            raise ExecutorError(f"VMware VM {self.vm_name!r} was not reverted")
        return self._vm

    def _require_ops(self) -> GuestOps:
        if self._ops is None:
            raise ExecutorError(f"VMware VM {self.vm_name!r} was not started")
        return self._ops
