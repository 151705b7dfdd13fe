"""Watching the tester's queue folder: which names are bundles, inotify on ``queue/`` with a
wake-up pipe (so a job's end or a stop ends the queue manager's wait at once), and whether a
bundle was queued before its job was committed (not a resend of the same job since)."""

from __future__ import annotations

import contextlib
import math
import os
import select
import warnings
from pathlib import Path

with warnings.catch_warnings():  # pyinotify imports asyncore, deprecated in 3.11
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify


def is_bundle_name(name: str) -> bool:
    """A complete bundle: ``*.zip``, not a dotfile, not an upload in progress (``.part``)."""
    return name.endswith(".zip") and not name.startswith(".") and len(name) > len(".zip")


class QueueWatcher:
    """inotify on ``queue/``: names of bundles that were moved in or closed after writing.

    :meth:`poll` waits on the inotify descriptor and on a pipe of its own, so another
    thread (a job that ended, a signal handler) ends the wait at once with :meth:`wake`."""

    MASK = pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE

    def __init__(self, queue_dir: Path):
        self._found: list[str] = []
        self.overflowed = False
        watcher = self

        class Handler(pyinotify.ProcessEvent):
            def process_default(self, event: pyinotify.Event) -> None:
                if event.mask & pyinotify.IN_Q_OVERFLOW:
                    watcher.overflowed = True
                elif is_bundle_name(event.name or ""):
                    watcher._found.append(event.name)

        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.Notifier(self._wm, Handler())
        result = self._wm.add_watch(str(queue_dir), self.MASK, quiet=False)
        if result.get(str(queue_dir), -1) < 0:
            self._notifier.stop()
            raise OSError(f"{queue_dir}: cannot watch with inotify")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller = select.poll()
        self._poller.register(self._wm.get_fd(), select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)

    def wake(self) -> None:
        """End a :meth:`poll` under way (or the next one) now; safe from any thread and
        from a signal handler."""
        fd = self._wake_w
        if fd >= 0:
            with contextlib.suppress(BlockingIOError):   # the pipe is full: a wake-up is pending anyway
                os.write(fd, b"\0")

    def poll(self, timeout: float) -> list[str]:
        """The bundles that arrived, waiting up to ``timeout`` seconds for one or a :meth:`wake`."""
        ready = {fd for fd, _event in self._poller.poll(math.ceil(max(timeout, 0) * 1000))}
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if self._wm.get_fd() in ready:
            self._notifier.read_events()
            self._notifier.process_events()
        found, self._found = self._found, []
        return found

    def close(self) -> None:
        self._notifier.stop()
        wake_w, self._wake_w = self._wake_w, -1   # a late wake() writes nowhere
        os.close(wake_w)
        os.close(self._wake_r)


def queued_before(path: Path, committed: object) -> bool:
    """Whether ``path`` was last written or moved in before the time ``committed``: a
    bundle queued when its job was committed, not a resend of the same job since."""
    if not isinstance(committed, (int, float)):
        return True   # a marker without the time (older format): trust it, as before
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return max(st.st_mtime, st.st_ctime) < committed
