"""Reading the course's SSH private key with the paramiko at hand.

``PKey.from_path`` reads a key of any type, but only paramiko 3.2 and later have it;
Debian 12's python3-paramiko (2.12), which the Debian package depends on, has not. One
function hides the difference, so the storer's connections (transport.py) and the
tester setup (testers_admin.py) read keys the same way under either.
"""

from __future__ import annotations

from pathlib import Path

import paramiko


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
