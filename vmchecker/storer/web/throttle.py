"""Login throttling: too many failures for one account from one client, or from one
client in all, and further attempts from that client are refused for a while, right
password or not.

An account is counted per client, never alone: a count per account name would let
anybody lock a classmate out (five wrong passwords for ``bob`` and bob could not log
in from anywhere, the night of a deadline). A guesser is held back by the per-client
limits; behind a reverse proxy the client is the forwarded address
(``vmchecker-web --trusted-proxy``).

Counts live in memory (one web process, many threads); a restart forgets them, which
only gives a guesser a few more tries. Failures older than the window stop counting.

The memory stays bounded by what a window can hold: a name that no account can have
(see :data:`vmchecker.contract.ACCOUNT_RE`) gets no bucket of its own and
counts against its address only, account names are at most 64 characters and compared
case-insensitively (LDAP's ``Carol`` is ``carol``), and every key is swept once its
failures have all expired, not only when the same key is seen again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0   # seconds between sweeps of expired keys (at most; sooner for a shorter window)


@dataclass(frozen=True)
class Limits:
    """At most ``per_account`` failures for one account from one address, and
    ``per_address`` from one address in all, within ``window`` seconds."""

    per_account: int = 5
    per_address: int = 20
    window: float = 900.0


Key = tuple[str, ...]


def _account_key(account: str, address: str) -> Key:
    return ("account", account.casefold(), address)


def _keys(account: str | None, address: str) -> list[Key]:
    keys: list[Key] = [("address", address)]
    if account is not None:
        keys.append(_account_key(account, address))
    return keys


class Throttle:
    """``account`` is None for a name that failed the account-name check: such an
    attempt counts against the address only."""

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or Limits()
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[Key, deque[float]] = {}
        self._last_prune = clock()

    def __len__(self) -> int:
        """How many keys are held (expired ones included until the next sweep)."""
        with self._lock:
            return len(self._failures)

    def _limit(self, key: Key) -> int:
        return self.limits.per_account if key[0] == "account" else self.limits.per_address

    def _recent(self, key: Key, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.limits.window:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def _prune(self, now: float) -> None:
        """Drop every key whose failures have all expired (called under the lock)."""
        if now - self._last_prune < min(PRUNE_EVERY, self.limits.window):
            return
        self._last_prune = now
        before = len(self._failures)
        for key in list(self._failures):
            self._recent(key, now)
        if before != len(self._failures):
            log.debug("throttle: swept %d expired keys, %d left", before - len(self._failures),
                      len(self._failures))

    def retry_after(self, account: str | None, address: str) -> float:
        """Seconds until another attempt is allowed; 0 when one is allowed now."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            wait = 0.0
            for key in _keys(account, address):
                q, limit = self._recent(key, now), self._limit(key)
                if len(q) >= limit:
                    wait = max(wait, q[len(q) - limit] + self.limits.window - now)
            return max(wait, 0.0)

    def failed(self, account: str | None, address: str) -> None:
        with self._lock:
            now = self._clock()
            self._prune(now)
            for key in _keys(account, address):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, account: str, address: str) -> None:
        """A right password clears the account's count from that address (not the
        address's own)."""
        with self._lock:
            self._failures.pop(_account_key(account, address), None)
