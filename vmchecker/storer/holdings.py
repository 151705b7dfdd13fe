"""What a tester holds, read over SFTP: which bundles wait in its queue, which results
are complete in its ``done/``.

How the daemon settles a job it is unsure of without waiting for its notify deadline:
after a restart (a send left in doubt), when a tester's queue manager says it is back,
or when a tester answers again after an outage. The tester commits a job's results into
``done/<job>/`` (marker last) before its bundle leaves ``queue/``, so a look that lists
the queue first and ``done/`` second never misses a job that ran: a bundle gone from the
first listing left its results in the second.

Functions here take an open SFTP client; :class:`~vmchecker.storer.transport.TesterLink`
runs them on its connection and turns failures into its errors.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paramiko

from vmchecker.contract import DONE_MARKER
from vmchecker.errors import ResultRefused
from vmchecker.rpc import MAX_FILES
from vmchecker.storer.result_fetch import check_name


def has_bundle(names: Iterable[str], job_id: str) -> bool:
    """Whether a queue listing holds a complete bundle of ``job_id`` (never a ``.part``)."""
    suffix = f"_{job_id}.zip"
    return any(name.endswith(suffix) for name in names)


@dataclass(frozen=True)
class Holdings:
    """One look at a tester: the bundle names in its queue, the folder names in its done/."""

    queued: frozenset[str]
    done: frozenset[str]

    def where(self, job_id: str) -> str | None:
        """``"queued"`` (its bundle waits or runs), ``"done"`` (a results folder) or None."""
        if has_bundle(self.queued, job_id):
            return "queued"
        return "done" if job_id in self.done else None


def look(sftp: paramiko.SFTPClient, queue: str, done_dir: str,
         queue_error: Callable[[OSError], Exception]) -> Holdings:
    """List ``queue`` (a missing or closed one is ``queue_error``), then ``done_dir``."""
    try:
        queued = frozenset(n for n in sftp.listdir(queue) if n.endswith(".zip"))
    except (FileNotFoundError, PermissionError) as exc:
        raise queue_error(exc) from None
    try:
        done = frozenset(sftp.listdir(done_dir))
    except FileNotFoundError:
        done = frozenset()
    return Holdings(queued, done)


def finished(sftp: paramiko.SFTPClient, remote_dir: str) -> list[str] | None:
    """The result files of a job folder whose results are complete (its ``DONE_MARKER``
    is there), as the tester's notify names them: plain names of regular files, no
    dotfiles; None while they are incomplete or absent."""
    try:
        entries = sftp.listdir_attr(remote_dir)
    except FileNotFoundError:
        return None
    if not any(e.filename == DONE_MARKER for e in entries):
        return None
    names = sorted(e.filename for e in entries
                   if not e.filename.startswith(".") and stat.S_ISREG(e.st_mode or 0) and _plain(e.filename))
    return names[:MAX_FILES]


def _plain(name: str) -> bool:
    try:
        check_name(name)
    except ResultRefused:
        return False
    return True
