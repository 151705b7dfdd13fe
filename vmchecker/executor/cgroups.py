"""The host's side of an LXC clone's cgroups: the limits set before it starts, and
killing every process inside it once it runs.

Works on cgroup v2 and on hybrid hosts (controllers still mounted as cgroup v1, as on
Debian without systemd): :func:`limit_items` writes v1 keys where the controller is a v1
mount. A step that outlives its timeout, and whatever a step leaves running, is killed
through the clone's cgroup: freeze, SIGKILL every process but the guest's init, thaw (a
fork bomb cannot outrun a frozen cgroup, and no new process has to enter a guest that is
out of pids).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

from vmchecker.config import Limits
from vmchecker.errors import ExecutorError
from vmchecker.executor import guest

KILL_TIMEOUT = 5.0          # seconds for a killed guest process to disappear


@functools.cache
def cgroup_mounts() -> dict[str, Path]:
    """Controller name (or ``unified``) -> mount point, from /proc/self/mounts."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            _dev, where, fstype, options, *_ = line.split()
            if fstype == "cgroup2":
                mounts.setdefault("unified", Path(where))
            elif fstype == "cgroup":
                for opt in options.split(","):
                    mounts.setdefault(opt, Path(where))
    return mounts


def migration_hint(mounts: str | None = None) -> str | None:
    """Why moving a process into a guest's cgroup is slow on this host, or None: without
    ``favordynmods`` on the cgroup2 mount, each move (one per LXC attach) waits for an
    RCU grace period in the kernel, tens of milliseconds on an idle machine
    (tools/tune-host.sh sets it). ``mounts``: the text of /proc/self/mounts (read if None)."""
    if mounts is None:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = f.read()
    for line in mounts.splitlines():
        _dev, where, fstype, options, *_ = line.split()
        if fstype == "cgroup2":
            if "favordynmods" in options.split(","):
                return None
            return (f"cgroup2 at {where} is mounted without favordynmods: every step of an LXC job"
                    f" waits for the kernel (tens of ms); run tools/tune-host.sh (mount -o"
                    f" remount,favordynmods {where})")
    return None


def limit_items(limits: Limits) -> list[tuple[str, str]]:
    """The clone's cgroup config items for ``limits``: v1 keys where the controller is
    mounted as cgroup v1 (hybrid hosts), cgroup2 keys otherwise."""
    mounts = cgroup_mounts()
    memory = str(limits.memory_mb * 1024 * 1024)
    quota, period = guest.cpu_quota_us(limits.cpus), guest.CPU_PERIOD_US
    items = []
    if "memory" in mounts:
        items.append(("lxc.cgroup.memory.limit_in_bytes", memory))
        if (mounts["memory"] / "memory.memsw.limit_in_bytes").exists():
            items.append(("lxc.cgroup.memory.memsw.limit_in_bytes", memory))
    else:
        items += [("lxc.cgroup2.memory.max", memory), ("lxc.cgroup2.memory.swap.max", "0")]
    if "pids" in mounts:
        items.append(("lxc.cgroup.pids.max", str(limits.pids)))
    else:
        items.append(("lxc.cgroup2.pids.max", str(limits.pids)))
    if "cpu" in mounts:
        items += [("lxc.cgroup.cpu.cfs_period_us", str(period)), ("lxc.cgroup.cpu.cfs_quota_us", str(quota))]
    else:
        items.append(("lxc.cgroup2.cpu.max", f"{quota} {period}"))
    return items


def process_cgroups(pid: int) -> dict[str, str]:
    """Controller name (or ``unified``) -> the cgroup of process ``pid`` below that
    controller's mount, from /proc/PID/cgroup."""
    paths: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            _n, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                paths[c] = path.lstrip("/")
    return paths


class GuestCgroup:
    """The host's view of a running clone's cgroups, found from its init's pid."""

    def __init__(self, init_pid: int):
        self.init_pid = init_pid
        paths = process_cgroups(init_pid)
        mounts = cgroup_mounts()

        def where(controller: str) -> Path | None:
            if controller in mounts and controller in paths:
                return mounts[controller] / paths[controller]
            return None

        self.procs_dir = where("pids") or where("unified")
        self.freezer = where("freezer")
        self.unified = where("unified")

    def pids(self) -> set[int]:
        """Every process in the guest's cgroup tree, but init."""
        found: set[int] = set()
        if self.procs_dir is None:
            return found
        for folder, _dirs, _files in os.walk(self.procs_dir):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
        found.discard(self.init_pid)
        return found

    def _freeze(self, frozen: bool) -> None:
        if self.freezer is not None:
            state = self.freezer / "freezer.state"
            state.write_text("FROZEN" if frozen else "THAWED")
            deadline = time.monotonic() + 2
            while frozen and state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.002)
        elif self.unified is not None and (self.unified / "cgroup.freeze").exists():
            (self.unified / "cgroup.freeze").write_text("1" if frozen else "0")

    def kill_all(self) -> None:
        """SIGKILL every process in the guest but init; raise if some survive."""
        if not self.pids():
            return
        self._freeze(True)
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._freeze(False)
        deadline = time.monotonic() + KILL_TIMEOUT
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        if left:
            raise ExecutorError(f"{len(left)} processes in the guest survived SIGKILL")
