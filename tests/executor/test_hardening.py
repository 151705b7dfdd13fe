"""A hostile guest root, on real guests: each test performs the attack in a run script
(run as the guest's root) and shows it contained.

LXC: no CAP_SYS_NICE or CAP_AUDIT_WRITE, no mount of the host's (fusectl, or any other
bind), /proc and /sys read-only, the disk quota (ENOSPC on a tmpfs of disk_mb; the
host's disk untouched). KVM: the disk quota (the guest paused and the job failed once
its disk file grew past disk_mb) in both revert modes, the serial console log capped
while the guest floods it.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.executor.conftest import owned_clones
from tests.executor.helpers import around_run_step, run_job, vmr
from tests.executor.kvm_fixtures import KVM_BASE, KVM_STATE, kvm_machine
from vmchecker.errors import ExecutorError
from vmchecker.executor.kvm_guard import GuestWatch, serial_path
from vmchecker.executor.lxc_clone import DISK_SOURCE

MIB = 1 << 20
CAP_SYS_NICE, CAP_AUDIT_WRITE = 23, 29


def mounts(text: str) -> list[tuple[str, str, str, str]]:
    """(device, mount point, fs type, mount options) of each line of a mountinfo."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if "-" in fields:
            sep = fields.index("-")
            rows.append((fields[2], fields[4], fields[sep + 1], fields[5]))
    return rows


@contextmanager
def largest(paths: Callable[[], list[Path]], size: Callable[[os.stat_result], int]) -> Iterator[list[int]]:
    """Sample ``size`` of the files ``paths()`` every 10 ms while the block runs: yields
    a list that holds every sample once the block is over."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            for path in paths():
                try:
                    samples.append(size(path.stat()))
                except OSError:
                    pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


# --------------------------------------------------------------------------- LXC


@pytest.mark.lxc
def test_lxc_guest_root_cannot_renice_or_write_the_audit_log(lxc_host, tmp_path):
    run = """\
grep CapBnd /proc/self/status
renice -n -5 $$ >/dev/null 2>&1; echo "renice $?"
chrt -f 1 true 2>/dev/null; echo "chrt $?"
"""
    job, out = run_job(lxc_host, tmp_path / "b", run=run)
    text = vmr(out, "run-stdout.vmr")
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    bounding = int(text.split()[1], 16)
    assert not bounding & (1 << CAP_SYS_NICE) and not bounding & (1 << CAP_AUDIT_WRITE), hex(bounding)
    assert "renice 1" in text and "chrt 1" in text, text


@pytest.mark.lxc
def test_lxc_guest_sees_no_mount_of_the_hosts(lxc_host, tmp_path):
    job, out = run_job(lxc_host, tmp_path / "b", run="cat /proc/self/mountinfo\n")
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    guest = mounts(vmr(out, "run-stdout.vmr"))
    assert guest and not [m for m in guest if "fuse" in m[1] or "fuse" in m[2]], guest
    host_devices = {m[0] for m in mounts(Path("/proc/self/mountinfo").read_text())}
    # the cgroup hierarchies are the host's by design, read-only and seen from the guest's cgroup namespace
    shared = [m for m in guest if m[0] in host_devices and m[2] not in ("cgroup", "cgroup2")]
    assert not shared, f"host filesystems mounted in the guest: {shared}"
    top = {where: options for _dev, where, _fs, options in guest}   # the last mount on a path is the one seen
    assert top["/proc"].startswith("ro,") and top["/sys"].startswith("ro,"), top


@pytest.mark.lxc
def test_lxc_guest_root_cannot_write_proc(lxc_host, tmp_path):
    # each write puts back the value read, so a write that got through would change nothing
    run = """\
for f in /proc/sys/kernel/core_pattern /proc/sys/vm/overcommit_memory /proc/irq/default_smp_affinity \
         /proc/self/oom_score_adj /proc/self/coredump_filter; do
  if v=$(cat $f); then { echo "$v" > $f; } 2>/dev/null; echo "$f $?"; else echo "$f unreadable"; fi
