"""What differs between the paramiko the pip route installs (3.2 and later) and Debian
12's python3-paramiko (2.12), which the Debian package depends on; the storer uses
these calls, so that its connections (storer/transport.py), the words of its SSH
failures (storer/ssh_failures.py) and the tester setup (storer/testers_admin.py) behave
alike under either.

- ``PKey.from_path`` reads a private key of any type; 2.12 has not got it, so each key
  class is tried in turn.
- ``PKey.fingerprint`` is the OpenSSH-style ``SHA256:...`` a sysadmin compares with
  ``ssh-keygen -lf``; 2.12 has not got it, so it is computed the same way.
- ``SSHClient.connect(channel_timeout=...)`` bounds how long opening a channel (an SFTP
  session, a command) waits for the server; 2.12 has not got it and waits an hour, so
  there the connection's ``open_channel`` gets the same bound as its default.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
from pathlib import Path
from typing import Any

import paramiko

CHANNEL_TIMEOUT_OPTION = "channel_timeout" in inspect.signature(paramiko.SSHClient.connect).parameters


def load_private_key(path: Path | str) -> paramiko.PKey:
    """The private key in ``path``, of whatever type. Raises what paramiko raises
    (SSHException, OSError, ValueError)."""
    from_path = getattr(paramiko.PKey, "from_path", None)
    if from_path is not None:
        return from_path(path)
    errors = []
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key_file(str(path))
        except paramiko.SSHException as exc:
            errors.append(exc)
    raise errors[0]   # the ed25519 reader's words: vmchecker makes ed25519 course keys


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of the public key, as OpenSSH
    and paramiko 3.2+ show it."""
    shown = getattr(key, "fingerprint", None)
    if isinstance(shown, str):
        return shown
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def connect(client: paramiko.SSHClient, *args: Any, channel_timeout: float, **options: Any) -> None:
    """``client.connect(*args, channel_timeout=channel_timeout, **options)``, on any paramiko."""
    if CHANNEL_TIMEOUT_OPTION:
        client.connect(*args, channel_timeout=channel_timeout, **options)
        return
    client.connect(*args, **options)
    transport = client.get_transport()
    open_channel = transport.open_channel

    def open_channel_bounded(*a: Any, timeout: float | None = None, **kw: Any) -> paramiko.Channel:
        return open_channel(*a, timeout=channel_timeout if timeout is None else timeout, **kw)

    transport.open_channel = open_channel_bounded
