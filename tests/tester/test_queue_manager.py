"""The queue manager's own logic, with a stand-in executor.

Why a stand-in: these tests check what the queue manager does (inotify pickup, the
start-up backlog, slots, the order that makes results durable before a bundle leaves
``queue/``, the timeout kill of a whole process group, malformed bundles, notification
retry and its journal across restarts, kill -9 and restart), and they must make the
executor pass, crash, hang or wait for a partner on demand. ``fake_executor.py`` is a
real program run as a real subprocess in its own process group, exactly as the real
executor is; only the command is injected (a constructor parameter, never a config key).
The real LXC executor is tested on its own, and once with the queue manager in
``test_queue_manager_lxc.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import xmlrpc.client
from pathlib import Path

import pytest

from tests.tester.helpers import FAKE_COMMAND, KEY, RecordingStorer, kill_9, make_bundle, make_tester
from tests.util import free_port, make_zip, pid_alive, wait_for
from vmchecker import rpc
from vmchecker.contract import TESTER_INFO
from vmchecker.errors import RpcError
from vmchecker.tester import jobs, processes, queue_manager, results
from vmchecker.tester.notifier import Journal
from vmchecker.tester.queue_manager import QueueManager

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path):
    """Whatever a failing test leaves running under its folder is stopped."""
    yield
    for pid in processes.find_orphans(tmp_path):
        processes.kill_orphan(pid, grace=1)


@pytest.fixture(autouse=True)
def cleanups(monkeypatch) -> list[str]:
    """Backend clean-up requests, recorded: the fake jobs name ``lxc`` but have no guests,
    and these tests must not touch real containers."""
    calls: list[str] = []
    monkeypatch.setattr(queue_manager, "cleanup_backend", lambda machine_type, machines=(): calls.append(machine_type))
    return calls


def qm(cfg, once=True, **kwargs) -> QueueManager:
    kwargs.setdefault("notify_base_delay", 0.05)
    kwargs.setdefault("notify_max_delay", 0.2)
    kwargs.setdefault("notify_timeout", 2)
    kwargs.setdefault("kill_grace", 1)
    return QueueManager(cfg, once=once, _executor_command=FAKE_COMMAND, **kwargs)


def result(cfg, job_id: str) -> dict:
    return json.loads((cfg.done_dir / job_id / "result.json").read_text())


def assert_finished(cfg, job_id: str, status: str) -> None:
    assert results.read_marker(cfg.done_dir / job_id) is not None, f"{job_id} has no completion marker"
    assert result(cfg, job_id)["status"] == status
    assert not any(p.name.endswith(f"_{job_id}.zip") for p in cfg.queue_dir.iterdir())


class Background:
    """A long-running (not --once) queue manager in a thread of the test."""

    def __init__(self, manager: QueueManager):
        self.manager = manager
        self.thread = threading.Thread(target=manager.run, daemon=True)

    def __enter__(self) -> QueueManager:
        self.thread.start()
        wait_for(lambda: self.manager.notifier is not None and self.manager.notifier._thread is not None,
                 "the queue manager to start")
        return self.manager

    def __exit__(self, *exc) -> None:
        self.manager.request_stop("test over")
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


# --------------------------------------------------------------------------- drain mode


def test_once_runs_the_backlog_oldest_first_and_cleans_up(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1)
    cfg.queue_dir.mkdir(parents=True)
    order = tmp_path / "order.log"
    for i, job in enumerate(["j3", "j1", "j2"]):
        bundle = make_bundle(cfg.queue_dir, job, {"log": str(order)})
        os.utime(bundle, (1000 + i, 1000 + i))
    (cfg.queue_dir / "so_1-hello_bob_j9.zip.part").write_bytes(b"half an upload")
    (cfg.queue_dir / ".hidden.zip").write_bytes(b"not ours")

    assert qm(cfg).run() == 0

    assert order.read_text().split() == ["j3", "j1", "j2"]
    for job in ("j1", "j2", "j3"):
        assert_finished(cfg, job, "done")
        assert (cfg.done_dir / job / "run-stdout.vmr").read_text() == f"ran {job}\n"
    assert sorted(p.name for p in cfg.queue_dir.iterdir()) == [".hidden.zip", TESTER_INFO, "so_1-hello_bob_j9.zip.part"]
    assert list(cfg.work_dir.iterdir()) == []


def test_malformed_bundles_give_error_results_and_the_rest_still_runs(tmp_path):
    with RecordingStorer() as storer:
        cfg = make_tester(tmp_path / "tester", storer_daemon=storer.url)
        cfg.queue_dir.mkdir(parents=True)
        (cfg.queue_dir / "so_1-hello_bob_jbad.zip").write_bytes(b"this is not a zip")
        make_bundle(cfg.queue_dir, "jtype", {}, machine_type="bogus")
        make_bundle(cfg.queue_dir, "jgood", {})

        assert qm(cfg).run() == 0

        assert_finished(cfg, "jgood", "done")
        for job, reason in (("jbad", "not a zip"), ("jtype", "unknown machine type 'bogus'")):
            assert_finished(cfg, job, "error")
            assert reason in (cfg.done_dir / job / "vmchecker-stderr.vmr").read_text()
            assert reason in result(cfg, job)["message"]
        # the unknown-type bundle still says who it is: the storer hears of the error
        calls = {c[0]: c for c in storer.calls}
        assert calls["jtype"][1:4] == (KEY, "error", ["result.json", "vmchecker-stderr.vmr"])
        assert calls["jgood"][2] == "done"
        assert "jbad" not in calls  # no key: nothing the storer would accept


def test_executor_crash_without_results_is_an_error_with_its_output(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    make_bundle(cfg.queue_dir, "j1", {"action": "crash"})
    qm(cfg).run()
    assert_finished(cfg, "j1", "error")
    stderr = (cfg.done_dir / "j1" / "vmchecker-stderr.vmr").read_text()
    assert "exited with code 3 without writing results/result.json" in stderr
    assert "fake executor: crashing as asked" in stderr


@pytest.mark.parametrize("ignore_term", [False, True])
def test_timeout_kills_the_whole_process_group(tmp_path, ignore_term, cleanups, monkeypatch):
    monkeypatch.setattr(jobs, "EXECUTOR_MARGIN", 0)   # executor_timeout = 1 + 2 * 1 s
    cfg = make_tester(tmp_path / "tester", executor_timeout=1)
    child_pid = tmp_path / "child.pid"
    make_bundle(cfg.queue_dir, "j1", {"action": "hang", "child_pid": str(child_pid), "ignore_term": ignore_term},
                timeout=1, boot_timeout=1)
    make_bundle(cfg.queue_dir, "j2", {})

    qm(cfg).run()

    assert_finished(cfg, "j1", "error")
    assert "executor_timeout (3 s)" in (cfg.done_dir / "j1" / "vmchecker-stderr.vmr").read_text()
    assert result(cfg, "j1")["message"].startswith("the executor did not finish")
    child = int(child_pid.read_text())
    wait_for(lambda: not pid_alive(child), "the executor's child to die with its group")
    assert cleanups == ["lxc"], "a killed executor's guest must be cleaned up"
    assert_finished(cfg, "j2", "done")


@pytest.mark.parametrize("slots", [1, 2])
def test_slots_bound_how_many_jobs_run_at_once(tmp_path, slots):
    cfg = make_tester(tmp_path / "tester", slots=slots)
    probe = {"active_dir": str(tmp_path / "active"), "barrier": slots, "total": 4}
    for i in range(4):
        make_bundle(cfg.queue_dir, f"j{i}", probe)
    qm(cfg).run()
    seen = [result(cfg, f"j{i}")["seen_at_once"] for i in range(4)]
    assert max(seen) == slots, seen


@pytest.mark.parametrize("bad_id", ["", "..", "../queue", "a/b"])
def test_a_broken_bundle_cannot_name_a_folder_outside_done(tmp_path, bad_id):
    cfg = make_tester(tmp_path / "tester")
    make_bundle(cfg.queue_dir, "j0", {})
    qm(cfg).run()
    # a bundle that fails validation but whose submission-config names a job id
    broken = cfg.queue_dir / "so_1-hello_bob_jbroken.zip"
    make_zip(broken, {"submission-config.yaml": f"job_id: {bad_id!r}\nkey: {KEY}\n"})

    qm(cfg).run()

    assert_finished(cfg, "j0", "done")   # earlier results untouched
    assert_finished(cfg, "jbroken", "error")
    assert {"config.yaml", "done", "queue", "state"} <= {p.name for p in cfg.root.iterdir()}
    assert sorted(p.name for p in cfg.done_dir.iterdir()) == ["j0", "jbroken"]


def test_commit_refuses_a_job_id_that_is_not_one(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "result.json").write_text("{}")
    (tmp_path / "done" / "keep").mkdir(parents=True)
    for bad in ("", "..", "x/../..", ".hidden"):
        with pytest.raises(RpcError):
            results.commit(staged, tmp_path / "done", bad, {})
    assert (tmp_path / "done" / "keep").is_dir() and (staged / "result.json").exists()


def test_executor_timeout_grows_with_the_bundles_own_timeout():
    from vmchecker.config import parse_machine

    machine = parse_machine({"name": "m", "type": "lxc", "vm": "v", "boot_timeout": 100}, "test")
    assert jobs.executor_timeout(600, machine, 10) == 600
    assert jobs.executor_timeout(600, machine, 300) == 100 + 600 + jobs.EXECUTOR_MARGIN


def test_a_job_slower_than_executor_timeout_but_within_its_own_timeout_finishes(tmp_path):
    cfg = make_tester(tmp_path / "tester", executor_timeout=1)
    make_bundle(cfg.queue_dir, "j1", {"sleep": 2}, timeout=30, boot_timeout=1)
    qm(cfg).run()
    assert_finished(cfg, "j1", "done")


def test_host_commands_of_a_killed_executor_are_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "EXECUTOR_MARGIN", 0)
    cfg = make_tester(tmp_path / "tester", executor_timeout=1)
    host_pid = tmp_path / "host.pid"
    # the executor ignores SIGTERM (stuck): the queue manager must SIGKILL its group,
    # which does not hold the host commands (each has a session of its own)
    make_bundle(cfg.queue_dir, "j1", {"action": "hang", "ignore_term": True, "host_pid": str(host_pid)},
                timeout=1, boot_timeout=1)
    qm(cfg).run()
    assert_finished(cfg, "j1", "error")
    pid = int(host_pid.read_text())
    wait_for(lambda: not pid_alive(pid), "the host command to die with its killed executor")
    assert not list((cfg.done_dir / "j1").glob(".*pgids"))


# --------------------------------------------------------------------------- durability


class OrderCheckingManager(QueueManager):
    """Checks, at the moment a bundle leaves queue/, that its results are already durable
    and its notification journaled (the real removal then happens)."""

    checked: list[str] = []

    def _remove_bundle(self, bundle_path: Path) -> None:
        job_id = bundle_path.name[:-4].rsplit("_", 1)[1]
        assert results.read_marker(self.config.done_dir / job_id) is not None
        assert Journal(self.config.state_dir / "notify").load(job_id) is not None
        assert bundle_path.exists()
        self.checked.append(job_id)
        super()._remove_bundle(bundle_path)


def test_bundle_leaves_queue_only_after_results_and_notification_are_durable(tmp_path):
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{free_port()}/")
    make_bundle(cfg.queue_dir, "j1", {})
    manager = OrderCheckingManager(cfg, once=True, notify_timeout=2, _executor_command=FAKE_COMMAND)
    manager.checked = []
    manager.run()
    assert manager.checked == ["j1"]
    assert_finished(cfg, "j1", "done")


def test_startup_finishes_committed_jobs_and_reruns_interrupted_commits(tmp_path):
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{free_port()}/")
    order = tmp_path / "order.log"
    committed = make_bundle(cfg.queue_dir, "j1", {"log": str(order)})
    make_bundle(cfg.queue_dir, "j2", {"log": str(order)})
    # j1: crash after its results were committed, before the bundle was removed
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "result.json").write_text('{"status": "done"}')
    results.commit(staged, cfg.done_dir, "j1", {"bundle": committed.name, "job_id": "j1", "key": KEY,
                                                "notify_url": "", "status": "done", "stats": {}})
    # j2: crash in the middle of its commit (no marker); a work folder left behind
    (cfg.done_dir / "j2").mkdir()
    (cfg.done_dir / "j2" / "result.json").write_text("{}")
    (cfg.work_dir / "so_1-hello_bob_j2").mkdir(parents=True)

    qm(cfg).run()

    assert order.read_text().split() == ["j2"], "j1 must not run again"
    assert_finished(cfg, "j1", "done")
    assert_finished(cfg, "j2", "done")
    pending = {p.job_id: p for p in Journal(cfg.state_dir / "notify").load_all()}
    assert pending["j1"].request.files == ("result.json",)
    assert list(cfg.work_dir.iterdir()) == []


def test_a_bundle_resent_after_its_results_were_committed_runs_again(tmp_path):
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{free_port()}/")
    order = tmp_path / "order.log"
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "result.json").write_text('{"status": "error"}')
    name = "so_1-hello_bob_j1.zip"
    results.commit(staged, cfg.done_dir, "j1", {"bundle": name, "job_id": "j1", "key": KEY,
                                                "notify_url": "", "status": "error", "stats": {}})
    # the storer sends the same job again (after the error), then the tester restarts
    make_bundle(cfg.queue_dir, "j1", {"log": str(order)})

    qm(cfg).run()

    assert order.read_text().split() == ["j1"], "the new bundle must run, not be taken for the old one"
    assert_finished(cfg, "j1", "done")


def test_pid_file_refuses_a_second_queue_manager(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    with Background(qm(cfg, once=False)):
        from vmchecker.errors import VmcheckerError

        with pytest.raises(VmcheckerError, match="already running"):
            qm(cfg).run()


# --------------------------------------------------------------------------- inotify


def test_inotify_picks_up_renamed_and_written_bundles(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with Background(qm(cfg, once=False)):
        # the storer's way: upload NAME.zip.part, then rename (IN_MOVED_TO)
        built = make_bundle(elsewhere, "j1", {})
        part = cfg.queue_dir / (built.name + ".part")
        part.write_bytes(built.read_bytes())
        os.rename(part, cfg.queue_dir / built.name)
        # written in place, then closed (IN_CLOSE_WRITE)
        built2 = make_bundle(elsewhere, "j2", {})
        with open(cfg.queue_dir / built2.name, "wb") as f:
            f.write(built2.read_bytes())
        # an upload still in progress is left alone
        (cfg.queue_dir / "so_1-hello_bob_j3.zip.part").write_bytes(b"partial")
        wait_for(lambda: results.read_marker(cfg.done_dir / "j1") and results.read_marker(cfg.done_dir / "j2"),
                 "both bundles to be run")
    assert_finished(cfg, "j1", "done")
    assert_finished(cfg, "j2", "done")
    assert sorted(p.name for p in cfg.queue_dir.iterdir()) == [TESTER_INFO, "so_1-hello_bob_j3.zip.part"]
    assert not (cfg.done_dir / "j3").exists()


def test_stopping_kills_running_jobs_and_keeps_their_bundles(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    started = tmp_path / "started"
    child_pid = tmp_path / "child.pid"
    bundle = make_bundle(cfg.queue_dir, "j1", {"action": "hang", "started": str(started),
                                               "child_pid": str(child_pid)})
    with Background(qm(cfg, once=False)):
        wait_for(child_pid.exists, "the job to start")
        wait_for(lambda: child_pid.read_text(), "the child's pid")
    assert bundle.exists()
    assert not (cfg.done_dir / "j1").exists()
    child = int(child_pid.read_text())
    wait_for(lambda: not pid_alive(child), "the stopped job's child to die")
    # the next start runs it (the fake hangs only the first time)
    qm(cfg).run()
    assert_finished(cfg, "j1", "done")


def test_an_error_in_the_main_loop_does_not_stop_the_queue_manager(tmp_path, monkeypatch):
    real_poll = queue_manager.QueueWatcher.poll
    failures = []

    def poll(self, timeout):
        if not failures:
            failures.append(1)
            raise OSError("inotify: simulated failure")
        return real_poll(self, timeout)

    monkeypatch.setattr(queue_manager, "ERROR_PAUSE", 0.05)
    monkeypatch.setattr(queue_manager.QueueWatcher, "poll", poll)
    cfg = make_tester(tmp_path / "tester")
    with Background(qm(cfg, once=False)):
        wait_for(lambda: failures, "the simulated failure")
        make_bundle(cfg.queue_dir, "j1", {})
        wait_for(lambda: results.read_marker(cfg.done_dir / "j1"), "the bundle to be run")
    assert_finished(cfg, "j1", "done")


class RemoveFailsOnce(QueueManager):
    """A bundle that cannot be removed the first time (e.g. a read-only queue/)."""

    failed: list[str]

    def _remove_bundle(self, bundle_path: Path) -> None:
        if not self.failed:
            self.failed.append(bundle_path.name)
            raise OSError(f"{bundle_path}: simulated failure")
        super()._remove_bundle(bundle_path)


def test_a_failed_bundle_removal_does_not_hold_the_notification_back(tmp_path):
    with RecordingStorer() as storer:
        cfg = make_tester(tmp_path / "tester", storer_daemon=storer.url)
        make_bundle(cfg.queue_dir, "j1", {})
        manager = RemoveFailsOnce(cfg, once=True, notify_timeout=2, _executor_command=FAKE_COMMAND)
        manager.failed = []
        manager.run()
    assert manager.failed == ["so_1-hello_bob_j1.zip"]
    assert [c[:3] for c in storer.calls] == [("j1", KEY, "done")]


# --------------------------------------------------------------------------- notify


def test_notification_waits_for_an_absent_storer_across_restarts(tmp_path):
    port = free_port()
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{port}/")
    make_bundle(cfg.queue_dir, "j1", {})
    journal = Journal(cfg.state_dir / "notify")

    qm(cfg).run()  # storer absent: the notification is journaled
    assert [p.attempts for p in journal.load_all()] == [1]
    assert "not answering" in journal.load("j1").last_error
    qm(cfg).run()  # a restart: still pending, one more attempt
    assert [p.attempts for p in journal.load_all()] == [2]

    with RecordingStorer(port) as storer:
        qm(cfg).run()
    assert storer.calls == [("j1", KEY, "done", ["result.json", "run-stdout.vmr", "vmchecker-stderr.vmr"],
                             storer.calls[0][4])]
    stats = storer.calls[0][4]
    assert stats["tester"] == "t1" and stats["backend"] == "fake" and stats["timed_out"] is False
    assert journal.load_all() == []
    assert_finished(cfg, "j1", "done")  # results stay until the storer pulls them


def test_the_notification_says_when_each_tester_stage_happened(tmp_path):
    """at_<stage> stats on the tester's clock, in the order they happen: the queue manager's
    own (received, slot taken, results durable, notified) around the executor's timeline."""
    with RecordingStorer() as storer:
        cfg = make_tester(tmp_path / "tester", storer_daemon=storer.url)
        make_bundle(cfg.queue_dir, "j1", {})
        qm(cfg).run()
    stats = storer.calls[0][4]
    order = ["received", "slot_taken", "executor_started", "run_started", "executor_ended", "results_durable",
             "notified"]
    stages = {k.removeprefix("at_"): v for k, v in stats.items() if k.startswith("at_")}
    assert sorted(stages, key=order.index) == order
    assert [stages[s] for s in order] == sorted(stages.values())


