"""The bytes that cross into and out of a job's Docker container: the multiplexed
stream of a running exec read into capped sinks, the payload wrapped for
``put_archive``, the results read out of ``get_archive``'s stream, and the step's
resource use from the container's cgroup.

Nothing here calls the Docker API: the exec's end, the kill of what is left in the
container and the archive streams come in as arguments, so :mod:`.docker` keeps every
API call (and its errors) in one place.
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import struct
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from vmchecker.errors import ExecutorError
from vmchecker.executor import cgroups, results

log = logging.getLogger(__name__)

IN_TAR = ".vmck-in.tar"     # the payload, as one file in the guest folder until unpacked
POLL_FIRST, POLL_MAX = 0.005, 0.1   # seconds between two looks at whether an exec ended
DRAIN_TIMEOUT = 5.0         # seconds to read what is left in the stream once the exec ended
STREAMS = {1: "stdout", 2: "stderr"}   # the stream id of each frame of an exec's output


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class Demux:
    """Docker's multiplexed stream (8-byte frame headers: stream id, 3 zero bytes,
    big-endian length) split into ``sinks`` by stream id; a frame is passed on as its
    bytes arrive, so memory holds one read at most."""

    def __init__(self, sinks: dict[int, Sink]):
        self.sinks = sinks
        self._head = b""
        self._left = 0
        self._sink: Sink | None = None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left == 0:
                need = 8 - len(self._head)
                self._head += bytes(view[:need])
                view = view[need:]
                if len(self._head) == 8:
                    kind, self._left = struct.unpack(">BxxxL", self._head)
                    self._sink, self._head = self.sinks.get(kind), b""
                continue
            chunk, view = view[:self._left], view[self._left:]
            self._left -= len(chunk)
            if self._sink is not None:
                self._sink.write(bytes(chunk))


def pump(sock: socket.socket, demux: Demux, timeout: float, ended: Callable[[], bool],
         kill: Callable[[], None]) -> bool:
    """Read an exec's output from ``sock`` into ``demux`` until ``ended()`` says its
    process ended, at most ``timeout`` seconds; then ``kill()`` what is left in the
    container (everything on a timeout, the leftovers otherwise: a background process
    may hold the stream open for ever) and drain the stream. True if it timed out.

    ``ended`` is asked at once when the stream closes, and otherwise every few
    milliseconds at first, every POLL_MAX seconds later on (the process may close its
    output and run on; a leftover may write on after it ended)."""
    deadline = time.monotonic() + timeout
    poll = POLL_FIRST
    next_look = time.monotonic() + poll
    eof = timed_out = False
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if now >= next_look:
                if ended():
                    break
                poll = min(poll * 2, POLL_MAX)
                next_look = now + poll
            wait = min(next_look, deadline) - now
            if eof:
                time.sleep(wait)
            elif sel.select(wait) and not _read(sock, demux):
                eof, next_look = True, now
        kill()
        if not eof:
            _drain(sock, sel, demux)
    return timed_out


def _read(sock: socket.socket, demux: Demux) -> bool:
    """Pass what the socket holds on; False at the end of the stream."""
    try:
        chunk = sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return True
    if chunk:
        demux.feed(chunk)
    return bool(chunk)


def _drain(sock: socket.socket, sel: selectors.BaseSelector, demux: Demux) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (wait := deadline - time.monotonic()) > 0:
        if sel.select(wait) and not _read(sock, demux):
            return
    log.warning("an exec's output stream stayed open %.0f s after its processes were killed", DRAIN_TIMEOUT)


def wrapped_payload(payload: bytes) -> bytes:
    """A tar holding the payload tar as the one file IN_TAR. ``put_archive`` gives
    files the numeric owners of the tar, whereas the payload's owners go by name (the
    guest's passwd decides): the guest's own tar unpacks this file as root."""
    info = tarfile.TarInfo(IN_TAR)
    info.size, info.mode = len(payload), 0o600
    pad = -len(payload) % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.GNU_FORMAT) + payload + b"\0" * (pad + 2 * tarfile.BLOCKSIZE)


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (an archive being streamed)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def take_vmrs(chunks: Iterable[bytes], dest: Path, cap: int, guest: str) -> None:
    """Write the regular ``*.vmr`` files at the top of the folder ``get_archive``
    streams (its entries are ``FOLDER/NAME``) into ``dest``, at most
    MAX_GUEST_VMRS, each cut to ``cap + 1`` bytes while it is read: the rest of a big
    file streams past, never held whole."""
    taken = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(ChunkReader(chunks), 65536), mode="r|") as tf:
            for member in tf:
                top, _, name = member.name.partition("/")
                if not (member.isreg() and top and name and "/" not in name and name.endswith(".vmr")
                        and not name.startswith(".")):
                    continue
                with tf.extractfile(member) as f:
                    (dest / name).write_bytes(f.read(cap + 1))
                taken += 1
                if taken == results.MAX_GUEST_VMRS:
                    break
    except tarfile.TarError as exc:
        raise ExecutorError(f"results copied out of {guest} are not a valid tar stream: {exc}") from None


class Usage:
    """A container's CPU time and peak memory, from its cgroup (found from its init's
    pid): cgroup v1's ``cpuacct.usage`` and ``memory.max_usage_in_bytes`` (reset before
    each step, so the peak is the step's: its processes' memory and page cache, the
    files it wrote to the container's tmpfs folders included), cgroup v2's
    ``cpu.stat`` and ``memory.peak`` (the container's peak since it started)."""

    def __init__(self, init_pid: int):
        paths = cgroups.process_cgroups(init_pid)
        mounts = cgroups.cgroup_mounts()
        self.v1 = "memory" in mounts and "cpuacct" in mounts
        if self.v1:
            self.memory, self.cpu = mounts["memory"] / paths.get("memory", ""), mounts["cpuacct"] / paths.get("cpuacct", "")
        else:
            self.memory = self.cpu = mounts.get("unified", Path("/sys/fs/cgroup")) / paths.get("unified", "")

    def start(self) -> int | None:
        """Reset the peak; the CPU time so far (ns)."""
        if self.v1:
            _write(self.memory / "memory.max_usage_in_bytes", "0")
        return self._cpu_ns()

    def since(self, cpu_before: int | None) -> tuple[float | None, int | None]:
        """(CPU seconds since ``cpu_before``, peak KiB)."""
        cpu = self._cpu_ns()
        peak = _number(self.memory / ("memory.max_usage_in_bytes" if self.v1 else "memory.peak"))
        cpu_s = None if cpu is None or cpu_before is None else round((cpu - cpu_before) / 1e9, 3)
        return cpu_s, None if peak is None else peak // 1024

    def _cpu_ns(self) -> int | None:
        if self.v1:
            return _number(self.cpu / "cpuacct.usage")
        try:
            for line in (self.cpu / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * 1000
        except OSError:
            pass
        return None


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        log.debug("writing %s: %s", path, exc)
