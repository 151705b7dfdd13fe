"""The capped download of one job's result files over an open SFTP channel.

A tester's results are untrusted input: its account may have been taken over, or its
executor may have written a link, a device or a file that never stops growing. What may
come back is decided here, apart from the connection handling of
:mod:`vmchecker.storer.transport`, so the rules can be read (and tested) in one place:
plain names only, regular files only (as ``lstat`` says, so a symbolic link is refused,
and before anything is opened: opening a FIFO would hang the tester's SFTP server;
checked again on the open file, in case it was swapped), each under a per-file cap and
all under a total cap counted on the bytes actually copied (a file may grow after the
``lstat``). Every refusal is a :class:`~vmchecker.errors.ResultRefused` (the tester
misbehaved), never a TransportError (the network failed).

The files are fetched together, not one after the other: the ``lstat`` of every file
goes out in one batch (:mod:`~vmchecker.storer.sftp_pipeline`), then every open, then
the check and the reads of every file, then every close: four round trips for a job's
results instead of five per file. A file longer than it was said to be, or a server
that answers a read short, costs another round of reads from where the copy stands.

Durability: each file is written whole, then every file is fsynced (data and inode),
before :func:`download_all` returns; the caller then renames them into place and fsyncs
the folder, so a job journaled done has its results on disk, as when each file was
fsynced as soon as written. Fsyncing them all at the end, not one by one between the
downloads, lets the first fsync commit the file system's journal with every file's
creation and leaves the others little to do. ``syncfs(2)`` would have been one call but
waits for every dirty page of the file system, anyone's (140 ms instead of 6 ms with a
300 MB write of another process in flight, measured on ext4).

The all-or-nothing part (a staging folder moved into place only when every file
arrived) belongs to :meth:`~vmchecker.storer.transport.TesterLink.fetch_results`, which
calls :func:`download_all` on its own channel and closes that channel if it raises
(answers may still be in flight on it).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import paramiko
from paramiko import sftp as proto

from vmchecker import rpc
from vmchecker.errors import ResultRefused, RpcError
from vmchecker.storer.sftp_pipeline import Answer, Batch, attributes, exchange, status_error

MAX_RESULT_FILE = 16 * 1024 * 1024
MAX_RESULT_TOTAL = 64 * 1024 * 1024
_CHUNK = 32 * 1024          # one read request: paramiko's own size, which every server takes
_ROUND = 4 * 1024 * 1024    # bytes asked for in one round of reads, over all files: what it holds in memory


def check_name(name: Any) -> str:
    """A plain result file name (:func:`vmchecker.rpc.check_file_name`), or ResultRefused."""
    try:
        return rpc.check_file_name(name)
    except RpcError as exc:
        raise ResultRefused(f"refused result file: {exc.message}") from None


@dataclass
class _Copy:
    """One file on its way from the tester into the staging folder."""
    remote: str
    size: int               # as lstat said: what the first round asks for
    local: IO[bytes]
    handle: bytes = b""
    pos: int = 0            # bytes copied, all contiguous from the start
    checked: bool = False   # the open file was found regular
    done: bool = False
    reads: list[tuple[int, int]] = field(default_factory=list)   # this round's (offset, length)


class _Caps:
    """The per-file and total caps, counted on the bytes actually copied."""

    def __init__(self, where: str, max_file_size: int, max_total_size: int):
        self.where, self.max_file, self.max_total = where, max_file_size, max_total_size
        self.total = 0

    def limits(self) -> str:
        return f"({self.max_file} per file, {self.max_total} in all)"

    def check_listed(self, remote: str, size: int, listed_before: int) -> None:
        """Refuse a file whose lstat size is already over a cap (nothing of it copied)."""
        if size > self.max_file or listed_before + size > self.max_total:
            raise _refuse(self.where, remote, f"{size} bytes is over the limit {self.limits()}")

    def count(self, copy: _Copy, n: int) -> None:
        """Count ``n`` more bytes of ``copy`` before they are written; refuse past a cap."""
        if copy.pos + n > self.max_file or self.total + n > self.max_total:
            raise _refuse(self.where, copy.remote, f"it grew past the limit {self.limits()}")
        self.total += n


def download_all(sftp: paramiko.SFTPClient, remote_dir: str, names: list[str], staging: Path, *, where: str,
                 max_file_size: int = MAX_RESULT_FILE, max_total_size: int = MAX_RESULT_TOTAL) -> None:
    """Copy each of ``names`` (already checked) from ``remote_dir`` into ``staging``, fsynced,
    within the caps; ``where`` names the tester in a refusal."""
    caps = _Caps(where, max_file_size, max_total_size)
    remotes = [posixpath.join(remote_dir, name) for name in names]
    sizes = _lstat_all(sftp, remote_dir, remotes, caps)
    with contextlib.ExitStack() as files:
        copies = [_Copy(remote, size, files.enter_context(open(staging / name, "wb")))
                  for remote, size, name in zip(remotes, sizes, names, strict=True)]
        opening = [(proto.CMD_OPEN, (c.remote, proto.SFTP_FLAG_READ, paramiko.SFTPAttributes())) for c in copies]
        for copy, answer in zip(copies, exchange(sftp, opening), strict=True):
            copy.handle = _expect(answer, proto.CMD_HANDLE).get_binary()
        while pending := [c for c in copies if not c.done]:
            _read_round(sftp, pending, caps)
        closing = Batch(sftp, [(proto.CMD_CLOSE, (c.handle,)) for c in copies])
        for copy in copies:   # while the tester closes them
            copy.local.flush()
            os.fsync(copy.local.fileno())
        for answer in closing.answers():
            _expect(answer, None)


def _refuse(where: str, remote: str, why: str) -> ResultRefused:
    return ResultRefused(f"{where}: refused result file {remote}: {why}")


def _expect(answer: Answer, wanted: int | None) -> paramiko.Message:
    """The body of ``answer`` if it is of type ``wanted`` (None: a status OK), else its
    error raised as paramiko would (an SFTP status as OSError, a garbled answer as
    SSHException)."""
    kind, msg = answer
    if kind == wanted:
        return msg
    error = status_error(kind, msg)
    if wanted is None and error is None and kind == proto.CMD_STATUS:
        return msg
    raise error if isinstance(error, OSError) else _garbled(kind, wanted)


def _garbled(kind: int, wanted: int | None) -> paramiko.SSHException:
    return paramiko.SSHException(f"unexpected SFTP answer of type {kind} (expected {wanted or 'a status'})")


def _lstat_all(sftp: paramiko.SFTPClient, remote_dir: str, remotes: list[str], caps: _Caps) -> list[int]:
    """The sizes of ``remotes``, each a regular file by its lstat and within the caps."""
    answers = exchange(sftp, [(proto.CMD_LSTAT, (path,)) for path in [remote_dir, *remotes]])
    try:
        _expect(answers[0], proto.CMD_ATTRS)
    except FileNotFoundError:
        raise _refuse(caps.where, remote_dir, "no such folder") from None
    sizes: list[int] = []
    for remote, answer in zip(remotes, answers[1:], strict=True):
        try:
            attrs = attributes(_expect(answer, proto.CMD_ATTRS))
        except FileNotFoundError:
            raise _refuse(caps.where, remote, "no such file") from None
        if stat.S_ISLNK(attrs.st_mode or 0):
            raise _refuse(caps.where, remote, "it is a symbolic link")
        if not stat.S_ISREG(attrs.st_mode or 0):
            raise _refuse(caps.where, remote, "not a regular file")
        caps.check_listed(remote, attrs.st_size or 0, sum(sizes))
        sizes.append(attrs.st_size or 0)
    return sizes


def _read_round(sftp: paramiko.SFTPClient, pending: list[_Copy], caps: _Caps) -> None:
    """One batch of reads: each file from where its copy stands to one chunk past its
    lstat size (its end of file, if it did not grow), up to ``_ROUND`` bytes in all; a
    file's first round also checks the open file (fstat) before its reads."""
    requests: list[tuple[int, tuple[Any, ...]]] = []
    planned: list[_Copy] = []
    room = _ROUND
    for copy in pending:
        if room <= 0:
            break
        end = min(max(copy.size, copy.pos) + _CHUNK, copy.pos + room)
        copy.reads = [(offset, min(_CHUNK, end - offset)) for offset in range(copy.pos, end, _CHUNK)]
        if not copy.checked:
            requests.append((proto.CMD_FSTAT, (copy.handle,)))
        requests += [(proto.CMD_READ, (copy.handle, proto.int64(offset), length)) for offset, length in copy.reads]
        room -= end - copy.pos
        planned.append(copy)
    answers = iter(exchange(sftp, requests))
    for copy in planned:
        if not copy.checked:
            attrs = attributes(_expect(next(answers), proto.CMD_ATTRS))
            if not stat.S_ISREG(attrs.st_mode or 0):  # swapped since the lstat
                raise _refuse(caps.where, copy.remote, "not a regular file")
            copy.checked = True
        _take(copy, [next(answers) for _ in copy.reads], caps)


def _take(copy: _Copy, answers: list[Answer], caps: _Caps) -> None:
    """Write the answers of ``copy``'s reads that continue its copy, up to its end of file."""
    before = copy.pos
    for (offset, _length), (kind, msg) in zip(copy.reads, answers, strict=True):
        if offset != copy.pos:  # an earlier read came back short: the next round asks from copy.pos
            break
        if kind != proto.CMD_DATA:
            error = status_error(kind, msg)
            if isinstance(error, EOFError):
                copy.done = True
                break
            raise error if isinstance(error, OSError) else _garbled(kind, proto.CMD_DATA)
        data = msg.get_binary()
        caps.count(copy, len(data))
        copy.local.write(data)
        copy.pos += len(data)
    if not copy.done and copy.pos == before:
        raise _refuse(caps.where, copy.remote, "its SFTP server sent neither data nor the end of the file")
