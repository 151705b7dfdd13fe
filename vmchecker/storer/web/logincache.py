"""Successful LDAP logins, remembered so a dead LDAP server does not lock students out.

Each entry is an argon2 hash of the password that LDAP accepted, with the time it
expires. It is consulted only when LDAP cannot be reached, never when LDAP answers
(a changed or revoked password takes effect as soon as LDAP is back). Stored as JSON,
rewritten atomically with mode 0600.

LDAP compares user names case-insensitively, so entries are keyed by the casefolded
name and keep the name as LDAP spells it: ``CAROL`` logging in from the cache is the
same account ``carol`` as when LDAP answered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vmchecker import fsutil
from vmchecker.storer.web.passwords import hash_password, verify_hash

log = logging.getLogger(__name__)


class LoginCache:
    def __init__(self, path: Path | str, ttl: float, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable login cache, starting empty: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def remember(self, name: str, password: str) -> None:
        """Store a login LDAP just accepted (``name`` as LDAP spells it); drop expired
        entries while at it."""
        with self._lock:
            now = self._clock()
            entries = {k: v for k, v in self._read().items()
                       if isinstance(v, dict) and v.get("expires", 0) > now}
            entries[name.casefold()] = {"name": name, "hash": hash_password(password), "expires": now + self.ttl}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fsutil.write_atomic(self.path, json.dumps(entries, indent=1, sort_keys=True), mode=0o600)

    def verify(self, name: str, password: str) -> str | None:
        """The account's name as LDAP spelled it when ``name`` (in any case) logged in
        with ``password`` before and that has not expired; None otherwise."""
        key = name.casefold()
        with self._lock:
            entry = self._read().get(key)
        if not isinstance(entry, dict) or entry.get("expires", 0) <= self._clock():
            return None
        if not verify_hash(str(entry.get("hash", "")), password):
            return None
        stored = entry.get("name")
        return stored if isinstance(stored, str) and stored.casefold() == key else key
