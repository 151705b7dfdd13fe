"""What confines a job's LXC clone beyond its cgroup limits: its config items (the
capabilities dropped, what is mounted in it) and its disk quota.

The clone is a privileged container and the student may be its root. Its config keeps
nothing of the host inside: common.conf's bind of the host's /sys/fs/fuse/connections
(and any other ``lxc.mount.entry``) is dropped, /proc and /sys are read-only as a whole,
the cgroup mount too (its root could otherwise raise its own limits).

The disk quota (``limits.disk_mb``): the overlay's upper and work folders, where every
write of the guest lands, live on a tmpfs of ``disk_mb`` mounted per clone over the
clone's ``overlay`` folder. A write past it fails with ENOSPC in the guest; the host's
disk is not touched at all. tmpfs pages are charged to the memory cgroup of the process
that writes them (and cannot be swapped out: the guest has no swap), so a guest's files
count against ``memory_mb`` too: a job may write the smaller of ``disk_mb`` and the
memory its processes leave free, and one that writes past the latter is stopped by the
memory limit instead of ENOSPC. In return a job never takes more of the host than
``memory_mb`` of RAM, files and processes together, and none of its disk. Chosen over a
sparse loop-mounted ext4 file (which would leave ``memory_mb`` to the processes alone)
for its cost: about 1 ms per job for the mount, won back when the clone is destroyed
(its files go with the unmount), where the ext4 file costs 12 ms (mkfs, loop device,
mount), writes back data about to be thrown away, and needs loop devices on the tester.
The mount is undone before the clone is destroyed, also for the clones of dead executors.

A warm clone (started before its job) is used only while its base is the one it was
cloned from: :func:`base_identity` says which base that is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

import lxc  # the LXC binding

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor.cgroups import limit_items

# Every capability that reaches past the container (mounts and cgroup release agents,
# open_by_handle_at, ptrace, raw devices, kernel tunables, scheduling against the host's
# processes, the host's audit log...). CHOWN, DAC_OVERRIDE, SETUID... stay: they act on
# the guest's own files and processes. NET_ADMIN stays for the guest's init, which
# brings up loopback in the clone's own network namespace.
DROP_CAPS = ("sys_admin dac_read_search sys_ptrace sys_boot sys_resource sys_pacct sys_tty_config syslog"
             " linux_immutable mknod setfcap ipc_lock lease wake_alarm block_suspend audit_control"
             " audit_read audit_write bpf perfmon checkpoint_restore sys_module sys_rawio sys_time"
             " sys_nice mac_admin mac_override").split()
# proc:mixed leaves /proc/sys read-only but the rest of /proc writable for the guest's
# root (/proc/irq/*/smp_affinity reaches the host's interrupts, and /proc/sysrq-trigger
# where the kernel has it). LXC has no proc:ro: a second procfs of the clone's own pid
# namespace is mounted read-only over it. sys:ro leaves no /sys folder writable.
MOUNT_AUTO = "proc:mixed sys:ro cgroup:ro"
PROC_RO = "proc proc proc ro,nosuid,nodev,noexec 0 0"
DISK_SOURCE = "vmck-disk"   # the quota tmpfs's name in mountinfo
RECIPE_STAMP = "vmchecker-recipe"   # beside a base's config: the hash of the recipe build-base.sh built it from
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def config_items(clone: lxc.Container, machine: Machine) -> list[tuple[str, str | list[str]]]:
    """The config items set on a fresh clone before it starts (in order: an empty value
    clears what the base's config and common.conf said)."""
    drop = sorted(set(clone.get_config_item("lxc.cap.drop") or []) | set(DROP_CAPS))
    return [("lxc.uts.name", "vmchecker"), ("lxc.net", ""), ("lxc.net.0.type", "empty"),
            ("lxc.mount.entry", ""), ("lxc.mount.entry", PROC_RO),
            ("lxc.mount.auto", ""), ("lxc.mount.auto", MOUNT_AUTO),
            ("lxc.cap.drop", drop), *limit_items(machine.limits)]


def base_identity(base: lxc.Container) -> str:
    """Which base container a clone made now comes from: its config file (a clone copies
    it), its rootfs folder (build-base.sh swaps in a new one), the rootfs's passwd (whom
    the steps run as) and the recipe stamp build-base.sh writes; each by inode, time and
    size, so a rebuild or an edit of any of them gives another identity."""
    config = Path(base.config_file_name)
    rootfs = Path((base.get_config_item("lxc.rootfs.path") or "").split(":", 1)[-1])
    parts = []
    for path in (config, rootfs, rootfs / "etc" / "passwd", config.parent / RECIPE_STAMP):
        try:
            st = path.stat()
            parts.append(f"{path}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append(f"{path}:-")
    return "|".join(parts)


def overlay_dir(clone: lxc.Container) -> Path:
    """The folder, inside the clone's own folder, holding its overlay upper and work
    folders."""
    spec = clone.get_config_item("lxc.rootfs.path") or ""
    upper = Path(spec.rpartition(":")[2])   # [overlay:]LOWER:UPPER
    if ":" not in spec or upper.parent.parent != Path(clone.config_file_name).parent:
        raise ExecutorError(f"LXC clone {clone.name} is not an overlay clone of its own (lxc.rootfs.path = {spec!r})")
    return upper.parent


def mount_disk(clone: lxc.Container, disk_mb: int) -> None:
    """Put the clone's overlay folders on a tmpfs of ``disk_mb`` MiB (the folders the
    clone made are made again, empty, on it)."""
    top = overlay_dir(clone)
    folders = [(e.name, e.stat().st_mode & 0o7777) for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    options = f"size={disk_mb}m,nr_inodes={max(disk_mb * 256, 4096)},mode=0755"
    if _libc.mount(DISK_SOURCE.encode(), os.fsencode(top), b"tmpfs", 0, options.encode()) != 0:
        raise ExecutorError(f"mounting the {disk_mb} MiB disk of LXC clone {clone.name} on {top} failed:"
                            f" {os.strerror(ctypes.get_errno())}")
    for name, mode in folders:
        os.mkdir(top / name, mode)


def unmount_disk(clone: lxc.Container) -> None:
    """Undo :func:`mount_disk` if it was done (the clone must not run any more); only a
    quota tmpfs is ever unmounted, whatever the clone's config says."""
    try:
        top = overlay_dir(clone)
    except ExecutorError:
        return
    while _quota_mounted(top):
        if _libc.umount2(os.fsencode(top), MNT_DETACH) != 0:
            raise ExecutorError(f"unmounting the disk of LXC clone {clone.name} ({top}) failed:"
                                f" {os.strerror(ctypes.get_errno())}")


def destroy(c: lxc.Container) -> None:
    """Stop (SIGKILL its init if it will not stop), unmount its disk and destroy a clone;
    nothing to do for one already gone."""
    if not c.defined:
        return
    if c.state == "FROZEN":
        c.unfreeze()
    if c.running and not c.stop() and c.init_pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.init_pid, signal.SIGKILL)
        c.wait("STOPPED", 5)
    unmount_disk(c)
    if not c.destroy():
        raise ExecutorError(f"LXC container {c.name} could not be destroyed")


def _quota_mounted(where: Path) -> bool:
    """Whether the top mount at ``where`` is a quota tmpfs (from /proc/self/mountinfo)."""
    found = False
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == os.fspath(where):   # later lines are mounted on top of earlier ones
                found = fields[sep + 1:sep + 3] == ["tmpfs", DISK_SOURCE]
    return found
