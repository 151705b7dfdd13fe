"""Warm guests of the VMware backend on the VMware lab (executor/warm.py, vmware_modes.py):
in ``revert: snapshot`` mode a VM of the pool reverted, reconfigured and running ahead of
its job, in ``revert: linked-clone`` mode a clone made and powered on ahead. Each serves
exactly one job, with the grade a cold job gets; one prepared before its snapshot was
taken again is dropped and the job runs cold; those of a dead queue manager go with
``cleanup_leftovers``, and a queue manager's stop leaves none.

Warm guests are prepared in this process as a queue manager's warm-up would (named after
it), except where a test needs a dead owner or a real queue manager. Nothing asserts on
time: jobs that must overlap wait for each other before their run steps.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pyVmomi")

from tests.executor.helpers import around_run_step, make_bundle, result_json, vmr  # noqa: E402
from tests.executor.vmware_fixtures import clone_leftovers  # noqa: E402
from tests.util import side_by_side, wait_for  # noqa: E402
from vmchecker.executor import vmware_modes  # noqa: E402
from vmchecker.executor.warm import WarmPool  # noqa: E402
from vmchecker.tester import processes, results  # noqa: E402

pytestmark = pytest.mark.vmware

REPO = Path(__file__).resolve().parents[2]
BARRIER_WAIT = 600   # a guard: a job that fails first breaks the wait at once
MEMORY_MB = 192      # not the lab VMs' own: a warm guest is reconfigured before power-on


@pytest.fixture
def lab_host(vmware_host):
    """The lab's host; after the test, whatever it left kept warm is dropped and the lab
    put back as it started (a failed test must not leave tokens for the next)."""
    yield vmware_host
    for token in vmware_host.state.joinpath("locks").glob("*.warm"):
        token.unlink()
    if clone_leftovers(vmware_host):
        vmware_host.lab.reset()
        for record in vmware_host.clone_records():
            record.unlink()


def machine_of(host, folder: Path, **keys):
    return make_bundle(folder, job_id=folder.name, **host.machine_keys(limits={"memory_mb": MEMORY_MB}, **keys))[1].machine


def job(host, folder: Path, pool: WarmPool | None, **keys):
    bundle_dir, info = make_bundle(folder, job_id=folder.name,
                                   **host.machine_keys(limits={"memory_mb": MEMORY_MB}, **keys))
    return host.test_submission(bundle_dir, info.machine, info, warm=pool), bundle_dir


def tokens(host) -> dict[str, str]:
    """The VMs kept warm now: VM -> the warm guest its token names."""
    found = {}
    for path in host.state.joinpath("locks").glob("*.warm"):
        data = json.loads(path.read_text())
        found[data["vm"]] = data["name"]
    return found


def vm_state(host, name: str) -> tuple[str, int]:
    with host.lab.connect() as si:
        vm = host.lab.inventory(si)[name]
        return str(vm.runtime.powerState), int(vm.config.hardware.memoryMB)


def same_grade(*outs: Path) -> bool:
    """The jobs' grade files and run output agree (the hello job: full points)."""
    return len({(vmr(o, "grade.vmr"), vmr(o, "run-stdout.vmr")) for o in outs}) == 1


def retake_snapshot(host, name: str) -> None:
    """Take the VM's snapshot ``clean`` again, as an administrator who updated the VM does:
    a new snapshot of the same name (reverted first, so it holds what the old one did)."""
    from pyVim.task import WaitForTask

    with host.lab.connect() as si:
        vm = host.lab.inventory(si)[name]
        WaitForTask(vm.RevertToCurrentSnapshot_Task())
        WaitForTask(vm.snapshot.rootSnapshotList[0].snapshot.RemoveSnapshot_Task(removeChildren=False))
        WaitForTask(vm.CreateSnapshot_Task(name="clean", memory=False, quiesce=False))


# --------------------------------------------------------------------------- revert: snapshot


