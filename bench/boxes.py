"""A lab tester's own share of this host: a CPU budget, and guests that stay inside it.

On separate machines each tester would have CPUs of its own. In the namespace lab
(bench/netlab.py) every tester runs on this host, so a :class:`Box` gives one tester:

* a cgroup (cgroup v1 ``cpu``) with a quota of ``cpus`` CPUs and a weight of ``weight``
  times the default, so that other work on the host takes little from the tester's
  budget. Its queue manager is moved into it as it starts (:class:`BoxedTester`); the
  executors and whatever they start inherit it;
* an LXC base container of its own, ``vmck-schedlab-<pid>-<tester>``: the shared base's
  config with ``lxc.cgroup.relative = 1``, so its job clones get their cgroups under the
  executor's (LXC as root otherwise puts them at the root, out of the budget), and its
  rootfs a read-only bind mount of the shared base's rootfs (clones are overlays on it; a
  read-only mount also means no removal of this container can touch the shared files);
* a KVM snapshot domain of its own, defined by kvm-resources/build-image.sh in a state
  folder of this run that links the shared image (kernel, initramfs, ``base.qcow2`` and
  its stamp): a snapshot domain runs one job at a time, so a domain shared by two testers
  would make their KVM jobs one queue. Its QEMU, which libvirtd starts in a cgroup of its
  own, is moved into the box once booted (every thread); the domain also gets the budget
  as libvirt's ``global_quota``, which holds if QEMU is ever started again (it is not, in
  snapshot mode: jobs load the snapshot into the running QEMU).

Nothing shared is changed. If the shared KVM image is out of date, the build stops and
says so instead of building another. Everything is named with this process's pid;
:func:`remove_leftovers` removes what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_end_to_end import BASE, LabTester
from tests.util import pid_alive

REPO = Path(__file__).resolve().parent.parent
KVM_STATE = Path(os.environ.get("VMCHECKER_KVM_STATE", "/var/lib/vmchecker/kvm"))
SHARED_KVM = ("base.qcow2", "vmlinuz", "initrd.img")
LXC_PATH = Path("/var/lib/lxc")
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")   # the cgroup v1 cpu controller (hybrid hosts)
PREFIX = "vmck-schedlab"
PERIOD_US = 100_000
DEFAULT_SHARES = 1024
URI = "qemu:///system"
STALE = f"{KVM_STATE}/base.qcow2 is out of date: rebuild it first (make kvm-base)"
LATE_DEFINE_S = 15.0   # how long after an interrupted build its domain may still appear


def unusable() -> str | None:
    """Why boxes cannot be made here, or None."""
    if not (CPU_CGROUPS / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_CGROUPS}"
    missing = [p for p in (*SHARED_KVM, "base.stamp") if not (KVM_STATE / p).exists()]
    if missing or shutil.which("virsh") is None:
        return f"no KVM base in {KVM_STATE} (missing {', '.join(missing) or 'virsh'}): run make kvm-base"
    if not (LXC_PATH / BASE / "config").exists():
        return f"no LXC base {BASE} in {LXC_PATH}: run make base"
    return None


class Box:
    """One tester's budget of ``cpus`` CPUs, its LXC base and its KVM domain."""

    def __init__(self, tester: str, cpus: float, weight: float, logs: Path):
        self.tester, self.cpus, self.weight, self.logs = tester, cpus, weight, logs
        self.name = f"{PREFIX}-{os.getpid()}-{tester}"   # cgroup, LXC base and KVM domain
        self.cgroup = CPU_CGROUPS / self.name
        self.lxc_dir = LXC_PATH / self.name
        self.kvm_dir = KVM_STATE.parent / self.name
        self.build: subprocess.Popen | None = None
        self.interrupted = False

    # -- making

    def make(self) -> None:
        """The cgroup and the LXC base; the domain's build starts (:meth:`domain_ready` waits)."""
        self.cgroup.mkdir()
        (self.cgroup / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.cgroup / "cpu.cfs_quota_us").write_text(str(int(self.cpus * PERIOD_US)))
        (self.cgroup / "cpu.shares").write_text(str(int(self.weight * DEFAULT_SHARES)))
        self._make_lxc_base()
        self._start_domain_build()

    def _make_lxc_base(self) -> None:
        base = LXC_PATH / BASE
        rootfs = self.lxc_dir / "rootfs"
        rootfs.mkdir(parents=True)
        run("mount", "--bind", str(base / "rootfs"), str(rootfs))
        run("mount", "-o", "remount,bind,ro", str(rootfs))
        config = (base / "config").read_text().replace(f"dir:{base / 'rootfs'}", f"dir:{rootfs}")
        config = re.sub(r"(?m)^lxc\.uts\.name = .*$", f"lxc.uts.name = {self.name}", config)
        (self.lxc_dir / "config").write_text(config + "# bench/boxes.py: the job clones' cgroups under the"
                                             " executor's\nlxc.cgroup.relative = 1\n")
        for extra in base.iterdir():   # the recipe stamp (the base's identity), not the snapshots list
            if extra.is_file() and extra.name not in ("config", "lxc_snapshots"):
                shutil.copy(extra, self.lxc_dir / extra.name)

    def _start_domain_build(self) -> None:
        self.kvm_dir.mkdir()
        for piece in SHARED_KVM:
            (self.kvm_dir / piece).symlink_to(KVM_STATE / piece)
        shutil.copy(KVM_STATE / "base.stamp", self.kvm_dir / "base.stamp")
        with open(self.build_log, "w") as log:
            # A session of its own: stopped as a whole if the image is stale or we are interrupted.
            self.build = subprocess.Popen([str(REPO / "kvm-resources" / "build-image.sh"), self.name],
                                          env={**os.environ, "VMCHECKER_KVM_STATE": str(self.kvm_dir)},
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def build_log(self) -> Path:
        return self.logs / f"build-{self.name}.log"

    def domain_ready(self) -> str | None:
        """None while the domain's build runs; then "" once the domain is in the box, or
        why it failed."""
        assert self.build is not None
        text = self.build_log.read_text(errors="replace")
        if "building the guest image" in text:   # the shared image is stale: not ours to rebuild
            self.interrupted |= stop_build(self.build)
            return STALE
        if self.build.poll() is None:
            return None
        if self.build.returncode:
            return f"build-image.sh {self.name} failed:\n{text[-2000:]}"
        virsh("schedinfo", self.name, "--set", f"global_quota={int(self.cpus * PERIOD_US)}",
              f"global_period={PERIOD_US}", "--live", "--config")
        self.take_qemu()
        return ""

    def take_qemu(self) -> None:
        """Move every thread of the domain's QEMU into the box (threads it makes later
        start where their maker is)."""
        for _ in range(2):   # a thread made during the first pass is moved by the second
            for tid in os.listdir(f"/proc/{self.qemu_pid()}/task"):
                with contextlib.suppress(ProcessLookupError, OSError):
                    (self.cgroup / "tasks").write_text(tid)

    def qemu_pid(self) -> int:
        return int(Path(f"/run/libvirt/qemu/{self.name}.pid").read_text())

    def qemu_in_box(self) -> bool:
        """Whether the domain's QEMU still runs in the box (not restarted elsewhere)."""
        try:
            return f"/{self.name}" in Path(f"/proc/{self.qemu_pid()}/cgroup").read_text()
        except (OSError, ValueError):
            return False

    # -- using

    def add(self, pid: int) -> None:
        (self.cgroup / "cgroup.procs").write_text(str(pid))

    def overrides(self) -> dict:
        """The tester's machine overrides: its own LXC base and KVM domain. A clone's CPU
        limit is at most the box's: cgroup v1 refuses a child a quota above its parent's
        (the clone would not start)."""
        lxc: dict = {"vm": self.name}
        if self.cpus < 1:
            lxc["limits"] = {"cpus": self.cpus}
        return {"linux": lxc, "linux-kvm": {"vm": self.name, "base_image": str(self.kvm_dir / "base.qcow2")}}

    def throttled_s(self) -> float:
        """Seconds the box's processes were held back by its quota so far."""
        stat = dict(line.split() for line in (self.cgroup / "cpu.stat").read_text().splitlines())
        return int(stat.get("throttled_time", 0)) / 1e9

    # -- removing

    def close(self) -> None:
        """The domain, the LXC base and the cgroup, whatever of them exists."""
        if self.build is not None:
            self.interrupted |= stop_build(self.build)
        remove_domain(self.name)
        if self.interrupted:
            # A define the stopped build asked for may still be done by libvirtd after
            # its virsh is gone (seen on a loaded machine): look again for a while.
            until = time.monotonic() + LATE_DEFINE_S
            while time.monotonic() < until:
                time.sleep(1)
                if self.name in virsh("list", "--all", "--name", check=False).stdout.split():
                    remove_domain(self.name)
        shutil.rmtree(self.kvm_dir, ignore_errors=True)
        remove_lxc_base(self.lxc_dir)
        remove_cgroup(self.cgroup)


class BoxedTester(LabTester):
    """A lab tester whose queue manager runs in its box. It is moved there as soon as it
    exists: ``nsenter`` execs the queue manager in the same process, which starts no
    executor before a bundle arrives."""

    box: Box

    def start(self) -> None:
        super().start()
        assert self.proc is not None
        self.box.add(self.proc.pid)


# ---------------------------------------------------------------------- removal


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def stop_build(proc: subprocess.Popen) -> bool:
    """Stop a build-image.sh still running, and every process of its session; whether it was."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    until = time.monotonic() + 10
    while time.monotonic() < until:   # its virsh or qemu-img may outlive the shell by a moment
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    return True


def remove_domain(name: str) -> None:
    virsh("destroy", name, check=False)
    virsh("undefine", name, "--snapshots-metadata", check=False)


def remove_lxc_base(folder: Path) -> None:
    """Unmount the base's rootfs, then remove its folder. The rootfs folder is only ever
    removed empty (rmdir): never a walk through the shared base's files."""
    rootfs = folder / "rootfs"
    if mounted(rootfs):
        subprocess.run(["umount", str(rootfs)], capture_output=True)
    try:
        if mounted(rootfs):
            raise OSError(f"{rootfs} is still mounted")
        rootfs.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"leaving {folder}: {exc}", file=sys.stderr)
        return
    shutil.rmtree(folder, ignore_errors=True)


