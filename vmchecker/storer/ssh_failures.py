"""What a failed SSH/SFTP step towards a tester means, in words a sysadmin can act on.

:mod:`vmchecker.storer.transport` moves bytes; knowing what a failure says about the
setup is separate knowledge and lives here: which errno means nothing listens or no
route, which paramiko exception means an unknown or changed host key or a refused (often
locked) account, what a missing or closed queue folder asks of the tester's admin. A
wrong message sends the admin to the wrong machine, so these words are kept in one
place, next to each other, where they can be read and corrected together.

Each function returns a :class:`~vmchecker.errors.TransportError` naming the tester, what
failed, why and what to do; the caller raises it (``from None``: the paramiko traceback
says less than the message). Nothing here opens a connection, and this module imports
nothing of the storer's.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import paramiko

from vmchecker.errors import TransportError
from vmchecker.paramiko_compat import fingerprint


class _UnknownHostKey(paramiko.SSHException):
    """Private signal from :class:`RejectUnknown` out of paramiko's connect, which only lets
    an ``SSHException`` through; it carries the offered key and never leaves this module
    (:func:`connect_error` turns it into a TransportError)."""

    def __init__(self, entry: str, key: paramiko.PKey):
        super().__init__(f"{entry} not in known_hosts")
        self.entry = entry
        self.key = key


class RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy that keeps the offered key, so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


def describe(exc: BaseException) -> str:
    """The short reason of a failure: "timed out", the OS's words, or the exception's."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text


# What a sysadmin can do about a connection that failed, by the errno under it.
_CONNECT_HINTS = {
    errno.ECONNREFUSED: "nothing listens there: is sshd running on the tester, on this address and port?",
    errno.EHOSTUNREACH: "no route to the tester: check its address and the network between the two",
    errno.ENETUNREACH: "no route to the tester: check its address and the network between the two",
}


def _connect_failure(exc: BaseException) -> str:
    """Why a connection failed, with what to check."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out: is the tester up, and does a firewall let the storer reach its SSH port?"
    causes = list(getattr(exc, "errors", {}).values()) or [exc]  # paramiko's NoValidConnectionsError
    for cause in causes:
        hint = _CONNECT_HINTS.get(getattr(cause, "errno", None))
        if hint:
            return f"{describe(cause)}: {hint}"
    return describe(exc)


def key_error(exc: BaseException, where: str, key_file: Path) -> TransportError:
    """The course's private key could not be loaded."""
    if isinstance(exc, FileNotFoundError):
        return TransportError(f"{where}: the course's private key {key_file} does not exist")
    return TransportError(f"{where}: cannot read the private key {key_file}: {exc}")


def known_hosts_error(exc: BaseException, where: str, known_hosts: Path) -> TransportError:
    """The course's known_hosts could not be loaded."""
    if isinstance(exc, FileNotFoundError):
        return TransportError(
            f"{where}: the known_hosts file {known_hosts} does not exist;"
            " record the tester's host key with vmchecker-init-course --add-tester")
    return TransportError(f"{where}: cannot read known_hosts {known_hosts}: {exc}")


def connect_error(exc: BaseException, *, where: str, entry: str, known_hosts: Path, user: str,
                  key_file: Path) -> TransportError:
    """An SSH connection (under :class:`RejectUnknown`) failed: unknown host, changed host
    key, refused key (or locked account), or the network; ``entry`` is the tester's
    known_hosts name."""
    if isinstance(exc, _UnknownHostKey):
        return TransportError(
            f"{where}: host {entry} is not in {known_hosts} (it offered {exc.key.get_name()}"
            f" {fingerprint(exc.key)}); unknown hosts are never accepted automatically:"
            " record it with vmchecker-init-course --add-tester")
    if isinstance(exc, paramiko.BadHostKeyException):
        return TransportError(
            f"{where}: host key mismatch for {entry}: it offered {exc.key.get_name()}"
            f" {fingerprint(exc.key)} but {known_hosts} records {fingerprint(exc.expected_key)};"
            " if the tester was reinstalled, remove its line there and add it again,"
            " otherwise the connection may be intercepted")
    if isinstance(exc, paramiko.AuthenticationException):
        return TransportError(
            f"{where}: authentication refused: {user}@{entry} refused the course key"
            f" {key_file}. On the tester, install its public key in ~{user}/.ssh/authorized_keys"
            " (vmchecker-init-course tester DIR --user USER --storer-key FILE does it); if sshd logs"
            f" 'account is locked', unlock the account for key logins with: usermod -p '*' {user}")
    return TransportError(f"{where}: cannot connect: {_connect_failure(exc)}")


def queue_error(exc: OSError, *, where: str, tester: str, user: str, queue: str) -> TransportError:
    """A queue folder that is missing or closed to the account, in actionable words."""
    if isinstance(exc, FileNotFoundError):
        return TransportError(f"{where}: the queue folder {queue} does not exist on the tester:"
                              " create it with vmchecker-init-course tester DIR there, or correct"
                              f" testers.{tester}.queue")
    if isinstance(exc, PermissionError):
        return TransportError(f"{where}: {user} may not write in the queue folder {queue}:"
                              f" on the tester, chown {user} {queue} (vmchecker-init-course"
                              " tester DIR --user USER does it), and let it reach the folders above")
    return TransportError(f"{where}: cannot write in the queue folder {queue}: {describe(exc)}")
