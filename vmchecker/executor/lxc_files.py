"""A job's files into and out of a running LXC clone from the host, through the clone's
root as its init sees it (``/proc/PID/root``): no process is started in the guest.

Each attach costs a fork of the executor, a move into the clone's namespaces and cgroup,
and the programs it runs (sh, mkdir, tar, find): tens of milliseconds on the job's path,
twice. Here the copy is a walk of the payload folder on the host and a read of the
results folder, with the same rules as the tar streams of the other backends:

* Paths in the guest are opened with ``openat2(RESOLVE_IN_ROOT)``: a symbolic link in the
  guest resolves inside the guest, never to a host file (a guest folder that is a link,
  even an absolute one, stays in the guest, as ``cd`` in the guest would).
* The root is opened once, while the clone's init is known to be alive (a pidfd checked
  after the open), so a recycled pid can never hand us another process's root; it is
  refused outright if it is the host's own root.
* Copy-in: before any process of the student exists in the guest. Owners go by name, as
  GNU tar's do: the guest's own /etc/passwd and /etc/group decide the ids; a student name
  the guest does not know falls back to ``nobody``, never to root. Modes and times are
  the payload's (:meth:`.payload.Payload.placement`).
* Copy-out: after every process of the steps is killed. The first COUNT regular
  ``*.vmr`` files at the top of the results folder, in name order, each cut to the cap;
  a link is never followed (opened with ``O_NOFOLLOW``), a fifo never blocks (``O_NONBLOCK``,
  then it is not a regular file and is skipped), as ``guest/copy-out.sh`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

from vmchecker.errors import ExecutorError
from vmchecker.executor import guest
from vmchecker.executor.payload import NOBODY, Payload

_SYS_OPENAT2 = 437                    # the same number on every architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_CHUNK = 1 << 20


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """``path`` opened below ``root_fd`` as if that were ``/`` (openat2, RESOLVE_IN_ROOT)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(os.fsencode(path)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def open_root(init_pid: int, name: str) -> int:
    """An O_PATH descriptor of the root of the guest whose init is ``init_pid``."""
    try:
        pidfd = os.pidfd_open(init_pid)
    except ProcessLookupError:
        raise ExecutorError(f"the init of LXC container {name} (pid {init_pid}) is gone") from None
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            signal.pidfd_send_signal(pidfd, 0)   # still the process we opened: the pid was not recycled
            ours, host = os.fstat(root), os.stat("/")
            if (ours.st_dev, ours.st_ino) == (host.st_dev, host.st_ino):
                raise ExecutorError(f"LXC container {name} has the host's root folder as its own; refusing to copy")
        except BaseException:
            os.close(root)
            raise
    except ProcessLookupError:
        raise ExecutorError(f"the init of LXC container {name} (pid {init_pid}) ended") from None
    finally:
        os.close(pidfd)
    return root


def copy_in(root_fd: int, base: str, load: Payload) -> None:
    """Write the payload into the guest folder ``base`` (made if missing, as mkdir -p)."""
    ids = _Owners(root_fd, load)
    _make_dirs(root_fd, base)
    base_fd = open_in_root(root_fd, base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _copy_tree(load, load.root, ".", base_fd, ids)
        _settle(base_fd, load, ".", os.stat(load.root), ids)
    finally:
        os.close(base_fd)


def copy_out(root_fd: int, folder: str, dest: Path, cap: int, count: int) -> None:
    """The first ``count`` regular ``*.vmr`` files at the top of the guest ``folder``,
    each cut to ``cap`` bytes, into ``dest``; a missing folder gives none."""
    try:
        dir_fd = open_in_root(root_fd, folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        taken = 0
        for name in sorted(os.listdir(dir_fd)):
            if taken == count:
                break
            if name.startswith(".") or not name.endswith(".vmr"):
                continue
            data = _read_regular(dir_fd, name, cap)
            if data is not None:
                taken += 1
                (dest / name).write_bytes(data)
    finally:
        os.close(dir_fd)


def _read_regular(dir_fd: int, name: str, cap: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):   # a link, gone, a socket
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], cap
        while left > 0 and (chunk := os.read(fd, min(left, _CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Owners:
    """Guest ids by name, from the guest's own files (tar's rule for a name it cannot
    find: the id the payload carries, ``nobody`` for the student and root for the
    guest user)."""

    def __init__(self, root_fd: int, load: Payload):
        passwd, group = (_guest_file(root_fd, f"/etc/{n}") for n in ("passwd", "group"))
        self.student = _ids(passwd, group, load.student, NOBODY)
        self.trusted = _ids(passwd, group, load.trusted, 0)


def _guest_file(root_fd: int, path: str) -> str:
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read()


def _ids(passwd: str, group: str, name: str, default: int) -> tuple[int, int]:
    """(uid, gid) of the user and the group called ``name``, each ``default`` if unknown."""
    user = guest.passwd_entry(passwd, name)
    gid = next((int(fields[2]) for fields in (line.split(":") for line in group.splitlines())
                if len(fields) >= 3 and fields[0] == name and fields[2].isdigit()), default)
    return (user[0] if user is not None else default), gid


def _make_dirs(root_fd: int, path: str) -> None:
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        here = "/" + "/".join(parts[:i])
        try:
            os.close(open_in_root(root_fd, here, os.O_PATH | os.O_DIRECTORY))
        except FileNotFoundError:
            parent = open_in_root(root_fd, "/" + "/".join(parts[:i - 1]), os.O_PATH | os.O_DIRECTORY)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(parts[i - 1], 0o755, dir_fd=parent)
            finally:
                os.close(parent)


def _entries(folder: Path) -> Iterator[os.DirEntry]:
    with os.scandir(folder) as it:
        yield from sorted(it, key=lambda e: e.name)


def _copy_tree(load: Payload, folder: Path, arc: str, dir_fd: int, ids: _Owners) -> None:
    for entry in _entries(folder):
        name = entry.name if arc == "." else f"{arc}/{entry.name}"
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(FileExistsError):
                os.mkdir(entry.name, 0o700, dir_fd=dir_fd)
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _copy_tree(load, Path(entry.path), name, child, ids)
                _settle(child, load, name, st, ids)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=dir_fd)   # tar replaces what the base had there
            fd = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                with open(entry.path, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        os.write(fd, chunk)
                _settle(fd, load, name, st, ids)
            finally:
                os.close(fd)
        else:
            raise ExecutorError(f"the job's payload holds {name!r}, neither a file nor a folder")


def _settle(fd: int, load: Payload, name: str, st: os.stat_result, ids: _Owners) -> None:
    """Owner, then mode (a chown clears set-id bits), then times, as ``tar -xp`` does."""
    student, mode = load.placement(name, stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))
    os.fchown(fd, *(ids.student if student else ids.trusted))
    os.fchmod(fd, mode)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
