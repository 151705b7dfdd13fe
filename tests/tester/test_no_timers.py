"""The queue manager moves a job on when something happens, never when a timer runs out.

Its main loop waits for a bundle's arrival (inotify), the end of a job (a free slot) or a
request to stop, each of which ends the wait at once; its longest wait is only a guard.
Here every guard is an hour: a job that still goes through, and a stop that still stops,
were moved by events alone. The executor is the stand-in ``fake_executor.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.tester.helpers import FAKE_COMMAND, make_bundle, make_tester
from tests.util import wait_for
from vmchecker.tester import processes, queue_manager, results
from vmchecker.tester.queue_manager import QueueManager

HOUR = 3600.0


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path):
    yield
    for pid in processes.find_orphans(tmp_path):
        processes.kill_orphan(pid, grace=1)


def test_a_free_slot_and_a_stop_each_end_the_wait_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(queue_manager, "IDLE_WAIT", HOUR)
    monkeypatch.setattr(queue_manager, "SWEEP_SECONDS", HOUR)
    monkeypatch.setattr(queue_manager, "cleanup_backend", lambda machine_type, machines=(): None)
    cfg = make_tester(tmp_path / "tester", slots=1)
    manager = QueueManager(cfg, notify_base_delay=HOUR, notify_max_delay=HOUR, kill_grace=1,
                           _executor_command=FAKE_COMMAND)
    thread = threading.Thread(target=manager.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: manager.notifier is not None and manager.notifier._thread is not None,
                 "the queue manager to start")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        release = tmp_path / "release"
        for job_id in ("j1", "j2"):   # both wait on one barrier: j2 waits for j1's slot
            built = make_bundle(elsewhere, job_id, {"wait_file": str(release)})
            os.rename(built, cfg.queue_dir / built.name)
        wait_for(lambda: len(manager._waiting) == 1 and len(manager._running) == 1, "j1 to run and j2 to wait")
        release.touch()
        wait_for(lambda: results.read_marker(cfg.done_dir / "j1") and results.read_marker(cfg.done_dir / "j2"),
                 "j2 to run in the slot j1 left")
    finally:
        manager.request_stop("test over")
        thread.join(60)
    assert not thread.is_alive(), "the request to stop did not end the hour-long wait"


def test_wait_exit_returns_when_the_child_ends_or_the_time_is_up():
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as proc:
        assert processes.wait_exit(proc, 0) is False   # still running: the guard ran out
        proc.stdin.close()   # the barrier: it ends now
        assert processes.wait_exit(proc, HOUR) is True
        assert proc.returncode == 0
        assert processes.wait_exit(proc, HOUR) is True   # already reaped: no pidfd, the fallback says so
