"""Warm guests: guests made ready (reverted, started, answering) before a job comes, so
revert and start leave the job's critical path (docs/ARCHITECTURE.md, "Warm guests").

A tester's queue manager keeps up to ``tester.warm_guests`` of them per machine it ran
recently (:mod:`vmchecker.tester.warmer`); each is made by a warm-up executor
(``vmchecker-vm-executor --warm``) through :meth:`~vmchecker.executor.base.Host.prepare_warm`
and described by a record (:class:`WarmGuest`) in the tester's pool folder
``state/warm/`` (:class:`WarmPool`). The rules that keep a warm guest as clean as a cold one:

- **Used once.** A job's executor claims a record by renaming it from ``ready/`` into
  ``claimed/`` (:meth:`WarmPool.claim`): of two executors exactly one wins, and a record
  once claimed is never ready again. The job's clean-up destroys the guest like a cold one.
- **Never across a change of the base.** A record holds the base's identity when the guest
  was prepared (:meth:`~vmchecker.executor.base.VM.identity`: the LXC base's config,
  rootfs and recipe stamp; the KVM snapshot domain, its snapshot and QEMU process; the
  Docker image's id; the VMware VMs and their snapshot). At the
  claim it is read again; a record that differs (or whose guest is gone) is destroyed and
  the job runs cold.
- **Never left behind.** A warm guest is named after the queue manager that keeps it
  (:func:`~vmchecker.executor.guest.name_guests_for`), so once that process is gone the
  backends' ``cleanup_leftovers`` remove it like the guest of a dead executor; the queue
  manager destroys its records' guests when it stops, and those a killed one left when it
  starts again.

Which machines can be kept warm is decided here (:func:`capacity`), by type and mode
only, so the queue manager need not load a backend to know.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmchecker import fsutil
from vmchecker.config import Machine, machine_to_dict, parse_machine
from vmchecker.errors import ConfigError
from vmchecker.executor.hostcmds import pid_alive

log = logging.getLogger(__name__)

READY, CLAIMED = "ready", "claimed"
UNLIMITED = 1 << 30


def fingerprint(machine: Machine) -> str:
    """What a warm guest was prepared for: the machine as the job's executor sees it (the
    bundle's, with the tester's overrides); ``testers`` is the storer's business."""
    data = {k: v for k, v in machine_to_dict(machine).items() if k != "testers"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def capacity(machine: Machine) -> int:
    """How many warm guests ``machine`` can have at once: 0 where its backend keeps none
    (KVM overlay, a machine whose kernel_messages must watch the boot), 1 for a KVM
    snapshot domain (one guest, the domain itself), one per VM of a VMware snapshot pool
    (each VM is a guest), otherwise (LXC, Docker, VMware linked clones) no limit of its own."""
    if machine.kernel_messages:
        return 0
    if machine.type in ("lxc", "docker") or (machine.type == "vmware" and machine.revert == "linked-clone"):
        return UNLIMITED
    if machine.type == "kvm" and machine.revert == "snapshot":
        return 1
    if machine.type == "vmware" and machine.revert == "snapshot":
        return len(machine.vms or [machine.vm])
    return 0


def pool_key(machine: Machine) -> str:
    """What warm guests of ``machine`` are counted against :func:`capacity` by: the one
    domain of a KVM snapshot machine, the VMs of a VMware snapshot pool (machines on one
    domain or pool share its guests), otherwise the machine's :func:`fingerprint`."""
    if machine.type == "kvm" and machine.revert == "snapshot":
        return f"kvm-domain:{machine.base_image}:{machine.vm}"
    if machine.type == "vmware" and machine.revert == "snapshot":
        return f"vmware-vms:{machine.vmware_url}:{','.join(sorted(machine.vms or [machine.vm]))}"
    return fingerprint(machine)


@dataclass(frozen=True)
class WarmGuest:
    """A ready guest, as its record says: its name, the machine it was prepared for, the
    base's identity then, the queue manager that keeps it and when it was ready."""

    name: str
    machine: dict[str, Any]
    identity: str
    owner: int
    prepared_at: float

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_machine())

    @property
    def key(self) -> str:
        return pool_key(self.to_machine())

    def to_machine(self) -> Machine:
        return parse_machine(self.machine, "warm guest record")

    @classmethod
    def load(cls, path: Path) -> WarmGuest | None:
        """The record in ``path``; None if it is gone or not a record (logged)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            record = cls(name=str(data["name"]), machine=dict(data["machine"]), identity=str(data["identity"]),
                         owner=int(data["owner"]), prepared_at=float(data["prepared_at"]))
            record.to_machine()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("ignoring %s: not a warm guest record (%s)", path, exc)
            return None
        return record


class WarmPool:
    """The tester's warm guests: one JSON record each, ``ready/NAME.json`` until a job
    claims it, then ``claimed/NAME.PID.json`` (PID: the claiming executor) until that job
    destroyed the guest. Only root reads the folder (0700)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.ready_dir = self.folder / READY
        self.claimed_dir = self.folder / CLAIMED

    def ensure(self) -> WarmPool:
        for d in (self.folder, self.ready_dir, self.claimed_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    def publish(self, record: WarmGuest) -> Path:
        """Offer a ready guest to the next job."""
        self.ensure()
        return fsutil.write_atomic(self.ready_dir / f"{record.name}.json", json.dumps(asdict(record)) + "\n", 0o600)

    def ready(self) -> list[WarmGuest]:
        """The records ready now, oldest first."""
        found = [r for p in _listing(self.ready_dir, ".json") if (r := WarmGuest.load(p)) is not None]
        return sorted(found, key=lambda r: r.prepared_at)

    def claim(self, fingerprint: str) -> WarmGuest | None:
        """Take the oldest ready record of a guest prepared for ``fingerprint`` for this
        process, atomically: the record moves to ``claimed/`` and no other claim can get it."""
        for record in self.ready():
            if record.fingerprint == fingerprint and self.take(record):
                return record
        return None

    def take(self, record: WarmGuest, pid: int | None = None) -> bool:
        """Move ``record`` from ready to claimed by ``pid`` (this process); False if
        another claim took it first (or it is gone)."""
        self.ensure()
        try:
            os.rename(self.ready_dir / f"{record.name}.json", self._claimed_path(record, pid))
        except FileNotFoundError:
            return False
        return True

    def release(self, record: WarmGuest, pid: int | None = None) -> None:
        """Forget a claimed record once its guest is destroyed."""
        with contextlib.suppress(FileNotFoundError):
            self._claimed_path(record, pid).unlink()

    def claimed(self) -> list[tuple[WarmGuest, int]]:
        """Claimed records and the pid of each one's claimer."""
        found = []
        for path in _listing(self.claimed_dir, ".json"):
            pid = path.name[: -len(".json")].rpartition(".")[2]
            record = WarmGuest.load(path)
            if record is not None and pid.isdigit():
                found.append((record, int(pid)))
        return found

    def orphans(self, owner: int | None = None) -> list[tuple[WarmGuest, int]]:
        """Records no live process answers for: ready ones whose queue manager is gone
        (or, with ``owner``, is not ``owner``), claimed ones whose executor is gone; each
        with the pid it is claimed by (0: not claimed)."""
        ready = [(r, 0) for r in self.ready() if (r.owner != owner if owner else not pid_alive(r.owner))]
        return ready + [(r, pid) for r, pid in self.claimed() if not pid_alive(pid)]

    def _claimed_path(self, record: WarmGuest, pid: int | None) -> Path:
        return self.claimed_dir / f"{record.name}.{pid or os.getpid()}.json"


def new_record(name: str, machine: Machine, identity: str, owner: int) -> WarmGuest:
    return WarmGuest(name=name, machine=machine_to_dict(machine), identity=identity, owner=owner,
                     prepared_at=time.time())


def _listing(folder: Path, suffix: str) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