def mounted(path: Path) -> bool:
    """Whether something is mounted at ``path`` (a bind mount of the same file system
    included, which os.path.ismount does not see)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == str(path) for line in f)


def remove_cgroup(path: Path) -> None:
    """Move what is left (our processes: the labs are closed) to the root, then remove the
    cgroup and those LXC made under it, deepest first."""
    if not path.exists():
        return
    for folder, _dirs, _files in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            for pid in Path(folder, "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CPU_CGROUPS / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if path.exists():
        print(f"could not remove cgroup {path}", file=sys.stderr)


def remove_leftovers() -> None:
    """What runs that are gone (their pid is in the names) left: domains, KVM state
    folders, LXC bases, cgroups."""
    pattern = re.compile(rf"^{PREFIX}-(\d+)-")

    def dead(name: str) -> bool:
        m = pattern.match(name)
        return bool(m) and not pid_alive(int(m[1]))

    for proc in Path("/proc").glob("[0-9]*"):   # a build outlives its killed run (a session of its own)
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if any(a.endswith(b"build-image.sh") for a in args) and any(dead(a.decode()) for a in args):
                print(f"stopping build-image.sh {proc.name} left by an earlier run", file=sys.stderr)
                os.killpg(int(proc.name), signal.SIGKILL)
    for name in virsh("list", "--all", "--name", check=False).stdout.split():
        if dead(name):
            print(f"removing domain {name} left by an earlier run", file=sys.stderr)
            remove_domain(name)
    for folder in KVM_STATE.parent.glob(f"{PREFIX}-*"):
        if dead(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
    for folder in LXC_PATH.glob(f"{PREFIX}-*"):
        if dead(folder.name):
            remove_lxc_base(folder)
    for path in CPU_CGROUPS.glob(f"{PREFIX}-*"):
        if dead(path.name):
            remove_cgroup(path)
