"""LXC backend: each job runs in an ephemeral overlay clone of the machine's base container.

Revert is free (the clone's writes go to an overlay upper folder, on a tmpfs of the
job's disk quota, that cleanup unmounts; the base never changes), commands run through
the binding's attach (no guest network or SSH), files are written and read from the host
through the clone's root (:mod:`.lxc_files`; only the contract's check, ``vmchecker-step
prepare``, runs in the guest). Limits (memory, pids, CPU) are cgroup items set on the clone before it starts
(:mod:`.cgroups`); its capabilities, mounts and disk quota are :mod:`.lxc_clone`'s. A step that
outlives its timeout, and whatever a step leaves running, is killed through the clone's
cgroup; the pipes of an attached process are read by :mod:`.lxc_process`.

Clones are named ``vmck-<job>-<owner pid>-<random>``, so :meth:`LxcHost.cleanup_leftovers`
can destroy those whose executor died without touching a running job's clone (a warm
clone, :mod:`.warm`, is one started ahead of its job and adopted by it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import lxc  # the LXC binding (absolute: this module is vmchecker.executor.lxc)

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest, interrupts, lxc_files, payload, results
from vmchecker.executor.cgroups import GuestCgroup
from vmchecker.executor.lxc_clone import base_identity, config_items, destroy, mount_disk
from vmchecker.executor.lxc_process import Buffer, pump, step_result
from vmchecker.executor.warm import WarmGuest

log = logging.getLogger(__name__)

PREFIX = guest.GUEST_PREFIX


# --------------------------------------------------------------------------- VM, Host


class LxcVM(base.VM):
    """One job's overlay clone of the base container ``machine.vm``."""

    def __init__(self, machine: Machine, name: str, lxcpath: str):
        super().__init__(machine, name)
        self.lxcpath = lxcpath
        self._c: lxc.Container | None = None
        self._cgroup: GuestCgroup | None = None
        self._user = (0, 0, "/root")
        self._children: set[int] = set()   # attached processes not reaped yet
        self._root_fd: int | None = None      # the guest's root folder, for the copies
        self._parked = False                  # a warm guest's copy-in of a job without files is done

    # -- primitives

    def revert(self) -> None:
        parent = lxc.Container(self.machine.vm, self.lxcpath)
        if not parent.defined:
            raise ExecutorError(f"LXC base container {self.machine.vm!r} does not exist in {self.lxcpath}:"
                                f" build it with lxc-resources/build-base.sh {self.machine.vm}")
        if parent.running:
            raise ExecutorError(f"LXC base container {self.machine.vm!r} is running; jobs run in clones of"
                                f" a stopped base: lxc-stop -n {self.machine.vm}")
        self._user = _guest_user(parent, self.machine.guest_user)
        clone = parent.clone(self.name, flags=lxc.LXC_CLONE_SNAPSHOT, bdevtype="overlayfs")
        if not clone:
            raise ExecutorError(f"cloning LXC container {self.machine.vm!r} into {self.name!r} failed")
        self._c = clone
        mount_disk(clone, self.machine.limits.disk_mb)
        for key, value in config_items(clone, self.machine):
            if not clone.set_config_item(key, value):
                raise ExecutorError(f"LXC rejected {key} = {value} for {self.name}")

    def start(self) -> None:
        # close_fds: the monitor LXC forks must not keep other jobs' pipes open.
        if not self._container().start(close_fds=True):
            raise ExecutorError(f"LXC container {self.name} did not start (base {self.machine.vm!r})")

    def wait_ready(self, timeout: float) -> None:
        c = self._container()
        if not c.wait("RUNNING", timeout) or c.init_pid <= 0:
            raise ExecutorError(f"LXC container {self.name} was not running after {timeout} s")
        self._cgroup = GuestCgroup(c.init_pid)
        self._close_root()
        self._root_fd = lxc_files.open_root(c.init_pid, self.name)

    def copy_to(self, load: payload.Payload, guest_dir: str) -> None:
        try:
            lxc_files.copy_in(self._root(), guest_dir, load)
        except OSError as exc:
            raise ExecutorError(f"copying the job's files into {guest_dir} in {self.name} failed: {exc}") from None
        if self._parked:   # vmchecker-step's checks passed when it was parked, and nothing ran since
            self._parked = False
            return
        step = f"{guest_dir}/{payload.COURSE}/bin/{payload.STEP_PROGRAM}"
        status, timed_out, errors = self._root_command(["/bin/sh", step, "prepare"], Buffer(64 * 1024))
        if timed_out or status != 0:
            raise ExecutorError(f"preparing {guest_dir} in {self.name} failed: {errors or f'wait status {status}'}")

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        try:
            lxc_files.copy_out(self._root(), guest_dir, dest, cap + 1, results.MAX_GUEST_VMRS)
        except OSError as exc:
            raise ExecutorError(f"copying results out of {guest_dir} in {self.name} failed: {exc}") from None

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        uid, gid, home = self._user
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.monotonic()
        try:
            pid = self._attach(argv, cwd, uid, gid, home, out_w, err_w)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            status, rusage, timed_out = pump(pid, {out_r: stdout, err_r: stderr}, timeout, self._kill_guest_processes)
        finally:
            self._children.discard(pid)
        return step_result(status, rusage, timed_out, time.monotonic() - started)

    def stop(self) -> None:
        c = self._container()
        if c.running and not c.stop():
            raise ExecutorError(f"LXC container {self.name} did not stop")

    def identity(self) -> str | None:
        parent = lxc.Container(self.machine.vm, self.lxcpath)
        return base_identity(parent) if parent.defined else None

    def park(self) -> None:
        """The copy-in of a job without files (the guest folder laid out with the course's
        programs, vmchecker-step's checks passed), so the job's own copy-in only writes
        its files and starts nothing in the guest."""
        self.copy_in_empty()

    def adopt(self, record: WarmGuest) -> bool:
        c = lxc.Container(record.name, self.lxcpath)
        if not (c.defined and c.running):
            return False
        self._user = _guest_user(lxc.Container(self.machine.vm, self.lxcpath), self.machine.guest_user)
        self.name, self._c = record.name, c
        self._parked = True
        return True

    def cleanup(self, failed: bool = False) -> str | None:
        self._reap_children()
        self._close_root()
        c = self._c if self._c is not None else lxc.Container(self.name, self.lxcpath)
        destroy(c)
        self._c = None
        return None

    # -- helpers

    def _container(self) -> lxc.Container:
        if self._c is None:
            raise ExecutorError(f"LXC container {self.name} was not created")
        return self._c

    def _root(self) -> int:
        if self._root_fd is None:
            raise ExecutorError(f"LXC container {self.name} was not started")
        return self._root_fd

    def _close_root(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def _kill_guest_processes(self) -> None:
        if self._cgroup is not None:
            self._cgroup.kill_all()

    def _attach(self, argv: list[str], cwd: str, uid: int, gid: int, home: str,
                stdout: int, stderr: int) -> int:
        """Start ``argv`` in the guest; the pid (our child) is recorded until reaped,
        because the guest's init cannot exit while its zombie waits for us."""
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            with interrupts.uninterruptible():
                pid = self._container().attach(
                    _run_with_default_signals, argv, initial_cwd=cwd, uid=uid, gid=gid,
                    env_policy=lxc.LXC_ATTACH_CLEAR_ENV,
                    extra_env_vars=[f"PATH={guest.GUEST_PATH}", f"HOME={home}", "LANG=C.UTF-8", "TERM=dumb"],
                    stdin=null, stdout=stdout, stderr=stderr)
                if isinstance(pid, int) and pid > 0:
                    self._children.add(pid)
        finally:
            os.close(null)
        if not isinstance(pid, int) or pid <= 0:
            raise ExecutorError(f"attaching to LXC container {self.name} failed")
        return pid

    def _reap_children(self) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._children.discard(pid)

    def _root_command(self, argv: list[str], stdout: Buffer) -> tuple[int, bool, str]:
        """Run a command of ours as root in the guest under COPY_TIMEOUT. Returns (wait
        status, timed out, stderr)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        errors = Buffer(64 * 1024)
        try:
            pid = self._attach(argv, "/", 0, 0, "/root", out_w, err_w)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            status, _rusage, timed_out = pump(pid, {out_r: stdout, err_r: errors}, guest.COPY_TIMEOUT,
                                               self._kill_guest_processes)
        finally:
            self._children.discard(pid)
        return status, timed_out, errors.text()


def _run_with_default_signals(argv: list[str]) -> int:
    """In the attached child, before the exec: SIGPIPE and SIGXFSZ back to their
    defaults. Python ignores both and an attached process inherits that, so without this
    ``prog | head`` in a guest floods until the time limit instead of ending on SIGPIPE
    (and no shell can undo a signal ignored when it started)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    return lxc.attach_run_command(argv)


def _guest_user(parent: lxc.Container, user: str) -> tuple[int, int, str]:
    """(uid, gid, home) of ``user`` from the base's /etc/passwd (read on the host: the
    base is ours and stopped, so this needs no process in a guest)."""
    if user in ("", "root"):
        return 0, 0, "/root"
    passwd = Path(parent.get_config_item("lxc.rootfs.path").split(":", 1)[-1], "etc/passwd")
    try:
        entry = guest.passwd_entry(passwd.read_text(encoding="utf-8"), user)
    except OSError as exc:
        raise ExecutorError(f"cannot read {passwd} of LXC base container {parent.name!r}: {exc.strerror}") from None
    if entry is None:
        raise ExecutorError(f"guest_user {user!r} does not exist in LXC base container {parent.name!r}")
    return entry


class LxcHost(base.Host):
    backend = "lxc"

    def __init__(self, lxcpath: str | None = None):
        self.lxcpath = lxcpath or lxc.default_config_path

    def get_vm(self, machine: Machine, job_id: str) -> LxcVM:
        if machine.network:
            raise ExecutorError(f"machine {machine.name!r}: network: true is not supported by the LXC backend"
                                " yet; set network: false")
        return LxcVM(machine, guest.guest_name(job_id), self.lxcpath)

    def clones(self) -> list[str]:
        """The names of every job clone in this LXC path."""
        return [n for n in lxc.list_containers(config_path=self.lxcpath) if n.startswith(PREFIX)]

    def destroy_clone(self, name: str) -> None:
        """Stop and destroy the job clone ``name`` (whoever made it)."""
        if not name.startswith(PREFIX):
            raise ExecutorError(f"refusing to destroy {name!r}: not a job clone ({PREFIX}*)")
        destroy(lxc.Container(name, self.lxcpath))

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        return guest.remove_leftovers(self.clones(), self.destroy_clone, "LXC clone")

    def drop_warm(self, record: WarmGuest) -> None:
        self.destroy_clone(record.name)


def create_host() -> LxcHost:
    return LxcHost()
