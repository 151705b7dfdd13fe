"""The two ways a KVM job gets a clean guest (the machine's ``revert``), each a
:class:`~vmchecker.executor.kvm_vm.KvmVM` that shares the guest-agent I/O.

- :class:`SnapshotVM` (``revert: snapshot``, the fast path): the persistent domain
  ``machine.vm`` holds an internal snapshot with RAM, loaded per job into the running
  QEMU; one job at a time per domain, paused between jobs. Its warm guest (:mod:`.warm`)
  is the domain itself, the snapshot loaded and the agent answering ahead of the job.
- :class:`OverlayVM` (``revert: overlay``): a transient copy of ``machine.vm``'s
  definition booted per job on a fresh qcow2 overlay of the read-only base image;
  stateless, as many at once as slots, the overlay of a failed job kept on request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import libvirt_qemu

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor.kvm_agent import Agent
from vmchecker.executor.kvm_guard import disk_path, serial_path
from vmchecker.executor.kvm_vm import NAME_RE, KvmVM, base_image, domain_type, state_dir
from vmchecker.executor.warm import WarmGuest
from vmchecker.fsutil import write_atomic

log = logging.getLogger(__name__)


class SnapshotVM(KvmVM):
    """The snapshot domain ``machine.vm``, held by this job from ``prepare_console`` to
    ``cleanup``: a lock file makes jobs of one domain take turns (taken before the
    job's kernel_messages commands start, so they see its console only). Each job loads
    the snapshot with the monitor's ``loadvm`` (0.1 s under TCG; libvirt 9's
    ``revertToSnapshot`` restarts QEMU and takes 2 s, so it is only the fallback for a
    domain that is not running); the domain is paused between jobs, so what a job leaves
    running burns no CPU. The guest clock is set per job (``copy_to``).

    Kept warm, the domain waits with the snapshot freshly loaded, running (an idle guest
    costs next to no CPU), parked: the copy-in of a job without files done (clock, guest
    folder, the course's programs, vmchecker-step's checks), so the job's copy-in is one
    ``tar`` in the slow guest; a token file beside the lock names the warm guest. Every use
    of the domain goes through the lock
    and either adopts that guest (the token matches its record: nothing touched the
    domain since) or reverts, which first removes the token: a warm guest is never used
    after any other job ran on the domain, whichever tester's or by hand."""

    def __init__(self, machine: Machine, name: str, conn: libvirt.virConnect):
        super().__init__(machine, name, conn)
        self._base: libvirt.virDomain | None = None   # the snapshot domain, once locked
        self._lock: int | None = None
        self.token = warm_token(machine)

    def prepare_console(self) -> None:
        """A link to the domain's serial log, made only once this job holds the domain:
        the shared log must show no other job's messages."""
        self.console.unlink(missing_ok=True)
        self._take_domain()
        if self._console_source is not None:
            self.console.symlink_to(self._console_source)

    def revert(self) -> None:
        if not NAME_RE.match(self.machine.snapshot):
            raise ExecutorError(f"bad snapshot name {self.machine.snapshot!r}")
        dom = self._take_domain()
        self.token.unlink(missing_ok=True)   # whatever was kept warm is gone now
        try:
            snap = dom.snapshotLookupByName(self.machine.snapshot)
        except libvirt.libvirtError:
            raise ExecutorError(f"domain {self.machine.vm!r} has no snapshot {self.machine.snapshot!r}:"
                                f" build it with kvm-resources/build-image.sh {self.machine.vm}") from None
        self._use(dom)
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

    def start(self) -> None:
        dom = self._domain()
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()

    def stop(self) -> None:
        self._pause()

    def identity(self) -> str | None:
        """The domain, its snapshot (by creation time: build-image.sh makes a new one) and
        the QEMU process that loaded it (its id changes when the domain restarts)."""
        dom = self._take_domain()
        try:
            snap = dom.snapshotLookupByName(self.machine.snapshot)
            created = ET.fromstring(snap.getXMLDesc(0)).findtext("creationTime")
            running = self._lookup(self.machine.vm).ID()   # a handle keeps the id of its lookup: a new one
            return f"{dom.UUIDString()}|{self.machine.snapshot}|{created}|{running}"
        except libvirt.libvirtError:
            return None   # the cold path says what is missing

    def park(self) -> None:
        """The copy-in of a job without files (the clock set, the guest folder laid out
        with the course's programs, vmchecker-step's checks passed), so the job's own
        copy-in only unpacks its files over it: one program where a cold one starts three."""
        self.copy_in_empty()
        write_atomic(self.token, self.name + "\n", 0o600)

    def detach(self) -> None:
        self._dom = None   # not paused: it waits running, as parked; the lock goes
        self.cleanup()

    def adopt(self, record: WarmGuest) -> bool:
        try:
            if self.token.read_text(encoding="utf-8").strip() != record.name:
                return False
        except FileNotFoundError:
            return False
        self.token.unlink()
        dom = self._take_domain()
        self._use(dom)
        self._parked = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING   # paused meanwhile: the clock lags
        self.start()
        return True

    def _release(self) -> None:
        try:
            self._pause()
        finally:
            if self._lock is not None:
                os.close(self._lock)   # releases the domain for the next job
                self._lock = None

    def _use(self, dom: libvirt.virDomain) -> None:
        """Make ``dom`` this job's guest, its serial log emptied (tail -F follows)."""
        self._dom, self._agent = dom, Agent(dom, self.machine.vm)
        if self._console_source is not None:
            try:
                os.truncate(self._console_source, 0)
            except OSError as exc:
                log.warning("%s: cannot empty the serial log %s: %s", self.name, self._console_source, exc.strerror)

    def _take_domain(self) -> libvirt.virDomain:
        """Lock the snapshot domain for this job (once; held until cleanup), check its
        type and find its serial log, from one reading of its definition."""
        if self._base is None:
            dom = self._lookup(self.machine.vm)
            self._lock_domain()
            root = ET.fromstring(dom.XMLDesc(0))
            self._check_type(root.get("type"))
            self._console_source, self._disk = serial_path(root), disk_path(root)
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


