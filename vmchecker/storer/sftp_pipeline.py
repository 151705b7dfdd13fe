"""SFTP requests sent together, their answers read after: one round trip for many requests.

paramiko's :class:`~paramiko.SFTPClient` sends a request and waits for its answer before
the next (its ``prefetch`` pipelines only the reads of one file already open). Fetching a
job's seven small result files that way took 35 round trips in sequence. SFTP numbers
its requests and the server answers each by number, so every request whose arguments
are already known can be sent before any answer is read: :func:`exchange` does that.

paramiko has no public call for it; :class:`Batch` uses private methods of
``SFTPClient``: ``_async_request``, which sends one numbered request and files the
object that will take its answer, and ``_read_response``, which reads one answer and
hands it to that object (the pair its own ``SFTPFile.prefetch`` is built on), and
``_write_all``, through which every request goes out: a batch gathers its requests
there and writes them at once, one SSH message and one send instead of one per
request (0.75 ms less per fetch of seven files on loopback); plus the private
``SFTPAttributes._from_msg`` to decode attributes. Nothing else here touches
paramiko's internals, and ``tests/storer/test_sftp_pipeline.py`` pins their behaviour
against a real sshd, so an upgrade that changes them fails a test, not a job.

A batch whose answers were not all read leaves answers in flight on the channel: the
caller must not use that channel again (:meth:`~vmchecker.storer.transport.TesterLink._run`
closes the channel of any operation that raised).
"""

from __future__ import annotations

import errno
from typing import Any

import paramiko
from paramiko.message import Message
from paramiko.sftp import CMD_STATUS, SFTP_EOF, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_PERMISSION_DENIED

Request = tuple[int, tuple[Any, ...]]   # an SFTP request type (paramiko.sftp.CMD_*) and its arguments
Answer = tuple[int, Message]            # an answer's type and its body after the request number


class Batch:
    """Requests sent on ``sftp`` at once; :meth:`answers` reads their answers."""

    def __init__(self, sftp: paramiko.SFTPClient, requests: list[Request]):
        self._sftp = sftp
        self._got: dict[int, Answer] = {}
        packets: list[bytes] = []
        sftp._write_all = packets.append   # gathered, then written at once: one SSH message, not one each
        try:
            self._numbers = [sftp._async_request(self, kind, *args) for kind, args in requests]
        finally:
            del sftp._write_all
        sftp._write_all(b"".join(packets))

    def _async_response(self, kind: int, msg: Message, number: int) -> None:
        """Called by paramiko's ``_read_response`` with the answer to one of our requests."""
        self._got[number] = (kind, msg)

    def answers(self) -> list[Answer]:
        """The answers, in the order of the requests (the server may answer in any order)."""
        while len(self._got) < len(self._numbers):
            self._sftp._read_response()
        return [self._got[number] for number in self._numbers]


def exchange(sftp: paramiko.SFTPClient, requests: list[Request]) -> list[Answer]:
    """Send every request of ``requests``, then read their answers (in request order)."""
    return Batch(sftp, requests).answers() if requests else []


def attributes(msg: Message) -> paramiko.SFTPAttributes:
    """The file attributes an ``ATTRS`` answer carries."""
    return paramiko.SFTPAttributes._from_msg(msg)


def status_error(kind: int, msg: Message) -> OSError | EOFError | None:
    """The error a ``STATUS`` answer reports, as paramiko raises it (EOFError at the end
    of a file; FileNotFoundError, PermissionError or a plain OSError), or None for OK;
    an answer of another type is no error."""
    if kind != CMD_STATUS:
        return None
    code, text = msg.get_int(), msg.get_text()
    if code == SFTP_OK:
        return None
    if code == SFTP_EOF:
        return EOFError(text)
    if code == SFTP_NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, text)
    if code == SFTP_PERMISSION_DENIED:
        return PermissionError(errno.EACCES, text)
    return OSError(text)
