"""The two ways a VMware job gets a clean guest (the machine's ``revert``), each a
:class:`~vmchecker.executor.vmware_vm.VmwareVM` that shares the guest operations.

- :class:`SnapshotVM` (``revert: snapshot``): one VM of ``machine.vms`` (``[machine.vm]``
  when empty) per job, reverted to ``machine.snapshot`` (taken powered off, so the guest
  boots fresh with the RAM it is given). A lock file per VM in the state folder makes jobs
  take turns, whether they run in threads of one executor or in executors of their own:
  a job takes the first free VM, or waits for one. Give a machine as many VMs as the
  tester has slots.
- :class:`LinkedCloneVM` (``revert: linked-clone``, vCenter only): a linked clone of
  ``machine.vm``'s snapshot per job, named like every job guest
  (``vmck-<job>-<executor pid>-<random>``), destroyed after the job; stateless, as many at
  once as slots. With ``keep_failed`` the clone of a failed job stays, powered off. While
  a clone lives, a record in the state folder names it and its server, so a later
  executor destroys the clones of one that was killed (:func:`destroy_leftover`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pyVmomi import vim

from vmchecker import fsutil
from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import guest
from vmchecker.executor.vmware_api import Session
from vmchecker.executor.vmware_vm import VmwareVM

log = logging.getLogger(__name__)

DEFAULT_STATE = os.environ.get("VMCHECKER_VMWARE_STATE", "/var/lib/vmchecker/vmware")
WAIT_FIRST, WAIT_MAX = 0.05, 1.0     # seconds between two looks for a free VM


def find_snapshot(session: Session, vm: Any, vm_name: str, name: str) -> Any:
    """The snapshot ``name`` of ``vm`` (anywhere in its tree; exactly one)."""
    tree = session.call("reading the snapshots", vm_name, lambda: vm.snapshot)
    found: list[Any] = []

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.name == name:
                found.append(node.snapshot)
            walk(node.childSnapshotList)

    if tree is not None:
        walk(tree.rootSnapshotList)
    if len(found) != 1:
        raise ExecutorError(f"VMware VM {vm_name!r} has {len(found) or 'no'} snapshot(s) named {name!r}: it needs"
                            " exactly one, taken powered off (INSTALL, 'VMware testers')")
    return found[0]


class SnapshotVM(VmwareVM):
    """A VM of the machine's pool, held by this job from its creation to cleanup."""

    def __init__(self, machine: Machine, job_id: str, session: Session, state: Path):
        lock, name = _take_vm(state / "locks", session.url, machine.vms or [machine.vm], job_id)
        super().__init__(machine, name, session)
        self._lock: int | None = lock

    def revert(self) -> None:
        vm = self.session.find_vm(self.name)
        snapshot = find_snapshot(self.session, vm, self.name, self.machine.snapshot)
        self._vm = vm
        self._power_off(vm)   # a VM a killed executor left running
        self.session.wait("RevertToSnapshot_Task", self.name, snapshot.RevertToSnapshot_Task)
        self._power_off(vm)   # a snapshot taken powered on comes back running: boot it with our limits

    def _release(self, failed: bool) -> str | None:
        try:
            if self._vm is not None:
                self._power_off(self._vm)
        finally:
            if self._lock is not None:
                os.close(self._lock)   # the VM is free for the next job
                self._lock = None
        return None


class LinkedCloneVM(VmwareVM):
    """A linked clone of its own, made in ``revert`` and destroyed in cleanup."""

    def __init__(self, machine: Machine, job_id: str, session: Session, state: Path):
        super().__init__(machine, guest.guest_name(job_id), session)
        self.record = state / "clones" / f"{self.name}.json"

    def revert(self) -> None:
        base = self.session.find_vm(self.machine.vm)
        snapshot = find_snapshot(self.session, base, self.machine.vm, self.machine.snapshot)
        folder = self.session.call("reading the VM's folder", self.machine.vm, lambda: base.parent)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(self.record, json.dumps({"url": self.session.url, "user": self.session.user,
                                                     "credentials": self.session.credentials}), mode=0o600)
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking"),
                                snapshot=snapshot, powerOn=False, template=False)
        self._vm = self.session.wait("CloneVM_Task", self.machine.vm,
                                     lambda: base.CloneVM_Task(folder=folder, name=self.name, spec=spec))

    def _release(self, failed: bool) -> str | None:
        if not self.record.exists():
            return None   # never cloned, or released already
        if self._vm is None:   # the clone task may have gone on after this job gave up on it
            self._vm = _find(self.session, self.name)
        if self._vm is not None and failed and self.machine.keep_failed:
            self._power_off(self._vm)
            self.record.unlink()
            return (f"the failed job's linked clone is kept for inspection: VMware VM {self.name!r} on"
                    f" {self.session.url} (destroy it when done)")
        if self._vm is not None:
            _destroy(self.session, self._vm, self.name)
            self._vm = None
        self.record.unlink()
        return None


def destroy_leftover(record: Path, sessions: Any) -> None:
    """Destroy the clone a record names (if it still exists) and remove the record;
    ``sessions(url, user, credentials)`` gives a logged-in Session."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        session = sessions(data["url"], data["user"], data["credentials"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExecutorError(f"the record {record} of a VMware clone is unreadable: {exc}") from None
    vm = _find(session, record.stem)
    if vm is not None:
        _destroy(session, vm, record.stem)
    record.unlink(missing_ok=True)


def _find(session: Session, name: str) -> Any:
    return next((vm for vm, value in session.vm_names(name) if value == name), None)


def _destroy(session: Session, vm: Any, name: str) -> None:
    state = session.call("reading the power state", name, lambda: vm.runtime.powerState)
    if state != vim.VirtualMachinePowerState.poweredOff:
        session.wait("PowerOffVM_Task", name, vm.PowerOffVM_Task)
    session.wait("Destroy_Task", name, vm.Destroy_Task)


def _take_vm(locks: Path, url: str, names: list[str], job_id: str) -> tuple[int, str]:
    """Lock the first free VM of ``names`` on ``url``, waiting while all are busy;
    (the lock's descriptor, the VM's name). The lock goes with the descriptor, so an
    executor that dies frees its VM."""
    locks.mkdir(parents=True, exist_ok=True)
    paths = [(name, locks / f"{hashlib.sha256(f'{url} {name}'.encode()).hexdigest()[:24]}.lock") for name in names]
    pause, waited = WAIT_FIRST, False
    while True:
        for name, path in paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{name}\n".encode())   # which VM, for a sysadmin reading the folder
            return fd, name
        if not waited:
            log.info("job %s: every VM of %s is busy (revert: snapshot runs one job per VM); waiting",
                     job_id, ", ".join(names))
            waited = True
        time.sleep(pause)
        pause = min(pause * 2, WAIT_MAX)


MODES: dict[str, type[VmwareVM]] = {"snapshot": SnapshotVM, "linked-clone": LinkedCloneVM}
