"""The queue manager keeps warm guests (tester/warmer.py) with the real executor on the
real LXC base container: after a job, while its slot is idle, the next clone is made
ready and the next job runs on it (and only that job, on a guest as clean as a cold
one); stopping destroys the warm guests; after a SIGKILL the next start does.

The test never makes a clone itself; it waits on the pool's records (barriers, never
sleeps) and asserts nothing on time.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import lxc_unusable
from tests.tester.helpers import make_bundle, make_tester
from tests.util import wait_for
from vmchecker.executor.warm import WarmPool
from vmchecker.tester import processes, results

REPO = Path(__file__).resolve().parents[2]
BASE = "vmchecker-base"

pytestmark = pytest.mark.lxc

# Says whether an earlier job's writes (as root and as the student) reached this guest,
# then makes them.
LEAK_RUN = """\
#!/bin/bash
if [ -e /etc/vmck-leak ] || [ -e /tmp/vmck-leak-student ]; then echo dirty; else echo clean; fi
echo leak > /etc/vmck-leak
vmchecker-run sh -c 'echo leak > /tmp/vmck-leak-student'
: > "$VMCHECKER_GRADE"
"""


@pytest.fixture(autouse=True)
def lxc_available():
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path):
    yield
    for pid in processes.find_orphans(tmp_path):
        processes.kill_orphan(pid, grace=10)


def clones_of(pid: int) -> list[str]:
    """The LXC clones named after process ``pid`` (a queue manager's warm guests)."""
    out = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()
    return [n for n in out if n.startswith("vmck-") and f"-{pid}-" in n]


def destroy(names: list[str]) -> None:
    for name in names:
        subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True)


def queue_manager(cfg, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmchecker.cli.queue_manager", "-v", *args, str(cfg.root)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def leak_bundle(cfg, job_id: str) -> None:
    make_bundle(cfg.queue_dir, job_id, None, archive_members={"a.txt": "a\n"}, build_sh="#!/bin/bash\ntrue\n",
                run_sh=LEAK_RUN)


def done(cfg, job_id: str) -> dict | None:
    job_dir = cfg.done_dir / job_id
    if results.read_marker(job_dir) is None:
        return None
    return json.loads((job_dir / "result.json").read_text())


def ready(cfg) -> list:
    return WarmPool(cfg.state_dir / "warm").ready()


def test_next_job_runs_on_the_warm_guest_made_after_the_last_and_stop_destroys_it(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": {"type": "lxc"}})
    first, second = (f"warm{i}{secrets.token_hex(4)}" for i in (1, 2))
    proc = queue_manager(cfg)
    try:
        leak_bundle(cfg, first)
        one = wait_for(lambda: done(cfg, first), "the first job's results", timeout=120)
        warm = wait_for(lambda: ready(cfg), "a warm guest after the first job", timeout=120)
        assert [r.name for r in warm] == clones_of(proc.pid)   # named after the queue manager
        leak_bundle(cfg, second)
        two = wait_for(lambda: done(cfg, second), "the second job's results", timeout=120)
        again = wait_for(lambda: [r for r in ready(cfg) if r.name != warm[0].name], "the next warm guest",
                         timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = clones_of(proc.pid)
        destroy(left)

    assert proc.returncode == 0, err
    assert one["status"] == "done" and one["warm_guest"] is False, one
    assert two["status"] == "done" and two["warm_guest"] is True and two["vm"] == warm[0].name, two
    assert (cfg.done_dir / second / "run-stdout.vmr").read_text() == "clean\n"
    assert again[0].name not in (one["vm"], two["vm"])   # used once: the next job gets another
    assert left == [], err   # stopping destroyed the warm guest
    pool = WarmPool(cfg.state_dir / "warm")
    assert pool.ready() == [] and pool.claimed() == []


def test_warm_guests_of_a_killed_queue_manager_go_at_the_next_start(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": {"type": "lxc"}})
    job_id = f"warmkill{secrets.token_hex(4)}"
    proc = queue_manager(cfg)
    try:
        leak_bundle(cfg, job_id)
        wait_for(lambda: done(cfg, job_id), "the job's results", timeout=120)
        warm = wait_for(lambda: ready(cfg), "a warm guest after the job", timeout=120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert clones_of(proc.pid) == [warm[0].name]   # a SIGKILL cannot clean up

        again = queue_manager(cfg, "--once")
        _, err = again.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        left = clones_of(proc.pid)
        destroy(left)

    assert again.returncode == 0, err
    assert left == [], err
    pool = WarmPool(cfg.state_dir / "warm")
    assert pool.ready() == [] and pool.claimed() == []


def test_warm_guests_off(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": {"type": "lxc"}},
                      warm_guests=0)
    first, second = (f"cold{i}{secrets.token_hex(4)}" for i in (1, 2))
    proc = queue_manager(cfg)
    try:
        leak_bundle(cfg, first)
        one = wait_for(lambda: done(cfg, first), "the first job's results", timeout=120)
        leak_bundle(cfg, second)
        two = wait_for(lambda: done(cfg, second), "the second job's results", timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = clones_of(proc.pid)
        destroy(left)

    assert proc.returncode == 0, err
    assert one["warm_guest"] is False and two["warm_guest"] is False
    assert left == [] and ready(cfg) == []
