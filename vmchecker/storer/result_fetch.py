"""The capped download of one job's result files over an open SFTP channel.

A tester's results are untrusted input: its account may have been taken over, or its
executor may have written a link, a device or a file that never stops growing. What may
come back is decided here, apart from the connection handling of
:mod:`vmchecker.storer.transport`, so the rules can be read (and tested) in one place:
plain names only, regular files only (as the folder's listing says, whose attributes
are the files' ``lstat``, so a symbolic link is refused; checked again on the open file,
in case it was swapped), each under a per-file cap and all under a total cap counted on
the bytes actually copied (a file may grow after the listing). One listing of the folder
instead of an ``lstat`` per file saves a round trip per file on the job's path. Every refusal is a :class:`~vmchecker.errors.ResultRefused` (the tester
misbehaved), never a TransportError (the network failed).

The all-or-nothing part (a staging folder moved into place only when every file
arrived) belongs to :meth:`~vmchecker.storer.transport.TesterLink.fetch_results`, which
calls :func:`download_all` on its own channel.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path
from typing import Any

import paramiko

from vmchecker import rpc
from vmchecker.errors import ResultRefused, RpcError

MAX_RESULT_FILE = 16 * 1024 * 1024
MAX_RESULT_TOTAL = 64 * 1024 * 1024
_CHUNK = 32 * 1024


def check_name(name: Any) -> str:
    """A plain result file name (:func:`vmchecker.rpc.check_file_name`), or ResultRefused."""
    try:
        return rpc.check_file_name(name)
    except RpcError as exc:
        raise ResultRefused(f"refused result file: {exc.message}") from None


def download_all(sftp: paramiko.SFTPClient, remote_dir: str, names: list[str], staging: Path, *, where: str,
                 max_file_size: int = MAX_RESULT_FILE, max_total_size: int = MAX_RESULT_TOTAL) -> None:
    """Copy each of ``names`` (already checked) from ``remote_dir`` into ``staging``, fsynced,
    within the caps; ``where`` names the tester in a refusal."""
    budget = [max_total_size]
    try:
        listing = {entry.filename: entry for entry in sftp.listdir_attr(remote_dir)}
    except FileNotFoundError:
        raise _refuse(where, remote_dir, "no such folder") from None
    for name in names:
        remote = posixpath.join(remote_dir, name)
        if name not in listing:
            raise _refuse(where, remote, "no such file")
        _download(sftp, remote, listing[name], staging / name, budget, where, max_file_size, max_total_size)


def _refuse(where: str, remote: str, why: str) -> ResultRefused:
    return ResultRefused(f"{where}: refused result file {remote}: {why}")


def _download(sftp: paramiko.SFTPClient, remote: str, attrs: paramiko.SFTPAttributes, local: Path,
              budget: list[int], where: str, max_file_size: int, max_total_size: int) -> None:
    if stat.S_ISLNK(attrs.st_mode or 0):
        raise _refuse(where, remote, "it is a symbolic link")
    if not stat.S_ISREG(attrs.st_mode or 0):
        raise _refuse(where, remote, "not a regular file")
    limit = min(max_file_size, budget[0])
    if (attrs.st_size or 0) > limit:
        raise _refuse(where, remote, f"{attrs.st_size} bytes is over the limit"
                      f" ({max_file_size} per file, {max_total_size} in all)")
    with sftp.open(remote, "rb") as rf, open(local, "wb") as lf:
        if not stat.S_ISREG(rf.stat().st_mode or 0):  # swapped since the lstat
            raise _refuse(where, remote, "not a regular file")
        rf.prefetch(attrs.st_size)
        copied = 0
        while chunk := rf.read(_CHUNK):
            copied += len(chunk)
            if copied > limit:  # it grew since the lstat
                raise _refuse(where, remote, f"grew past the limit of {limit} bytes")
            lf.write(chunk)
        lf.flush()
        os.fsync(lf.fileno())
    budget[0] -= copied
