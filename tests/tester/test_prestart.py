"""Executors forked by the queue manager's fork server (vmchecker/tester/forkserver.py,
prestart.py): each job runs in a fresh child of one server that loaded the executor once,
its output in the job's log; a server that died is replaced; none is left behind. The
executor is the stand-in ``fake_executor.py`` run as the real one is (``--serve-jobs``,
the real server loop); the real executor is forked the same way in every real-backend
queue manager test."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from tests.tester.helpers import FAKE_COMMAND, kill_9, make_bundle, make_tester
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
from vmchecker.tester import prestart, processes
from vmchecker.tester.forkserver import SERVE_OPTION, ServedProcess
from vmchecker.tester.prestart import Executors

__all__ = ["cleanups", "no_leftover_processes"]   # the autouse fixtures apply here too


def servers(work_dir) -> list[int]:
    """The fork servers running for this work folder (their command line names it)."""
    found = []
    for pid in processes.find_orphans(work_dir):
        cmdline = processes._cmdline(pid)
        if pid_alive(pid) and SERVE_OPTION in cmdline and os.getppid() != pid:
            found.append(pid)
    return sorted(found)


def one_server(work_dir, other_than: int = 0) -> int:
    """The fork server, once it is the only one (one it replaced may take a moment to end)."""
    def alone() -> list[int]:
        found = [p for p in servers(work_dir) if p != other_than]
        return found if len(found) == 1 else []

    return wait_for(alone, "one fork server to run")[0]


def finished(cfg, job_id: str) -> bool:
    return (cfg.done_dir / job_id / "result.json").exists() and not list(cfg.queue_dir.glob(f"*_{job_id}.zip"))


def test_each_job_runs_in_a_fresh_child_of_one_fork_server(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1)
    with Background(qm(cfg, once=False, _prestart=True)):
        first = one_server(cfg.work_dir)
        make_bundle(cfg.queue_dir, "j0", {})   # its machine type is new here: the next server loads it
        wait_for(lambda: finished(cfg, "j0"), "j0 to finish")
        wait_for(lambda: not pid_alive(first), "the first server to end")
        server = one_server(cfg.work_dir)
        assert processes._cmdline(server)[-2:] == ["--preload", "lxc"]
        ran = []
        for job_id in ("j1", "j2"):
            make_bundle(cfg.queue_dir, job_id, {"pid_file": str(tmp_path / f"{job_id}.json")})
            wait_for(lambda job_id=job_id: finished(cfg, job_id), f"{job_id} to finish")
            ran.append(json.loads((tmp_path / f"{job_id}.json").read_text()))
        assert [r["parent"] for r in ran] == [server, server] and all(r["forked"] for r in ran)
        assert ran[0]["pid"] != ran[1]["pid"] and server not in (ran[0]["pid"], ran[1]["pid"])
        assert not any(pid_alive(r["pid"]) for r in ran), "a forked executor runs one job, then exits"
        assert servers(cfg.work_dir) == [server]
    assert_finished(cfg, "j1", "done")
    assert_finished(cfg, "j2", "done")
    assert processes.find_orphans(cfg.work_dir) == [], "a stopped queue manager leaves no fork server"


def test_a_forked_executors_output_is_in_its_jobs_log(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1)
    with Background(qm(cfg, once=False, _prestart=True)):
        one_server(cfg.work_dir)
        make_bundle(cfg.queue_dir, "j1", {"action": "crash", "pid_file": str(tmp_path / "j1.json")})
        wait_for(lambda: finished(cfg, "j1"), "j1 to end")
    assert_finished(cfg, "j1", "error")
    pid = json.loads((tmp_path / "j1.json").read_text())["pid"]
    reason = (cfg.done_dir / "j1" / "vmchecker-stderr.vmr").read_text()
    assert "exited with code 3 without writing results" in reason   # its status, as the server reaped it
    assert f"fake executor pid {pid} runs" in reason and "crashing as asked" in reason


def test_a_fork_server_that_died_is_replaced(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(prestart, "RESTART_PAUSE", 0.2)
    caplog.set_level(logging.ERROR, logger="vmchecker.tester.prestart")
    cfg = make_tester(tmp_path / "tester", slots=1)
    with Background(qm(cfg, once=False, _prestart=True)):
        server = one_server(cfg.work_dir)
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not pid_alive(server), "the fork server to die")
        make_bundle(cfg.queue_dir, "j1", {})   # forked by the next server, or started cold: done either way
        wait_for(lambda: finished(cfg, "j1"), "j1 to finish")
        one_server(cfg.work_dir, other_than=server)
    assert_finished(cfg, "j1", "done")
    assert f"fork server pid {server} ended; starting another" in caplog.text


def test_a_machine_type_seen_first_starts_a_server_that_loads_it_and_the_old_one_ends(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    executors = Executors(FAKE_COMMAND, work, enabled=True, kill_grace=1)
    try:
        executors.top_up()
        first = one_server(work)
        assert "kvm" not in processes._cmdline(first)
        executors.note("kvm")
        executors.top_up()
        second = one_server(work, other_than=first)
        assert processes._cmdline(second)[-2:] == ["--preload", "kvm"]
        wait_for(lambda: not pid_alive(first), "the replaced server to end (it had no job running)")
    finally:
        executors.stop()
    assert processes.find_orphans(work) == []


def test_the_fork_server_of_a_killed_queue_manager_exits(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=2)
    proc = start_process(cfg, "--prestart")
    try:
        server = one_server(cfg.work_dir)
    finally:
        kill_9(proc)
    wait_for(lambda: not pid_alive(server), "the fork server to see the end of its input and exit")


def test_a_fork_server_that_cannot_start_is_not_started_in_a_loop_and_jobs_start_cold(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="vmchecker.tester.prestart")
    work = tmp_path / "work"
    work.mkdir()
    broken = [sys.executable, "-c", "import sys; sys.exit(3)"]   # as an executor that cannot import
    executors = Executors(broken, work, enabled=True, kill_grace=1)
    try:
        executors.top_up()
        first = executors._server
        wait_for(lambda: not first.alive(), "the broken server to end")
        for _ in range(20):   # the queue manager's loop, turning
            executors.top_up()
        assert caplog.text.count("fork server pid") == 1 and executors._server is None
        proc = executors.start(work / "job", work / "job.log")   # cold, as if there were no server
        assert proc.wait() == 3 and not isinstance(proc, ServedProcess)
    finally:
        executors.stop()