done
if [ -e /proc/sysrq-trigger ]; then { echo h > /proc/sysrq-trigger; } 2>/dev/null; echo "/proc/sysrq-trigger $?"; fi
"""
    job, out = run_job(lxc_host, tmp_path / "b", run=run)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    status = dict(line.rsplit(" ", 1) for line in vmr(out, "run-stdout.vmr").splitlines())
    assert status["/proc/sys/kernel/core_pattern"] == status["/proc/self/oom_score_adj"] == "1", status
    assert set(status.values()) == {"1"}, status   # every file there could be read, none written


@pytest.mark.lxc
def test_lxc_disk_quota_is_enospc_and_spares_the_hosts_disk(lxc_host, tmp_path, monkeypatch):
    seen = []

    def quota_disk(_results: Path) -> None:   # after the run step, the clone still up
        for name in owned_clones(lxc_host, {os.getpid()}):
            top = Path(lxc_host.lxcpath, name, "overlay")
            fs = os.statvfs(top)
            seen.append((fs.f_blocks * fs.f_frsize, (fs.f_blocks - fs.f_bfree) * fs.f_frsize, name))
            assert (top / "delta" / "var" / "tmp" / "big").exists()

    around_run_step(monkeypatch, lxc_host, after=quota_disk)
    run = "dd if=/dev/zero of=/var/tmp/big bs=1M count=114 2>&1; echo \"dd $?\"\n"
    job, out = run_job(lxc_host, tmp_path / "b", run=run, limits={"disk_mb": 64, "memory_mb": 256})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    text = vmr(out, "run-stdout.vmr")
    assert "No space left on device" in text and "dd 1" in text, text
    copied = int(text.split(" bytes")[0].rsplit("\n", 1)[-1])
    assert 60 * MIB <= copied <= 64 * MIB, text
    # the guest's writes were on the clone's own 64 MiB tmpfs, not on the host's disk
    assert len(seen) == 1 and seen[0][0] == 64 * MIB and seen[0][1] >= 60 * MIB, seen
    clone = seen[0][2]   # its tmpfs is unmounted with it (other clones, a demo's, may have theirs)
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if DISK_SOURCE in line and f"/{clone}/" in line]


# --------------------------------------------------------------------------- KVM


def test_watch_empties_the_console_and_stops_the_guest_past_its_quota(tmp_path):
    console, disk, stopped = tmp_path / "console", tmp_path / "disk", []
    console.write_bytes(b"boot\n")
    disk.write_bytes(b"x" * 4096)
    watch = GuestWatch("g", console, 1024, disk, 1, lambda: stopped.append(1))
    try:
        with open(console, "ab") as f:   # as QEMU writes it: appending
            f.write(b"k" * 2000)
            f.flush()
            watch.look()
            f.write(b"after\n")
        assert console.read_bytes() == b"after\n"
        with open(disk, "ab") as f:
            f.write(b"y" * (1 << 19))
        watch.look()
        assert not stopped   # half the quota
        with open(disk, "ab") as f:
            f.write(b"y" * (1 << 20))
    finally:
        watch.stop()
    assert stopped == [1]
    with pytest.raises(ExecutorError, match="disk quota of 1 MiB"):
        watch.check()


def _job_disks(revert: str, job_id: str) -> Callable[[], list[Path]]:
    if revert == "overlay":
        return lambda: list((KVM_STATE / "jobs").glob(f"vmck-{job_id}-{os.getpid()}-*.qcow2"))
    base = KVM_STATE / f"{KVM_BASE}.qcow2"   # the snapshot domain's disk (build-image.sh)
    return lambda: [base]


@pytest.mark.kvm
@pytest.mark.parametrize("revert", ["snapshot", "overlay"])
def test_kvm_disk_quota_stops_the_guest(kvm_host, tmp_path, revert):
    run = "dd if=/dev/zero of=/var/tmp/big bs=1M count=114 conv=fsync 2>&1; echo \"dd $?\"\n"
    with largest(_job_disks(revert, "quota"), lambda st: st.st_blocks * 512) as sizes:
        job, out = run_job(kvm_host, tmp_path / "b", kvm_machine(revert=revert, limits={"disk_mb": 64}),
                           run=run, job_id="quota", timeout=60)
    assert job.status == "error"
    assert "disk quota of 64 MiB" in job.message and "disk quota of 64 MiB" in vmr(out, "vmchecker-stderr.vmr")
    # from its clean state (the revert's low point) the disk file grew past 64 MiB, but not by much
    assert sizes and 64 * MIB < max(sizes) - min(sizes) <= 128 * MIB, (min(sizes), max(sizes))


@pytest.mark.kvm
def test_kvm_serial_console_flood_is_capped(kvm_host, tmp_path):
    xml = ET.fromstring(kvm_host.connection().lookupByName(KVM_BASE).XMLDesc(0))
    console = serial_path(xml)
    assert console is not None
    run = """\
echo on > /proc/sys/kernel/printk_devkmsg
( while :; do echo '<3>vmchecker-flood xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' > /dev/kmsg; done ) &
head -c 2000000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo "tty $?"
kill $!
"""
    with largest(lambda: [console], lambda st: st.st_size) as sizes:
        job, out = run_job(kvm_host, tmp_path / "b", kvm_machine(limits={"output_kb": 64}), run=run, timeout=60)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "tty 0" in vmr(out, "run-stdout.vmr")   # 2 MB went through the serial port...
    assert sizes and max(sizes) <= 64 * 1024 + 256 * 1024, max(sizes)   # ...the log kept at most cap + slack
