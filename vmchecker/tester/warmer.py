"""The queue manager's warm guests: while a slot is idle, the next guest of each machine
this tester ran lately is made ready in the background (vmchecker/executor/warm.py), so
the next job of that machine skips revert and start.

- **Which machines**: those of the last ``slots`` different machines whose jobs ran here
  (the bundle's machine with the tester's overrides); one that drops out of that list
  loses its warm guests.
- **How many**: per machine up to ``tester.warm_guests`` (default: ``slots``; 0: none), no
  more than its backend can keep (:func:`~vmchecker.executor.warm.capacity`: one for a KVM
  snapshot domain, shared by the machines on it; one per VM of a VMware snapshot pool).
- **When**: only while no bundle waits, and no more warm-ups at once than idle slots;
  while a job runs, no more than one guest per machine ready or in the making (a warm-up
  competes with the job for the CPU), the rest once the tester is idle; each
  is a warm-up executor (``vmchecker-vm-executor --warm``) in its own process group, never
  counted in any job's time. A job never waits for a warm-up: it takes a guest that is
  ready or runs cold at once. A KVM snapshot machine and a VM of a VMware snapshot pool
  are the exceptions by nature (each is a single guest): a job waits for its lock while a
  warm-up holds it, no longer than the revert it would have done itself, and then takes
  that guest.
- **Failure**: a warm-up that fails (or finds that its machine keeps none) is not tried
  again for that machine until its next job.
- **Stop and crash**: stopping ends the warm-ups (SIGTERM: each removes its half-made
  guest) and destroys every ready guest; a start destroys what a killed queue manager
  left (records, and warm-up processes still running).

The machines warmed are written to ``state/warm/machines/<fingerprint>.json``: the
warm-up reads its machine there, and a starting queue manager learns from them which
backends may hold leftovers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from vmchecker import fsutil
from vmchecker.config import Machine, machine_to_dict, parse_machine
from vmchecker.errors import VmcheckerError
from vmchecker.executor import get_host
from vmchecker.executor.hostcmds import pid_alive
from vmchecker.executor.warm import UNLIMITED, WarmGuest, WarmPool, capacity, fingerprint, pool_key
from vmchecker.tester import processes
from vmchecker.tester_config import TesterConfig

log = logging.getLogger(__name__)

WARM_MARGIN = 60.0   # seconds a warm-up may take beyond its machine's boot_timeout
NO_WARM = 20         # a warm-up's exit code: the machine keeps no warm guests (cli/vm_executor.py)
LOG_TAIL = 2000


@dataclass
class _WarmUp:
    proc: subprocess.Popen
    fingerprint: str
    key: str
    deadline: float
    output: IO[bytes]


class Warmer:
    """Keeps the warm guests of one queue manager (see the module docstring). Used from
    the queue manager's main loop only."""

    def __init__(self, config: TesterConfig, command: Sequence[str] | None, kill_grace: float = 30.0):
        self.config = config
        self.pool = WarmPool(config.state_dir / "warm")
        self.machines_dir = self.pool.folder / "machines"
        self.command = list(command or [])
        self.per_machine = config.tester.warm_per_machine if command is not None else 0
        self.kill_grace = kill_grace
        self.owner = os.getpid()
        self._recent: OrderedDict[str, Machine] = OrderedDict()   # fingerprint -> machine, latest last
        self._failed: set[str] = set()
        self._running: list[_WarmUp] = []

    @property
    def enabled(self) -> bool:
        return self.per_machine > 0

    def note(self, machine: Machine | None) -> None:
        """A job of ``machine`` just ran here: keep warm guests of it."""
        if not self.enabled or machine is None or capacity(machine) == 0:
            return
        fp = fingerprint(machine)
        self._recent.pop(fp, None)
        self._recent[fp] = machine
        self._failed.discard(fp)
        while len(self._recent) > self.config.tester.slots:
            old, _machine = self._recent.popitem(last=False)
            self._drop((r, 0) for r in self.pool.ready() if r.owner == self.owner and r.fingerprint == old)

    def top_up(self, idle_slots: int, running: Iterable[Machine | None] = ()) -> None:
        """Start warm-ups, at most ``idle_slots`` at once, for the machines that have fewer
        ready guests than they should; none for a guest a job of ``running`` (the machines
        of the jobs running here) holds now: a KVM snapshot domain. While a job runs, a
        machine is kept at one guest ready or in the making, the rest wait for an idle
        tester: a warm-up competes with the running job for the CPU (its copy-in took
        twice as long beside one)."""
        running = list(running)
        jobs_running = any(m is not None for m in running)
        self.reap()
        if not self.enabled or not self._recent or len(self._running) >= idle_slots:
            return
        counts: dict[str, int] = {}
        for record in self.pool.ready():
            if record.owner == self.owner:
                counts[record.key] = counts.get(record.key, 0) + 1
        for w in self._running:
            counts[w.key] = counts.get(w.key, 0) + 1
        busy = {pool_key(m) for m in running if m is not None and capacity(m) == 1}
        for fp, machine in reversed(self._recent.items()):   # the latest machine first
            key = pool_key(machine)
            wanted = min(self.per_machine, capacity(machine), 1 if jobs_running else UNLIMITED)
            while (fp not in self._failed and key not in busy and counts.get(key, 0) < wanted
                   and len(self._running) < idle_slots):
                self._start(fp, key, machine)
                counts[key] = counts.get(key, 0) + 1

    def reap(self) -> None:
        """Collect the warm-ups that ended (or outlived their deadline: killed)."""
        for w in list(self._running):
            code = w.proc.poll()
            if code is None and time.monotonic() > w.deadline:
                log.warning("warm-up of machine %s still running after its deadline; killing it", w.fingerprint)
                processes.kill_child(w.proc, self.kill_grace)
                code = w.proc.returncode
            if code is None:
                continue
            processes.reap_group(w.proc)
            self._running.remove(w)
            if code != 0:
                self._failed.add(w.fingerprint)
                w.output.seek(0)
                tail = w.output.read().decode("utf-8", "replace")[-LOG_TAIL:].strip()
                if code == NO_WARM:
                    log.info("machine %s keeps no warm guests: %s", w.fingerprint, tail)
                else:
                    log.warning("warm-up of machine %s failed (exit %s); none until its next job:\n%s",
                                w.fingerprint, code, tail)
            w.output.close()

    def stop(self) -> None:
        """Stop the warm-ups and destroy every warm guest of this queue manager."""
        for w in self._running:
            processes.kill_child(w.proc, self.kill_grace)
        self.reap()
        self._drop([(r, 0) for r in self.pool.ready() if r.owner == self.owner] + self.pool.orphans(self.owner))

    def sweep(self) -> None:
        """Destroy the guests of claimed records whose executor is gone and left them
        (killed mid-job, or its clean-up failed)."""
        self._drop((r, pid) for r, pid in self.pool.claimed() if not pid_alive(pid))

    def recover(self) -> list[Machine]:
        """At start-up: stop warm-ups a killed queue manager left running, destroy every
        record's guest; the machines warmed before, for the backends' leftover clean-up."""
        for pid in processes.find_orphans(self.pool.folder):
            processes.kill_orphan(pid, self.kill_grace)
        self._drop(self.pool.orphans(self.owner))
        machines = []
        for path in sorted(self.machines_dir.glob("*.json")) if self.machines_dir.is_dir() else []:
            try:
                machines.append(parse_machine(json.loads(path.read_text(encoding="utf-8")), path))
            except (OSError, ValueError, VmcheckerError) as exc:
                log.warning("%s: not a machine: %s", path, getattr(exc, "message", exc))
            path.unlink(missing_ok=True)
        return machines

    # ------------------------------------------------------------------ helpers

    def _start(self, fp: str, key: str, machine: Machine) -> None:
        self.pool.ensure()
        self.machines_dir.mkdir(mode=0o700, exist_ok=True)
        machine_file = self.machines_dir / f"{fp}.json"
        if not machine_file.exists():
            fsutil.write_atomic(machine_file, json.dumps(machine_to_dict(machine)) + "\n", 0o600)
        output = open(self.pool.folder / f"warm-up-{fp}.log", "w+b")   # noqa: SIM115 (closed in reap)
        command = [*self.command, "--warm", str(machine_file), "--owner", str(self.owner)]
        try:
            proc = processes.start(command, output, cwd=self.pool.folder)
        except OSError as exc:
            output.close()
            self._failed.add(fp)
            log.error("cannot start a warm-up of machine %r: %s", machine.name, exc)
            return
        log.info("warming a guest of machine %r (%s)", machine.name, fp)
        self._running.append(_WarmUp(proc, fp, key, time.monotonic() + machine.boot_timeout + WARM_MARGIN, output))

    def _drop(self, records: Iterable[tuple[WarmGuest, int]]) -> None:
        """Destroy the guests of ``records`` (pid: who claimed it; 0 for a ready one,
        taken first so no job can claim it meanwhile) and forget them."""
        for record, pid in records:
            if pid == 0 and not self.pool.take(record):
                continue   # a job took it
            try:
                get_host(record.to_machine().type).drop_warm(record)
            except (VmcheckerError, OSError) as exc:
                log.error("destroying warm guest %s failed: %s", record.name, getattr(exc, "message", exc))
                continue
            except Exception:   # a broken backend must not stop the rest (the queue manager's stop)
                log.exception("destroying warm guest %s failed", record.name)
                continue
            self.pool.release(record, pid or None)
            log.info("warm guest %s destroyed", record.name)