class OverlayVM(KvmVM):
    """A transient domain of this job's own, on ``jobs/NAME.qcow2`` (an overlay of the
    base image) with its serial console logged to ``jobs/NAME.console``."""

    def __init__(self, machine: Machine, name: str, conn: libvirt.virConnect):
        super().__init__(machine, name, conn)
        self.overlay = self._disk = self.jobs / f"{name}.qcow2"

    def prepare_console(self) -> None:
        self.console.unlink(missing_ok=True)
        self.console.touch()
        self._console_source = self.console

    def revert(self) -> None:
        self.overlay.unlink(missing_ok=True)
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                               "-b", str(base_image(self.machine)), str(self.overlay)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ExecutorError(f"creating the overlay {self.overlay} failed: {proc.stderr.strip()}")

    def start(self) -> None:
        xml = self._transient_xml()
        try:
            self._dom = self.conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise ExecutorError(f"starting guest {self.name} failed: {exc.get_error_message()}") from None
        self._agent = Agent(self._dom, self.name)

    def stop(self) -> None:
        self._destroy()

    def keep_for_inspection(self) -> Path | None:
        if not self.overlay.exists():
            return None
        self._destroy()
        self.kept = self.jobs / f"kept-{self.name}.qcow2"
        os.replace(self.overlay, self.kept)
        if self.console.exists():
            os.replace(self.console, self.jobs / f"kept-{self.name}.console")
        return self.kept

    def _release(self) -> None:
        self._destroy()
        if self.kept is None:
            self.overlay.unlink(missing_ok=True)

    def _destroy(self) -> None:
        """Destroy the transient domain if it runs (a domain already gone is fine); its
        overlay must not be removed while a failed destroy left it in use."""
        try:
            dom = self._dom or self.conn.lookupByName(self.name)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise ExecutorError(f"destroying guest {self.name} failed: {exc.get_error_message()}") from None
        self._dom = None

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


MODES: dict[str, type[KvmVM]] = {"snapshot": SnapshotVM, "overlay": OverlayVM}


def warm_token(machine: Machine) -> Path:
    """Beside the snapshot domain's lock: the name of the warm guest the domain is kept
    for, as long as nothing else used it."""
    return state_dir(machine) / "jobs" / f".{machine.vm}.warm"


def drop_warm_token(record: WarmGuest, machine: Machine) -> None:
    """Forget the warm snapshot domain of ``record`` (if it is still that one): the domain
    stays paused, as between two jobs, and the next job reverts it. Done without the
    domain's lock, which a job of another tester may hold: a token another warm-up wrote
    meanwhile is lost at worst, and that guest runs cold."""
    token = warm_token(machine)
    try:
        if token.read_text(encoding="utf-8").strip() == record.name:
            token.unlink()
    except FileNotFoundError:
        pass