def test_snapshot_warm_guest_serves_one_job_beside_a_cold_one(lab_host, tmp_path, monkeypatch):
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "m"), pool, os.getpid())
    assert record and record.name.startswith(f"vmck-warm-{os.getpid()}-")
    (warm_vm, name), = tokens(lab_host).items()
    assert name == record.name and vm_state(lab_host, warm_vm) == ("poweredOn", MEMORY_MB)

    # Two jobs at once, each waiting for the other before its run step: one adopts the
    # warm VM, the other reverts the other VM of the pool, never the warm one.
    barrier = threading.Barrier(2, timeout=BARRIER_WAIT)
    around_run_step(monkeypatch, lab_host, before=lambda results: barrier.wait())
    done = side_by_side(lambda n: job(lab_host, tmp_path / n, pool), ("a", "b"), barrier)
    monkeypatch.undo()
    third, out3 = job(lab_host, tmp_path / "c", pool)

    jobs = [done["a"][0], done["b"][0], third]
    outs = [done["a"][1], done["b"][1], out3]
    assert [j.status for j in jobs] == ["done"] * 3, [vmr(o, "vmchecker-stderr.vmr") for o in outs]
    warm = [j.vm for j, o in zip(jobs, outs, strict=True) if result_json(o)["warm_guest"]]
    assert warm == [warm_vm]   # exactly one job on it, and never again
    assert jobs[0].vm != jobs[1].vm   # side by side: one VM each
    assert same_grade(*outs) and vmr(outs[0], "run-stdout.vmr") == "Hello, world!\n"
    assert not pool.take(record) and pool.ready() == [] and pool.claimed() == []
    assert tokens(lab_host) == {} and clone_leftovers(lab_host) == []


def test_a_warm_up_takes_only_a_free_vm_not_kept_warm(lab_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    machine = machine_of(lab_host, tmp_path / "m")
    lock = vmware_modes._lock_path(lab_host.state / "locks", lab_host.lab.url, "vmck-lab-1")
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)   # a job runs on vmck-lab-1
    try:
        first = lab_host.prepare_warm(machine, pool, os.getpid())
        again = lab_host.prepare_warm(machine, pool, os.getpid())   # lab-1 busy, lab-2 warm: none left
    finally:
        os.close(held)
    third = lab_host.prepare_warm(machine, pool, os.getpid())   # lab-1 is free now

    assert first and again is None and third
    assert tokens(lab_host) == {"vmck-lab-2": first.name, "vmck-lab-1": third.name}
    job1, out1 = job(lab_host, tmp_path / "a", pool)
    job2, out2 = job(lab_host, tmp_path / "b", pool)
    assert (job1.vm, job2.vm) == ("vmck-lab-2", "vmck-lab-1")   # the oldest first
    assert [result_json(o)["warm_guest"] for o in (out1, out2)] == [True, True]
    assert tokens(lab_host) == {} and clone_leftovers(lab_host) == []


def test_snapshot_warm_guest_prepared_before_the_snapshot_changed_is_dropped(lab_host, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="vmchecker.executor.base")
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "m"), pool, os.getpid())
    assert record
    (warm_vm, _), = tokens(lab_host).items()
    retake_snapshot(lab_host, warm_vm)

    job1, out1 = job(lab_host, tmp_path / "after", pool)

    assert job1.status == "done", vmr(out1, "vmchecker-stderr.vmr")
    assert result_json(out1)["warm_guest"] is False and vmr(out1, "run-stdout.vmr") == "Hello, world!\n"
    assert any(record.name in r.getMessage() and "its base changed" in r.getMessage() for r in caplog.records)
    assert pool.ready() == [] and pool.claimed() == [] and tokens(lab_host) == {}
    assert clone_leftovers(lab_host) == []


# --------------------------------------------------------------------------- revert: linked-clone


def test_linked_clone_warm_guest_serves_one_job(lab_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "m", revert="linked-clone"), pool, os.getpid())
    assert record and f"VM {record.name} (not one of the lab's)" in clone_leftovers(lab_host)
    assert vm_state(lab_host, record.name) == ("poweredOn", MEMORY_MB)

    job1, out1 = job(lab_host, tmp_path / "warm1", pool, revert="linked-clone")
    job2, out2 = job(lab_host, tmp_path / "cold2", pool, revert="linked-clone")

    assert job1.status == "done" and job2.status == "done", (job1.message, job2.message)
    assert job1.vm == record.name and job2.vm != record.name
    assert [result_json(o)["warm_guest"] for o in (out1, out2)] == [True, False]
    assert same_grade(out1, out2)
    assert not pool.take(record) and pool.ready() == [] and pool.claimed() == []
    assert clone_leftovers(lab_host) == []


