"""The two ways a VMware job gets a clean guest (the machine's ``revert``), each a
:class:`~vmchecker.executor.vmware_vm.VmwareVM` that shares the guest operations.

- :class:`SnapshotVM` (``revert: snapshot``): one VM of ``machine.vms`` (``[machine.vm]``
  when empty) per job, reverted to ``machine.snapshot`` (taken powered off, so the guest
  boots fresh with the RAM it is given). A lock file per VM in the state folder makes jobs
  take turns, whether they run in threads of one executor or in executors of their own:
  a job takes the first free VM, or waits for one. Give a machine as many VMs as the
  tester has slots. Kept warm (:mod:`.warm`), a VM of the pool waits reverted, running
  and answering, with a token beside its lock naming its warm guest; every use of the
  VM holds the lock and either adopts that guest (the token matches its record) or
  reverts, which removes the token first. A job not on a warm guest takes a VM kept warm
  only when no other is free; a warm-up takes only a free VM that is not kept warm.
- :class:`LinkedCloneVM` (``revert: linked-clone``, vCenter only): a linked clone of
  ``machine.vm``'s snapshot per job, named like every job guest
  (``vmck-<job>-<executor pid>-<random>``), destroyed after the job; stateless, as many at
  once as slots. With ``keep_failed`` the clone of a failed job stays, powered off. While
  a clone lives, a record in the state folder names it and its server, so a later
  executor destroys the clones of one that was killed (:func:`destroy_leftover`). Kept
  warm, a clone is made and powered on ahead, named after the queue manager that keeps it.

A warm guest's identity (checked again when a job claims it) is each VM's reference and
instance UUID and its snapshot's reference and creation time: a snapshot taken again
makes every guest prepared before it useless.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyVmomi import vim

from vmchecker import fsutil
from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import guest
from vmchecker.executor.vmware_api import Session
from vmchecker.executor.vmware_vm import VmwareVM
from vmchecker.executor.warm import WarmGuest

log = logging.getLogger(__name__)

DEFAULT_STATE = os.environ.get("VMCHECKER_VMWARE_STATE", "/var/lib/vmchecker/vmware")
WAIT_FIRST, WAIT_MAX = 0.05, 1.0     # seconds between two looks for a free VM
WARM_UP = "warm"     # the job id Host.prepare_warm makes its guest under
ADOPT_WAIT = 60.0    # seconds a claimed warm VM may stay locked by the warm-up letting go of it
Sessions = Callable[[str, str, str], Session]   # (url, user, credentials) -> a logged-in Session


def find_snapshot(session: Session, vm: Any, vm_name: str, name: str) -> Any:
    """The snapshot ``name`` of ``vm`` (anywhere in its tree; exactly one)."""
    tree = session.call("reading the snapshots", vm_name, lambda: vm.snapshot)
    return _snapshot_node(tree, vm_name, name).snapshot


def pool_identity(session: Session, names: list[str], snapshot: str) -> str | None:
    """The identity of the VMs ``names`` and their snapshot ``snapshot`` (module
    docstring), in a few round trips whatever their number; None when one is missing
    (the cold path says what)."""
    what = "reading the VMs' snapshots"
    try:
        by_name: dict[str, list[Any]] = {}
        for vm, value in session.vm_names(what) if any("/" not in n for n in names) else []:
            by_name.setdefault(value, []).append(vm)
        found = [[session.find_vm(n)] if "/" in n else by_name.get(n, []) for n in names]   # a path: on its own
        if any(len(f) != 1 for f in found):
            return None
        vms = [f[0] for f in found]
        parts = []
        props_of = session.properties(vms, ["config.instanceUuid", "snapshot"], what)
        for name, vm, props in zip(names, vms, props_of, strict=True):
            node = _snapshot_node(props.get("snapshot"), name, snapshot)
            parts.append(f"{vm._moId}/{props.get('config.instanceUuid')}/{node.snapshot._moId}/"
                         f"{node.createTime.isoformat()}")
    except ExecutorError:
        return None
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _snapshot_node(tree: Any, vm_name: str, name: str) -> Any:
    """The node of the snapshot ``name`` in the snapshot info ``tree`` (exactly one)."""
    found: list[Any] = []

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.name == name:
                found.append(node)
            walk(node.childSnapshotList)

    if tree is not None:
        walk(tree.rootSnapshotList)
    if len(found) != 1:
        raise ExecutorError(f"VMware VM {vm_name!r} has {len(found) or 'no'} snapshot(s) named {name!r}: it needs"
                            " exactly one, taken powered off (INSTALL, 'VMware testers')")
    return found[0]


class SnapshotVM(VmwareVM):
    """A VM of the machine's pool, held by this job from the moment it needs one (its
    claim of a warm guest, its revert, or its name) to cleanup. A warm-up's guest is named
    after its queue manager (``name``) and is the VM ``vm_name``."""

    def __init__(self, machine: Machine, job_id: str, session: Session, state: Path):
        self._warm_up = job_id == WARM_UP
        self._job_id = job_id
        self._held: tuple[int, str] | None = None   # the lock's descriptor, the VM
        self.locks = state / "locks"
        self.pool = machine.vms or [machine.vm]
        super().__init__(machine, guest.guest_name(job_id) if self._warm_up else "", session)

    @property
    def name(self) -> str:
        return self._guest_name if self._warm_up else self.vm_name

    @name.setter
    def name(self, value: str) -> None:
        self._guest_name = value

    @property
    def vm_name(self) -> str:
        """The VM this job holds: the first free one, waited for, if it holds none yet."""
        if self._held is None:
            self._held = _take_vm(self.locks, self.session.url, self.pool, self._job_id)
        assert self._held is not None   # a job waits until one is free
        return self._held[1]

    def revert(self) -> None:
        name = self.vm_name
        _token(self.locks, self.session.url, name).unlink(missing_ok=True)   # whatever was kept warm is gone
        vm = self.session.find_vm(name)
        snapshot = find_snapshot(self.session, vm, name, self.machine.snapshot)
        self._vm = vm
        self._power_off(vm)   # a VM a killed executor left running
        self.session.wait("RevertToSnapshot_Task", name, snapshot.RevertToSnapshot_Task)
        self._power_off(vm)   # a snapshot taken powered on comes back running: boot it with our limits

    def identity(self) -> str | None:
        """The pool's identity; a warm-up first takes a free VM that is not kept warm
        (none: no warm guest now, the pool is busy or warm already)."""
        if self._warm_up and self._held is None:
            self._held = _take_vm(self.locks, self.session.url, self.pool, self._job_id, warm_up=True)
            if self._held is None:
                return None
        return pool_identity(self.session, self.pool, self.machine.snapshot)

    def park(self) -> None:
        fsutil.write_atomic(_token(self.locks, self.session.url, self.vm_name),
                            json.dumps({"name": self.name, "vm": self.vm_name, **_server(self.session)}), 0o600)

    def detach(self) -> None:
        self._vm = None   # running, as parked
        self._unlock()

    def adopt(self, record: WarmGuest) -> bool:
        """Take the VM whose token names ``record``, once its warm-up let go of its lock
        (the token gone meanwhile: a job reverted it, it is no warm guest any more)."""
        url = self.session.url
        name = next((n for n in self.pool if _token_names(_token(self.locks, url, n), record.name)), None)
        if name is None:
            return False
        token, deadline = _token(self.locks, url, name), time.monotonic() + ADOPT_WAIT
        while (fd := _try_lock(_lock_path(self.locks, url, name))) is None:
            if not _token_names(token, record.name) or time.monotonic() > deadline:
                return False
            time.sleep(WAIT_FIRST)
        try:
            vm = self.session.find_vm(name) if _token_names(token, record.name) else None
            if vm is None or _power_state(self.session, vm, name) != vim.VirtualMachinePowerState.poweredOn:
                return False
            token.unlink()
            self._held, self._vm, fd = (fd, name), vm, None
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def _release(self, failed: bool) -> str | None:
        try:
            if self._vm is not None:
                self._power_off(self._vm)
        finally:
            if self._held is not None:   # a VM this job used is not warm, whatever it held
                _token(self.locks, self.session.url, self._held[1]).unlink(missing_ok=True)
            self._unlock()
        return None

    def _unlock(self) -> None:
        if self._held is not None:
            os.close(self._held[0])   # the VM is free for the next job
            self._held = None


class LinkedCloneVM(VmwareVM):
    """A linked clone of its own, made in ``revert`` (or ahead, warm) and destroyed in cleanup."""

    def __init__(self, machine: Machine, job_id: str, session: Session, state: Path):
        super().__init__(machine, guest.guest_name(job_id), session)
        self.record = state / "clones" / f"{self.name}.json"

    def revert(self) -> None:
        base = self.session.find_vm(self.machine.vm)
        snapshot = find_snapshot(self.session, base, self.machine.vm, self.machine.snapshot)
        folder = self.session.call("reading the VM's folder", self.machine.vm, lambda: base.parent)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(self.record, json.dumps(_server(self.session)), mode=0o600)
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking"),
                                snapshot=snapshot, powerOn=False, template=False)
        self._vm = self.session.wait("CloneVM_Task", self.machine.vm,
                                     lambda: base.CloneVM_Task(folder=folder, name=self.name, spec=spec))

    def identity(self) -> str | None:
        return pool_identity(self.session, [self.machine.vm], self.machine.snapshot)

    def detach(self) -> None:
        self._vm = None   # running; its record stays, naming it for the queue manager's clean-up

    def adopt(self, record: WarmGuest) -> bool:
        path = self.record.with_name(f"{record.name}.json")
        vm = _find(self.session, record.name) if path.exists() else None
        if vm is None or _power_state(self.session, vm, record.name) != vim.VirtualMachinePowerState.poweredOn:
            return False
        self.name, self.record, self._vm = record.name, path, vm
        return True

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


def destroy_leftover(record: Path, sessions: Sessions) -> None:
    """Destroy the clone a record names (if it still exists) and remove the record;
    ``sessions(url, user, credentials)`` gives a logged-in Session."""
    session = sessions(*_read_server(record, "the record of a VMware clone"))
    vm = _find(session, record.stem)
    if vm is not None:
        _destroy(session, vm, record.stem)
    record.unlink(missing_ok=True)


def warm_tokens(locks: Path) -> dict[str, Path]:
    """The VMs kept warm on this tester: the token of each, by the warm guest it names."""
    tokens = {}
    for path in sorted(locks.glob("*.warm")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            tokens[str(json.loads(path.read_text(encoding="utf-8"))["name"])] = path
    return tokens


def drop_warm_vm(token: Path, guest_name: str, sessions: Sessions) -> None:
    """Stop keeping the VM of ``token`` warm for ``guest_name``: powered off and its token
    removed, under its lock. A VM a job holds now is left to it (that job reverts it):
    only the token goes."""
    fd = _try_lock(token.with_suffix(".lock"))
    try:
        if not _token_names(token, guest_name):
            return   # gone already, or kept for another guest since
        if fd is not None:
            data = json.loads(token.read_text(encoding="utf-8"))
            session = sessions(*_read_server(token, "a VMware warm token"))
            vm = session.find_vm(str(data["vm"]))
            if _power_state(session, vm, data["vm"]) != vim.VirtualMachinePowerState.poweredOff:
                session.wait("PowerOffVM_Task", data["vm"], vm.PowerOffVM_Task)
        token.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


def _server(session: Session) -> dict[str, str]:
    return {"url": session.url, "user": session.user, "credentials": session.credentials}


def _read_server(path: Path, what: str) -> tuple[str, str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["url"]), str(data["user"]), str(data["credentials"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExecutorError(f"{what} {path} is unreadable: {exc}") from None


def _find(session: Session, name: str) -> Any:
    return next((vm for vm, value in session.vm_names(name) if value == name), None)


def _power_state(session: Session, vm: Any, name: str) -> Any:
    return session.call("reading the power state", name, lambda: vm.runtime.powerState)


def _destroy(session: Session, vm: Any, name: str) -> None:
    if _power_state(session, vm, name) != vim.VirtualMachinePowerState.poweredOff:
        session.wait("PowerOffVM_Task", name, vm.PowerOffVM_Task)
    session.wait("Destroy_Task", name, vm.Destroy_Task)


def _lock_path(locks: Path, url: str, name: str) -> Path:
    return locks / f"{hashlib.sha256(f'{url} {name}'.encode()).hexdigest()[:24]}.lock"


def _token(locks: Path, url: str, name: str) -> Path:
    """Beside the VM's lock: the warm guest the VM is kept for, as long as no job used it."""
    return _lock_path(locks, url, name).with_suffix(".warm")