def test_background_retry_with_backoff_reaches_a_storer_that_appears(tmp_path):
    port = free_port()
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{port}/")
    journal = Journal(cfg.state_dir / "notify")
    with Background(qm(cfg, once=False)):
        make_bundle(cfg.queue_dir, "j1", {})
        pending = wait_for(lambda: [p for p in journal.load_all() if p.attempts >= 3], "three failed attempts")
        assert pending[0].next_try > 0
        with RecordingStorer(port) as storer:
            wait_for(lambda: storer.calls, "the notification to arrive")
            wait_for(lambda: journal.load_all() == [], "the journal to empty")
    assert [c[:3] for c in storer.calls] == [("j1", KEY, "done")]


@pytest.mark.parametrize(("code", "kept"), [(rpc.FAULT_REFUSED, False), (rpc.FAULT_TRY_LATER, True)])
def test_a_refusal_drops_the_notification_a_try_later_keeps_it(tmp_path, code, kept):
    def answer(*args):
        raise xmlrpc.client.Fault(code, "no")

    with RecordingStorer(answer=answer) as storer:
        cfg = make_tester(tmp_path / "tester", storer_daemon=storer.url)
        make_bundle(cfg.queue_dir, "j1", {})
        qm(cfg).run()
    assert len(storer.calls) == 1
    assert bool(Journal(cfg.state_dir / "notify").load_all()) is kept


