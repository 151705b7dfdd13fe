"""The web's password file: one ``name:hash`` line per account, never a plain password.

New hashes are argon2id (argon2-cffi); bcrypt hashes (``$2b$...``, e.g. from
``htpasswd -B``) are also accepted so an existing htpasswd file keeps working. The
file is re-read when it changes on disk, so adding a user needs no restart.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import argon2
import bcrypt

from vmchecker import fsutil
from vmchecker.contract import ACCOUNT_RE
from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)

_hasher = argon2.PasswordHasher()
# Compared against when the account is unknown, so a miss costs as much as a hit
# and response times do not tell which accounts exist.
_DUMMY_HASH = _hasher.hash("no such account")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salted; safe to store)."""
    return _hasher.hash(password)


def verify_hash(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored`` (argon2 or bcrypt); False on any mismatch."""
    try:
        if stored.startswith("$argon2"):
            return _hasher.verify(stored, password)
        if stored.startswith(("$2a$", "$2b$", "$2y$")):
            return bcrypt.checkpw(password.encode("utf-8")[:72], stored.encode("ascii"))
    # InvalidHash: InvalidHashError's older name, the only one Debian 12's argon2-cffi (21.1) has.
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHash, ValueError):
        return False
    log.warning("unsupported password hash format %r...", stored[:8])
    return False


def check_name(name: str) -> str:
    if not ACCOUNT_RE.match(name or ""):
        raise VmcheckerError(f"bad user name {name!r}: use letters, digits, '_', '-', '.', '@'")
    return name


def parse(text: str, source: Path | str) -> dict[str, str]:
    """``name:hash`` lines; blank lines and ``#`` comments ignored; bad lines logged."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not ACCOUNT_RE.match(name) or not stored.startswith("$"):
            log.warning("%s:%d: ignored: expected NAME:HASH", source, number)
            continue
        users[name] = stored
    return users


class PasswordFile:
    """Thread-safe reader (and writer, for ``--add-user``) of a password file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None

    def _load(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                text = self.path.read_text(encoding="utf-8")
                self._users, self._stamp = parse(text, self.path), stamp
            return self._users

    def names(self) -> list[str]:
        return sorted(self._load())

    def exists(self, name: str) -> bool:
        """True while ``name`` is in the file (a removed user's sessions end at once)."""
        return name in self._load()

    def verify(self, name: str, password: str) -> bool:
        """True when ``name`` is in the file and ``password`` matches its hash."""
        stored = self._load().get(name)
        if stored is None:
            verify_hash(_DUMMY_HASH, password)
            return False
        return verify_hash(stored, password)

    def set(self, name: str, password: str) -> None:
        """Add ``name`` or replace its password (atomic rewrite, mode 0600)."""
        check_name(name)
        if not password:
            raise VmcheckerError("refusing an empty password")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with fsutil.locked(self.path.with_name(f".{self.path.name}.lock")):
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
            kept = [line for line in lines if line.partition(":")[0].strip() != name]
            kept.append(f"{name}:{hash_password(password)}")
            fsutil.write_atomic(self.path, "\n".join(kept) + "\n", mode=0o600)
        log.info("%s: password set for %s", self.path, name)
