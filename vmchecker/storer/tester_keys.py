"""Each tester's own key: how a queue manager proves which tester it is.

A tester that restarted tells the daemon so (``tester_back``), and the daemon then looks
at once at every job it sent there. That call must come from the tester it names: from
that tester's address, as ``notify`` must, and with a secret no other tester holds, since
testers may share an address (several on one host, or behind one NAT) and a tester is
only semi-trusted. Job keys will not do: a job resent from t1 to t2 keeps its key, so t1
would hold a key of a job that is now t2's.

So each (course, tester) has a key of its own, derived from one random secret of the
daemon's (``tester-keys.secret`` in its state folder, 0600, made at first start) by
HMAC-SHA256: nothing per tester is stored or configured, and every bundle sent to a
tester carries that tester's key (``tester_key`` in its submission-config, which stays
root's on the tester, as the job key does). A tester sees only its own bundles, so it
learns only its own key. A lost secret file is made anew: the keys testers remember stop
working until each receives its next bundle, which costs only the speed-up, never a job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from vmchecker.errors import VmcheckerError
from vmchecker.fsutil import fsync_dir

log = logging.getLogger(__name__)

SECRET_FILE = "tester-keys.secret"
SECRET_BYTES = 32


class TesterKeys:
    """The daemon's secret and the per-tester keys derived from it."""

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / SECRET_FILE
        self._secret = _load_or_make(self.path)

    def key(self, course: str, tester: str) -> str:
        """Tester ``tester``'s key for ``course`` (43 URL-safe characters)."""
        digest = hmac.new(self._secret, f"{course}\0{tester}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check(self, course: str, tester: str, key: object) -> bool:
        """Whether ``key`` is ``tester``'s key for ``course``, compared in constant time."""
        if not isinstance(key, str):
            return False
        return hmac.compare_digest(self.key(course, tester).encode(), key.encode("utf-8", "surrogatepass"))


def _load_or_make(path: Path) -> bytes:
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(SECRET_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:   # another start made it meanwhile: use that one
            return _load_or_make(path)
        except OSError as exc:
            raise VmcheckerError(f"{path}: cannot create the testers' key secret: {exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path.parent)
        log.info("made a new secret for the testers' keys in %s", path)
        return secret
    except OSError as exc:
        raise VmcheckerError(f"{path}: cannot read the testers' key secret: {exc}") from None
    if len(secret) < SECRET_BYTES:
        raise VmcheckerError(f"{path}: the testers' key secret is truncated ({len(secret)} bytes);"
                             " remove the file (a new one is made at start) and restart")
    return secret
