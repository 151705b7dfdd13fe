"""The queue manager's warm-guest policy (tester/warmer.py) with a stand-in warm-up
(``fake_warm_up.py``, a real subprocess that waits on a barrier file): a job never waits
for a warm-up, warm-ups use idle slots only and stop at ``warm_guests`` per machine, a
failed one is tried again only after the machine's next job, the guests of a machine no
longer run here go, and stopping destroys them all. Dropping a guest is recorded, not
done: these guests exist nowhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tester.helpers import FAKE_COMMAND, make_bundle, make_tester
from tests.tester.test_queue_manager import Background, assert_finished, cleanups, no_leftover_processes  # noqa: F401
from tests.util import wait_for
from vmchecker.config import parse_machine
from vmchecker.executor.warm import WarmPool
from vmchecker.tester import warmer
from vmchecker.tester.queue_manager import QueueManager
from vmchecker.tester.warmer import Warmer

FAKE_WARM_UP = Path(__file__).with_name("fake_warm_up.py")


@pytest.fixture(autouse=True)
def dropped(monkeypatch) -> list[str]:
    """The names of the warm guests the warmer destroyed."""
    names: list[str] = []

    class Host:
        def drop_warm(self, record) -> None:
            names.append(record.name)

    monkeypatch.setattr(warmer, "get_host", lambda machine_type: Host())
    return names


def control(tmp_path: Path) -> Path:
    folder = tmp_path / "control"
    folder.mkdir(exist_ok=True)
    return folder


def log(tmp_path: Path) -> list[str]:
    path = control(tmp_path) / "log"
    return path.read_text().split() if path.exists() else []


def machine(vm: str = "vmchecker-base"):
    return parse_machine({"name": "linux", "type": "lxc", "vm": vm}, "test")


def warmer_of(tmp_path: Path, **settings) -> Warmer:
    cfg = make_tester(tmp_path / "tester", **settings)
    return Warmer(cfg, [sys.executable, str(FAKE_WARM_UP), str(control(tmp_path))], kill_grace=1)


def finish(w: Warmer) -> None:
    """Wait until the warm-ups in flight ended and are collected."""
    wait_for(lambda: all(u.proc.poll() is not None for u in w._running), "the warm-ups to end")
    w.reap()


def test_a_job_never_waits_for_a_warm_up_and_stop_destroys_the_warm_guests(tmp_path, dropped):
    cfg = make_tester(tmp_path / "tester", slots=1)
    cfg.queue_dir.mkdir(parents=True)
    manager = QueueManager(cfg, once=False, kill_grace=1, notify_base_delay=0.05, notify_max_delay=0.2,
                           _executor_command=FAKE_COMMAND,
                           _warm_command=[sys.executable, str(FAKE_WARM_UP), str(control(tmp_path))])
    with Background(manager):
        make_bundle(cfg.queue_dir, "j1", {})
        wait_for(lambda: log(tmp_path) == ["start"], "a warm-up after the first job")
        make_bundle(cfg.queue_dir, "j2", {})   # arrives while the warm-up is stuck at its barrier
        wait_for(lambda: (cfg.done_dir / "j2" / "result.json").exists(), "the second job, warm-up or not")
        assert log(tmp_path) == ["start"]   # the job did not wait for it
        (control(tmp_path) / "go").touch()
        ready = wait_for(WarmPool(cfg.state_dir / "warm").ready, "the warm guest")
    assert_finished(cfg, "j2", "done")
    assert dropped == [ready[0].name]
    assert WarmPool(cfg.state_dir / "warm").ready() == []


def test_warm_ups_use_idle_slots_and_stop_at_warm_guests_per_machine(tmp_path):
    w = warmer_of(tmp_path, slots=3, warm_guests=2)
    (control(tmp_path) / "go").touch()
    w.note(machine())
    w.top_up(idle_slots=1)
    assert len(w._running) == 1
    finish(w)
    w.top_up(idle_slots=3)
    assert len(w._running) == 1   # one more makes two
    finish(w)
    w.top_up(idle_slots=3)
    assert w._running == [] and len(w.pool.ready()) == 2
    w.top_up(idle_slots=0)
    assert w._running == []


def test_while_a_job_runs_a_machine_keeps_one_warm_guest_and_the_rest_wait_for_an_idle_tester(tmp_path):
    w = warmer_of(tmp_path, slots=3, warm_guests=2)
    (control(tmp_path) / "go").touch()
    w.note(machine())
    w.top_up(idle_slots=2, running=[machine()])
    assert len(w._running) == 1   # one in the making, not two beside the job
    finish(w)
    w.top_up(idle_slots=2, running=[machine()])
    assert w._running == [] and len(w.pool.ready()) == 1
    w.top_up(idle_slots=3)   # the job ended: the second is made now
    assert len(w._running) == 1
    finish(w)
    assert len(w.pool.ready()) == 2


def test_a_failed_warm_up_is_tried_again_only_after_the_next_job(tmp_path):
    w = warmer_of(tmp_path, slots=1)
    (control(tmp_path) / "fail").touch()
    w.note(machine())
    w.top_up(idle_slots=1)
    finish(w)
    w.top_up(idle_slots=1)
    assert w._running == [] and log(tmp_path) == ["start"]
    w.note(machine())   # a job of it ran again
    w.top_up(idle_slots=1)
    finish(w)
    assert log(tmp_path) == ["start", "start"]


def test_machines_no_longer_run_here_lose_their_warm_guests(tmp_path, dropped):
    w = warmer_of(tmp_path, slots=1)
    (control(tmp_path) / "go").touch()
    w.note(machine("base-a"))
    w.top_up(idle_slots=1)
    finish(w)
    first = w.pool.ready()
    w.note(machine("base-b"))   # only the last `slots` machines are kept warm
    assert dropped == [first[0].name] and w.pool.ready() == []


def test_a_start_destroys_what_a_killed_queue_manager_left(tmp_path, dropped):
    old = warmer_of(tmp_path, slots=1)
    (control(tmp_path) / "go").touch()
    old.note(machine())
    old.top_up(idle_slots=1)
    finish(old)
    left = old.pool.ready()

    new = Warmer(old.config, old.command)
    new.owner += 1   # another queue manager's start
    machines = new.recover()

    assert dropped == [left[0].name] and new.pool.ready() == []
    assert [m.vm for m in machines] == ["vmchecker-base"]