def test_backoff_doubles_up_to_the_cap():
    from vmchecker.tester.notifier import backoff

    assert [backoff(n, 2, 30) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


# --------------------------------------------------------------------------- kill -9


def start_process(cfg, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.tester.run_queue_manager", *args, str(cfg.root)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("prestart", [[], ["--prestart"]], ids=["cold", "prestarted"])
def test_kill_9_mid_job_then_restart_produces_the_results(tmp_path, prestart):
    """A forked executor's command line is its fork server's, which names the work folder,
    not the job's: the restarted queue manager finds both all the same."""
    cfg = make_tester(tmp_path / "tester")
    started = tmp_path / "started"
    child_pid = tmp_path / "child.pid"
    make_bundle(cfg.queue_dir, "j1", {"action": "hang", "started": str(started), "child_pid": str(child_pid)})
    proc = start_process(cfg, *prestart)
    try:
        wait_for(lambda: child_pid.exists() and child_pid.read_text(), "the job to start")
        executor = int(started.read_text())
    finally:
        kill_9(proc)
    assert pid_alive(executor), "the executor outlives a killed queue manager (its own session)"

    again = start_process(cfg, "--once")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert "cleanup requested for lxc" in err.decode()

    assert not pid_alive(executor), "the restarted queue manager stops the orphaned executor"
    child = int(child_pid.read_text())
    wait_for(lambda: not pid_alive(child), "the orphaned executor's child to die")
    assert_finished(cfg, "j1", "done")
    assert list(cfg.work_dir.iterdir()) == []
    assert processes.find_orphans(cfg.work_dir) == [], "no executor nor fork server left"


def test_cli_once_on_an_empty_queue_and_on_a_bad_config(tmp_path):
    from vmchecker.cli.queue_manager import main

    cfg = make_tester(tmp_path / "tester")
    assert main(["--once", str(cfg.root)]) == 0
    assert cfg.queue_dir.is_dir() and cfg.done_dir.is_dir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("tester: {slots: 0}\n")
    assert main(["--once", str(tmp_path / "bad")]) == 2