def _token_names(token: Path, guest_name: str) -> bool:
    try:
        return json.loads(token.read_text(encoding="utf-8")).get("name") == guest_name
    except (OSError, ValueError, AttributeError):
        return False


def _try_lock(path: Path) -> int | None:
    """The descriptor of ``path`` locked by us, or None while another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _take_vm(locks: Path, url: str, names: list[str], job_id: str, warm_up: bool = False) -> tuple[int, str] | None:
    """Lock the first free VM of ``names`` on ``url``, one kept warm last, waiting while
    all are busy; (the lock's descriptor, the VM's name). The lock goes with the
    descriptor, so an executor that dies frees its VM. A ``warm_up`` takes only a VM not
    kept warm, and waits for none (None)."""
    locks.mkdir(parents=True, exist_ok=True)
    pause, waited = WAIT_FIRST, False
    while True:
        for name in sorted(names, key=lambda n: _token(locks, url, n).exists()):
            fd = _try_lock(_lock_path(locks, url, name))
            if fd is None:
                continue
            if warm_up and _token(locks, url, name).exists():
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{name}\n".encode())   # which VM, for a sysadmin reading the folder
            return fd, name
        if warm_up:
            return None
        if not waited:
            log.info("job %s: every VM of %s is busy (revert: snapshot runs one job per VM); waiting",
                     job_id, ", ".join(names))
            waited = True
        time.sleep(pause)
        pause = min(pause * 2, WAIT_MAX)


MODES: dict[str, type[VmwareVM]] = {"snapshot": SnapshotVM, "linked-clone": LinkedCloneVM}
