"""The storer daemons this tester works for, remembered so a restarted queue manager can
tell each that it is back.

A queue manager killed mid-job loses nothing (the bundle stays queued and runs again), but
the daemon that sent the bundles does not know it restarted, and would otherwise wait for
each job's notify or deadline. So at start-up the queue manager calls ``tester_back`` on
every daemon it knows of, once per course, and each daemon looks at once at the jobs it
sent here (:mod:`vmchecker.storer.recheck`).

Where a daemon is and what proves this tester's identity to it both come from bundles:
the notify URL (else ``tester.storer_daemon``), the course, and this tester's own key for
that course (``tester_key``), which only bundles sent to this tester carry. The daemons
known are those of the bundles in ``queue/`` now, and those of every bundle run before,
kept in ``state/storers.json`` (0600, root's: it holds keys).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from vmchecker import fsutil, rpc
from vmchecker.errors import RpcError
from vmchecker.tester.jobs import peek_identity
from vmchecker.tester_config import TesterConfig

log = logging.getLogger(__name__)

STORERS_FILE = "storers.json"
MAX_STORERS = 256   # (daemon, course) pairs remembered; a tester serves a few


@dataclass(frozen=True, order=True)
class StorerRef:
    """One course on one storer daemon, and this tester's key for it."""

    url: str
    course: str
    tester_key: str

    @classmethod
    def checked(cls, url: str, course: str, tester_key: str) -> StorerRef | None:
        """The reference when every part is well-formed, else None."""
        try:
            return cls(rpc.check_url(url), rpc.check_id("course", course), rpc.check_key(tester_key))
        except RpcError:
            return None


class KnownStorers:
    """``state/storers.json``: ``{url: {course: tester_key}}``; thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._refs = self._read()

    def _read(self) -> dict[tuple[str, str], StorerRef]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable (%s); the storers it named are told only once a bundle of theirs"
                      " comes", self.path, exc)
            return {}
        refs = {}
        for url, courses in (data.items() if isinstance(data, dict) else ()):
            for course, key in (courses.items() if isinstance(courses, dict) else ()):
                ref = StorerRef.checked(url, course, key) if isinstance(key, str) else None
                if ref is not None:
                    refs[(ref.url, ref.course)] = ref
        return refs

    def remember(self, ref: StorerRef) -> None:
        """Keep ``ref`` (a newer key for the same daemon and course replaces the old one)."""
        with self._lock:
            if self._refs.get((ref.url, ref.course)) == ref:
                return
            if len(self._refs) >= MAX_STORERS and (ref.url, ref.course) not in self._refs:
                log.warning("%s: already %d storers remembered; not adding %s", self.path, MAX_STORERS, ref.url)
                return
            self._refs[(ref.url, ref.course)] = ref
            data: dict[str, dict[str, str]] = {}
            for r in sorted(self._refs.values()):
                data.setdefault(r.url, {})[r.course] = r.tester_key
            fsutil.write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)

    def all(self) -> list[StorerRef]:
        with self._lock:
            return sorted(self._refs.values())


def from_bundle(bundle_zip: Path, config: TesterConfig) -> StorerRef | None:
    """Who sent a bundle, as a reference to remember (None if it does not say, or says it badly)."""
    identity = peek_identity(bundle_zip)
    return StorerRef.checked(config.notify_url(identity.get("notify_url", "")), identity.get("course", ""),
                             identity.get("tester_key", ""))


def back_calls(refs: list[StorerRef], tester: str) -> list[tuple[str, rpc.BackRequest]]:
    """``(url, request)`` for each daemon and course to tell that ``tester`` is back."""
    calls = []
    for ref in refs:
        try:
            calls.append((ref.url, rpc.BackRequest.validate(ref.course, tester, ref.tester_key)))
        except RpcError as exc:
            log.error("cannot tell %s that tester %s is back: %s", ref.url, tester, exc.message)
    return calls
