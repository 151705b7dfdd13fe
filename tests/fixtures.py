"""Fixtures every test package may use (loaded by tests/conftest.py).

* ``running_daemon``: start the real storer daemon on loopback, stopped after the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmchecker.config import CourseConfig
    from vmchecker.storer.daemon import StorerDaemon
    from vmchecker.storer.journal import Journal

JOIN_WAIT = 30.0   # seconds for the daemon's threads to end once asked to stop


class RunningDaemon:
    """The real :class:`StorerDaemon` on 127.0.0.1 (a port of its own), in threads of the test.

    ``dispatch=False``: only the XML-RPC server runs. Nothing is sent anywhere unless the
    test asks: :meth:`dispatch_once` runs one pass of the real dispatcher (what
    ``--once`` does), and a test may move jobs on through :attr:`journal` itself. The
    choice for courses whose testers must never be contacted (TEST-NET addresses).

    ``dispatch=True``: the daemon's own ``serve()``, as the process runs it: the
    server, the dispatcher loop and the start-up sweep of saved submissions."""

    def __init__(self, global_config: Path, state_dir: Path, *, dispatch: bool = False, poll: float = 0.2,
                 listen: str = "127.0.0.1:0"):
        from vmchecker.storer.daemon import StorerDaemon

        self.daemon: StorerDaemon = StorerDaemon(global_config, listen=listen, state_dir=state_dir, poll=poll)
        self.port = self.daemon.port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.dispatch = dispatch
        self.course: CourseConfig | None = None   # the course a fixture set up for it, if it records one
        if dispatch:
            target, kwargs = self.daemon.serve, {}
        else:
            target, kwargs = self.daemon.server.serve_forever, {"poll_interval": 0.1}
        self._thread = threading.Thread(target=target, kwargs=kwargs, name="test-daemon", daemon=True)
        self._thread.start()

    @property
    def journal(self) -> Journal:
        return self.daemon.journal

    def dispatch_once(self) -> int:
        """One pass of the real dispatcher (sweep overdue jobs, send what is due); jobs sent."""
        assert not self.dispatch, "the dispatcher loop already runs: wait for its effect instead"
        return self.daemon.dispatcher.run_once()

    def close(self) -> None:
        """Stop the threads and close the journal; safe to call twice."""
        if self.dispatch:
            self.daemon.request_stop("test over")   # serve() shuts the server and closes the rest
        elif self._thread.is_alive():
            self.daemon.server.shutdown()
            self.daemon.server.server_close()
            self.daemon.courses.close()
            self.daemon.journal.close()
        self._thread.join(JOIN_WAIT)
        assert not self._thread.is_alive(), "the storer daemon did not stop"


@pytest.fixture
def running_daemon(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """``running_daemon(global_config, dispatch=False, state_dir=None, listen=None)`` starts
    the real storer daemon for the courses of ``global_config`` (state in
    tmp_path/daemon-state by default, on a free loopback port unless ``listen`` names one:
    a daemon restarted where its testers know it); every daemon started is stopped after
    the test."""
    started: list[RunningDaemon] = []

    def start(global_config: Path, *, dispatch: bool = False, state_dir: Path | None = None,
              listen: str | None = None) -> RunningDaemon:
        daemon = RunningDaemon(global_config, state_dir or tmp_path / "daemon-state", dispatch=dispatch,
                               listen=listen or "127.0.0.1:0")
        started.append(daemon)
        return daemon

    yield start
    for daemon in reversed(started):
        daemon.close()
