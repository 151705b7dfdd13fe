"""Idle SFTP channels of a tester link, reused one operation at a time.

Opening an SFTP channel costs three round trips (the channel, the subsystem, the SFTP
version) and, on the tester, an ``sftp-server`` process; every send of a bundle and every
fetch of results paid it on the job's path. A :class:`~vmchecker.storer.transport.TesterLink`
keeps the channels of its live connection that ended an operation cleanly, and the next
operation takes one. A channel is never used by two operations at once (paramiko's SFTP
client is not safe for that); one that failed in any way is closed, not kept; those of a
connection that was dropped are closed when met.
"""

from __future__ import annotations

import threading

import paramiko

IDLE_LIMIT = 4   # channels kept per link: its concurrent operations are few (a sender, notifies, a recheck)


class SftpChannels:
    """The idle channels of one link (see the module docstring)."""

    def __init__(self, limit: int = IDLE_LIMIT):
        self.limit = limit
        self._idle: list[tuple[paramiko.SSHClient, paramiko.SFTPClient]] = []
        self._lock = threading.Lock()

    def take(self, client: paramiko.SSHClient) -> paramiko.SFTPClient:
        """An idle channel of ``client``, else a new one."""
        stale = []
        found = None
        with self._lock:
            while self._idle and found is None:
                owner, sftp = self._idle.pop()
                if owner is client and not sftp.get_channel().closed:
                    found = sftp
                else:
                    stale.append(sftp)
        for sftp in stale:
            sftp.close()
        return found if found is not None else client.open_sftp()

    def give_back(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient) -> None:
        """Keep ``sftp`` (it ended an operation cleanly) for the next operation on ``client``."""
        with self._lock:
            if len(self._idle) < self.limit:
                self._idle.append((client, sftp))
                return
        sftp.close()

    def clear(self) -> None:
        """Close every idle channel (the link is closing)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _client, sftp in idle:
            sftp.close()
