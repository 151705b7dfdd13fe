"""Login throttling: too many failures for one account or from one address, and
further attempts are refused for a while, right password or not.

Counts live in memory (one web process, many threads); a restart forgets them, which
only gives a guesser a few more tries. Failures older than the window stop counting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """At most ``per_account`` failures for one account and ``per_address`` from one
    address within ``window`` seconds."""

    per_account: int = 5
    per_address: int = 20
    window: float = 900.0


class Throttle:
    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or Limits()
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        now = self._clock()
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.limits.window:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until another attempt is allowed; 0 when one is allowed now."""
        with self._lock:
            wait = 0.0
            for key, limit in ((("account", account), self.limits.per_account),
                               (("address", address), self.limits.per_address)):
                q = self._recent(key)
                if len(q) >= limit:
                    wait = max(wait, q[len(q) - limit] + self.limits.window - self._clock())
            return max(wait, 0.0)

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (("account", account), ("address", address)):
                self._failures.setdefault(key, deque()).append(now)
        log.info("failed login for %r from %s", account, address)

    def succeeded(self, account: str) -> None:
        """A right password clears the account's count (not the address's)."""
        with self._lock:
            self._failures.pop(("account", account), None)
