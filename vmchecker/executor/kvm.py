"""KVM backend: jobs run in libvirt/QEMU guests driven through the QEMU guest agent.

Two ways to give each job a clean guest (the machine's ``revert``), one class each in
:mod:`.kvm_modes`:

- ``snapshot`` (the fast path): the persistent domain ``machine.vm`` holds an internal
  snapshot with RAM (``machine.snapshot``, taken by kvm-resources/build-image.sh once its
  agent answered and its page cache was warm), loaded into the running QEMU per job. One
  job at a time per domain; the domain is paused between jobs.
- ``overlay``: each job boots a transient copy of ``machine.vm``'s definition on a fresh
  qcow2 overlay of the read-only ``base_image``: stateless, as many at once as slots.
  With ``keep_failed`` the overlay of a job that ended in ``error`` is kept.

Both share :class:`~vmchecker.executor.kvm_vm.KvmVM`: commands and files through the
guest agent (:mod:`.kvm_agent`), each step under the step wrapper ``guest/step.pl``
(cgroup limits, output caps, the kill at the timeout, the report of how it ended).
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterable
from pathlib import Path

import libvirt

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, guest
from vmchecker.executor.kvm_modes import MODES, drop_warm_token
from vmchecker.executor.kvm_vm import DEFAULT_STATE, URI, KvmVM, state_dir
from vmchecker.executor.warm import WarmGuest

log = logging.getLogger(__name__)

PREFIX = guest.GUEST_PREFIX


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
            try:
                conn.close()
            except libvirt.libvirtError as exc:
                log.debug("closing the libvirt connection: %s", exc.get_error_message())

    def get_vm(self, machine: Machine, job_id: str) -> KvmVM:
        if machine.channel == "ssh":
            raise ExecutorError(f"machine {machine.name!r}: channel: ssh is not implemented on this tester;"
                                " use channel: agent (qemu-guest-agent in the guest)")
        if machine.channel != "agent":
            raise ExecutorError(f"machine {machine.name!r}: unknown channel {machine.channel!r} (agent or ssh)")
        if machine.revert not in MODES:
            raise ExecutorError(f"machine {machine.name!r}: revert must be snapshot or overlay, not {machine.revert!r}")
        if machine.network:
            raise ExecutorError(f"machine {machine.name!r}: network: true is not supported by the KVM backend;"
                                " set network: false")
        self.state_dirs.add(state_dir(machine))
        (state_dir(machine) / "jobs").mkdir(parents=True, exist_ok=True)
        vm = MODES[machine.revert](machine, guest.guest_name(job_id), self.connection())
        try:
            vm.prepare_console()
        except BaseException:
            vm.cleanup()   # releases the domain lock it may hold
            raise
        return vm

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        """Destroy the transient guests of dead executors and remove the overlays and
        consoles they left in the state folder of every machine known here: the default
        one, those this process ran, and ``machines`` (the caller's: a queue manager's).
        The files of a guest that could not be destroyed stay (it may still use them)."""
        try:
            domains = [d.name() for d in self.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)]
        except (ExecutorError, libvirt.libvirtError) as exc:
            log.warning("cannot list libvirt domains to clean leftovers: %s", exc)
            domains = []
        removed = guest.remove_leftovers(domains, self._destroy_domain, "KVM guest")
        still_defined = set(domains) - set(removed)
        dirs = self.state_dirs | {state_dir(m) for m in machines if m.type == "kvm"}
        for jobs in sorted(d / "jobs" for d in dirs):
            stems = sorted({p.stem for p in jobs.glob(f"{PREFIX}*") if p.suffix in (".qcow2", ".console")}
                           - still_defined)

            def remove(stem: str, jobs: Path = jobs) -> None:   # with the console's rotated copies
                for path in (jobs / f"{stem}.qcow2", jobs / f"{stem}.console", *jobs.glob(f"{stem}.console.*")):
                    path.unlink(missing_ok=True)

            removed += [s for s in guest.remove_leftovers(stems, remove, f"files in {jobs} of guest")
                        if s not in removed]
        return removed

    def drop_warm(self, record: WarmGuest) -> None:
        machine = record.to_machine()
        if machine.revert == "snapshot":
            drop_warm_token(record, machine)

    def _destroy_domain(self, name: str) -> None:
        """Destroy the transient domain ``name``; one already gone counts as destroyed."""
        try:
            self.connection().lookupByName(name).destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise ExecutorError(f"destroying KVM guest {name} failed: {exc.get_error_message()}") from None


def create_host() -> KvmHost:
    return KvmHost()