def test_linked_clone_warm_guest_of_a_changed_snapshot_is_dropped(lab_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "m", revert="linked-clone"), pool, os.getpid())
    assert record
    retake_snapshot(lab_host, lab_host.lab.vms[0])

    job1, out1 = job(lab_host, tmp_path / "after", pool, revert="linked-clone")

    assert job1.status == "done" and result_json(out1)["warm_guest"] is False, job1.message
    assert job1.vm != record.name
    assert pool.ready() == [] and pool.claimed() == [] and clone_leftovers(lab_host) == []


# --------------------------------------------------------------------------- owners that died


def test_warm_guests_of_a_dead_queue_manager_are_removed_by_cleanup_leftovers(lab_host, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pool = WarmPool(tmp_path / "warm").ensure()
    snap = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "s"), pool, dead.pid)
    clone = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "c", revert="linked-clone"), pool, dead.pid)
    mine = lab_host.prepare_warm(machine_of(lab_host, tmp_path / "m"), pool, os.getpid())
    assert snap and clone and mine
    assert all(f"-{dead.pid}-" in r.name for r in (snap, clone))

    removed = lab_host.cleanup_leftovers()

    assert sorted(removed) == sorted([snap.name, clone.name])
    (mine_vm, name), = tokens(lab_host).items()   # a live owner's stays
    assert name == mine.name
    assert clone_leftovers(lab_host) == [f"VM {mine_vm} is poweredOn"]
    lab_host.drop_warm(mine)
    assert tokens(lab_host) == {} and clone_leftovers(lab_host) == []


# --------------------------------------------------------------------------- the queue manager


def test_queue_manager_runs_the_next_job_on_a_warm_vm_and_leaves_none_after_stop(lab_host, tmp_path):
    from tests.tester.helpers import make_bundle as queue_bundle
    from tests.tester.helpers import make_tester

    keys = lab_host.machine_keys(limits={"memory_mb": MEMORY_MB})
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": keys})
    state = tmp_path / "vmware-state"
    first, second = (f"vmwarm{i}{secrets.token_hex(4)}" for i in (1, 2))
    env = {**os.environ, "VMCHECKER_VMWARE_STATE": str(state)}
    proc = subprocess.Popen([sys.executable, "-m", "vmchecker.cli.queue_manager", "-v", str(cfg.root)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def done(job_id: str) -> dict | None:
        job_dir = cfg.done_dir / job_id
        return json.loads((job_dir / "result.json").read_text()) if results.read_marker(job_dir) else None

    def ready() -> list:
        return WarmPool(cfg.state_dir / "warm").ready()

    def queue(job_id: str) -> None:
        queue_bundle(cfg.queue_dir, job_id, None, machine_type="vmware", machine_keys=keys,
                     archive_members={"a.txt": "a\n"}, build_sh="#!/bin/bash\ntrue\n",
                     run_sh='#!/bin/bash\necho ran\n: > "$VMCHECKER_GRADE"\n')

    try:
        queue(first)
        one = wait_for(lambda: done(first), "the first job's results", timeout=300)
        warm = wait_for(ready, "a warm guest after the first job", timeout=300)
        queue(second)
        two = wait_for(lambda: done(second), "the second job's results", timeout=300)
        wait_for(lambda: [r for r in ready() if r.name != warm[0].name], "the next warm guest", timeout=300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes.find_orphans(tmp_path):
            processes.kill_orphan(pid, grace=10)

    assert proc.returncode == 0, err
    assert one["status"] == "done" and one["warm_guest"] is False, one
    assert two["status"] == "done" and two["warm_guest"] is True, two
    assert warm[0].name.startswith(f"vmck-warm-{proc.pid}-")   # named after the queue manager
    assert list(state.joinpath("locks").glob("*.warm")) == [], err   # stopping dropped every warm VM
    assert lab_host.lab.leftovers() == [], err
    pool = WarmPool(cfg.state_dir / "warm")
    assert pool.ready() == [] and pool.claimed() == []
