"""The warm-guest pool's records on their own (executor/warm.py): a claim takes a record
for one process only, a used record is never ready again, records of dead processes are
found, and which machines can be kept warm."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from vmchecker.config import parse_machine
from vmchecker.executor.warm import WarmPool, capacity, fingerprint, new_record, pool_key


def machine(**overrides):
    return parse_machine({"name": "linux", "type": "lxc", "vm": "vmchecker-base", **overrides}, "test")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_record_is_claimed_once(tmp_path):
    pool = WarmPool(tmp_path).ensure()
    record = new_record("vmck-warm-1-aa", machine(), "base-1", os.getpid())
    pool.publish(record)

    assert pool.claim(fingerprint(machine(vm="other"))) is None   # prepared for another machine
    assert pool.claim(fingerprint(machine())) == record
    assert pool.claim(fingerprint(machine())) is None
    assert not pool.take(record)
    assert pool.ready() == [] and pool.claimed() == [(record, os.getpid())]
    pool.release(record)
    assert pool.claimed() == []


def test_racing_claims_take_each_record_once(tmp_path):
    pool = WarmPool(tmp_path).ensure()
    records = [new_record(f"vmck-warm-1-{i:02x}", machine(), "base", os.getpid()) for i in range(20)]
    for r in records:
        pool.publish(r)
    won: list[str] = []
    barrier = threading.Barrier(4)

    def claimer() -> None:
        barrier.wait()
        while (r := pool.claim(fingerprint(machine()))) is not None:
            won.append(r.name)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == sorted(r.name for r in records)   # every record once, none twice


def test_orphans_are_records_no_live_process_answers_for(tmp_path):
    pool = WarmPool(tmp_path).ensure()
    mine = new_record("vmck-warm-1-01", machine(), "b", os.getpid())
    dead_owner = new_record("vmck-warm-1-02", machine(), "b", dead_pid())
    claimed_by_dead = new_record("vmck-warm-1-03", machine(), "b", os.getpid())
    for r in (mine, dead_owner, claimed_by_dead):
        pool.publish(r)
    gone = dead_pid()
    assert pool.take(claimed_by_dead, gone)

    assert sorted(r.name for r, _ in pool.orphans()) == [dead_owner.name, claimed_by_dead.name]
    assert (claimed_by_dead, gone) in pool.orphans()
    # a queue manager starting: every ready record not its own is an orphan
    assert {r.name for r, _ in pool.orphans(owner=os.getpid() + 1)} == {r.name for r in (mine, dead_owner,
                                                                                         claimed_by_dead)}


def test_a_broken_record_is_ignored(tmp_path):
    pool = WarmPool(tmp_path).ensure()
    (pool.ready_dir / "vmck-warm-1-aa.json").write_text("{not json")
    assert pool.ready() == [] and pool.claim(fingerprint(machine())) is None


def test_which_machines_are_kept_warm():
    assert capacity(machine()) > 1
    kvm = dict(type="kvm", vm="dom", base_image="/var/lib/vmchecker/kvm/base.qcow2")
    assert capacity(machine(**kvm)) == 1
    assert pool_key(machine(**kvm)) == pool_key(machine(**kvm, limits={"memory_mb": 1024}))   # one domain
    assert fingerprint(machine(**kvm)) != fingerprint(machine(**kvm, limits={"memory_mb": 1024}))
    assert capacity(machine(**kvm, revert="overlay")) == 0
    assert capacity(machine(kernel_messages=["tail -F x"])) == 0   # they must see the boot
    assert capacity(machine(type="docker", vm="", image="img")) > 1
    vmware = dict(type="vmware", vm="v", vms=["v", "w"], vmware_url="https://x/sdk")
    assert capacity(machine(**vmware)) == 2   # one per VM of the pool
    assert pool_key(machine(**vmware)) == pool_key(machine(**vmware, limits={"memory_mb": 1024}))   # one pool
    assert capacity(machine(**vmware, revert="linked-clone")) > 2
    assert fingerprint(machine(testers=["t1"])) == fingerprint(machine(testers=["t2"]))
