"""The interrupt gate: a SIGTERM becomes :class:`~vmchecker.errors.Interrupted`, except
inside a critical section, where it waits for the section to end.

The executor's signal handler calls :func:`interrupt`; a backend wraps what must not be
cut in half (starting a guest process and recording its pid, so cleanup can reap it) in
:func:`uninterruptible`, and so does the generic flow around its final cleanup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vmchecker.errors import Interrupted


class _Gate:
    """How deep in critical sections this process is, and the interruption held back."""

    depth = 0
    pending: str | None = None


def interrupt(reason: str) -> None:
    """Called from a signal handler: raise Interrupted now, or when the critical
    section in progress ends."""
    if _Gate.depth:
        _Gate.pending = reason
    else:
        raise Interrupted(reason)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """A critical section: an :func:`interrupt` inside it is raised when it ends."""
    _Gate.depth += 1
    try:
        yield
    finally:
        _Gate.depth -= 1
        if not _Gate.depth and _Gate.pending:
            reason, _Gate.pending = _Gate.pending, None
            raise Interrupted(reason)
