"""VMware backend: jobs run in vSphere VMs (ESXi or vCenter) driven through pyvmomi and
the guest operations of VMware Tools; the guest needs no network.

Two ways to give each job a clean guest (the machine's ``revert``), one class each in
:mod:`.vmware_modes`: ``snapshot`` reverts one VM of the machine's pool per job (one job
per VM at a time), ``linked-clone`` makes a linked clone of the snapshot per job and
destroys it after. Both share :class:`~vmchecker.executor.vmware_vm.VmwareVM`: the
limits set on the VM before power-on, commands and files through the guest operations
(:mod:`.vmware_guest`), each command under the in-guest wrapper ``guest/vmware-step.pl``.

The password of the vSphere account is read on the tester from the machine's
``vmware_credentials`` file (:mod:`.vmware_api`); one session per server and account
serves every job of this process. A server that is down, a wrong password and every
vSphere fault end the job in an ExecutorError that names the server or the VM and the
call, and the storer sends the job elsewhere as after any failure.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest
from vmchecker.executor.vmware_api import Session, read_credentials
from vmchecker.executor.vmware_modes import DEFAULT_STATE, MODES, destroy_leftover, drop_warm_vm, warm_tokens
from vmchecker.executor.vmware_vm import VmwareVM
from vmchecker.executor.warm import WarmGuest

log = logging.getLogger(__name__)


class VmwareHost(base.Host):
    backend = "vmware"

    def __init__(self, state: Path | str = DEFAULT_STATE):
        self.state = Path(state)
        self._sessions: dict[tuple[str, str, str], Session] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)

    def session(self, url: str, user: str, credentials: str) -> Session:
        """The session of this process for (server, account, credentials file), made
        once; the credentials file is checked on every call (a job refuses a file that
        became readable by others)."""
        if not url:
            raise ExecutorError("the machine has no vmware_url (such as https://vcenter.example.org/sdk)")
        read_credentials(credentials, url)
        key = (url, user, credentials)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = Session(url, user, credentials)
            return self._sessions[key]

    def close(self) -> None:
        """Log out of every server (a later call logs in again)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()

    def get_vm(self, machine: Machine, job_id: str) -> VmwareVM:
        if machine.revert not in MODES:
            raise ExecutorError(f"machine {machine.name!r}: revert must be snapshot or linked-clone,"
                                f" not {machine.revert!r}")
        session = self.session(machine.vmware_url, machine.vmware_user, machine.vmware_credentials)
        session.connect()   # now: a server that is down fails the job before any VM is taken
        return MODES[machine.revert](machine, job_id, session, self.state)

    def clone_records(self) -> list[Path]:
        """The records of the linked clones made on this tester that still exist."""
        return sorted((self.state / "clones").glob(f"{guest.GUEST_PREFIX}*.json"))

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        """Destroy the linked clones whose executor (or, warm, queue manager) died, named
        by their records in the state folder: clones of other testers on the same vCenter
        are not ours. A VM of ``revert: snapshot`` needs nothing after a job (an
        executor's lock dies with it, and the next job powers off and reverts the VM it
        takes); one a dead queue manager kept warm is powered off and its token removed."""
        records = {r.stem: r for r in self.clone_records()}
        removed = guest.remove_leftovers(sorted(records), lambda name: destroy_leftover(records[name], self.session),
                                         "VMware linked clone")
        tokens = warm_tokens(self.state / "locks")
        return removed + guest.remove_leftovers(sorted(tokens), lambda name: drop_warm_vm(tokens[name], name,
                                                                                         self.session),
                                                "VMware VM kept warm as")

    def drop_warm(self, record: WarmGuest) -> None:
        """A linked clone is destroyed; a VM of a snapshot pool is powered off and no
        longer kept warm (left to a job that holds it now)."""
        if record.to_machine().revert == "linked-clone":
            clone = self.state / "clones" / f"{record.name}.json"
            if clone.exists():
                destroy_leftover(clone, self.session)
        elif (token := warm_tokens(self.state / "locks").get(record.name)) is not None:
            drop_warm_vm(token, record.name, self.session)


def create_host() -> VmwareHost:
    return VmwareHost()
