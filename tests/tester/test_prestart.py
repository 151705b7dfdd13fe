"""Pre-started executors (vmchecker/tester/prestart.py): a slot hands its job to an
executor that started before the job came, which runs that job only, keeps what it wrote
while idle in the job's log, and is never left behind. The executor is the stand-in
``fake_executor.py`` started as the real one is (``--await-job WORK_DIR/``); the real
executor's side of the handover runs in every real-backend queue manager test."""

from __future__ import annotations

import json
import logging
import os
import signal

from tests.tester.helpers import make_bundle, make_tester
from tests.tester.test_queue_manager import (
    Background,
    assert_finished,
    cleanups,
    no_leftover_processes,
    qm,
    start_process,
)
from tests.util import wait_for
from vmchecker.executor.hostcmds import pid_alive
from vmchecker.tester import processes
from vmchecker.tester.prestart import IDLE_LOG_PREFIX

__all__ = ["cleanups", "no_leftover_processes"]   # the autouse fixtures apply here too


def idle_executors(cfg) -> list[int]:
    """The executors waiting under the tester's work folder (their command line names it)."""
    return sorted(pid for pid in processes.find_orphans(cfg.work_dir) if pid_alive(pid))


def one_idle(cfg, other_than: int = 0) -> int:
    found = wait_for(lambda: [p for p in idle_executors(cfg) if p != other_than], "an executor to wait for a job")
    assert len(found) == 1, f"slots=1 keeps one waiting executor, found {found}"
    return found[0]


def test_a_job_goes_to_the_waiting_executor_which_runs_it_alone(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1)
    ran = tmp_path / "ran.json"
    with Background(qm(cfg, once=False, _prestart=True)):
        waiting = one_idle(cfg)
        make_bundle(cfg.queue_dir, "j1", {"pid_file": str(ran)})
        wait_for(lambda: (cfg.done_dir / "j1" / "result.json").exists() and not list(cfg.queue_dir.glob("*.zip")),
                 "j1 to finish")
        assert json.loads(ran.read_text()) == {"pid": waiting, "prestarted": True}
        assert not pid_alive(waiting), "an executor runs one job, then exits"
        one_idle(cfg, other_than=waiting)   # the next one already waits
    assert_finished(cfg, "j1", "done")
    assert idle_executors(cfg) == [], "a stopped queue manager leaves no waiting executor"
    assert not list(cfg.work_dir.glob(f"{IDLE_LOG_PREFIX}*")), "nor its log"


def test_what_a_waiting_executor_wrote_is_in_its_jobs_log(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1)
    with Background(qm(cfg, once=False, _prestart=True)):
        waiting = one_idle(cfg)
        make_bundle(cfg.queue_dir, "j1", {"action": "crash"})
        wait_for(lambda: (cfg.done_dir / "j1" / "result.json").exists(), "j1 to end")
    assert_finished(cfg, "j1", "error")
    reason = (cfg.done_dir / "j1" / "vmchecker-stderr.vmr").read_text()
    assert "exited with code 3 without writing results" in reason
    assert f"fake executor pid {waiting} waiting for a job" in reason   # written while it waited
    assert "crashing as asked" in reason


def test_an_executor_that_died_while_waiting_is_replaced_and_the_job_starts_cold(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="vmchecker.tester.prestart")
    cfg = make_tester(tmp_path / "tester", slots=1)
    ran = tmp_path / "ran.json"
    with Background(qm(cfg, once=False, _prestart=True)):
        waiting = one_idle(cfg)
        os.kill(waiting, signal.SIGKILL)
        wait_for(lambda: not pid_alive(waiting), "the waiting executor to die")
        make_bundle(cfg.queue_dir, "j1", {"pid_file": str(ran)})
        wait_for(lambda: (cfg.done_dir / "j1" / "result.json").exists() and not list(cfg.queue_dir.glob("*.zip")),
                 "j1 to finish")
        assert json.loads(ran.read_text())["prestarted"] is False
        one_idle(cfg, other_than=waiting)
    assert_finished(cfg, "j1", "done")
    assert f"pre-started executor pid {waiting} exited (code -9) while idle" in caplog.text


def test_waiting_executors_of_a_killed_queue_manager_exit(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=2)
    proc = start_process(cfg, "--prestart")
    try:
        waiting = wait_for(lambda: len(idle_executors(cfg)) == 2 and idle_executors(cfg), "two waiting executors")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    wait_for(lambda: not any(pid_alive(pid) for pid in waiting), "the waiting executors to see their end of input")
