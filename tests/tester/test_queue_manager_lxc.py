"""The queue manager with the real executor on the real LXC base container.

One C "hello" bundle (built with vmchecker.bundle.build_bundle) dropped into queue/
while the queue manager is stopped is run by ``--once``; and a queue manager killed
with SIGKILL mid-job, then restarted, leaves no LXC clone of that job behind and still
produces its results. The test never creates or changes containers itself: only the
executor does.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import lxc_unusable
from tests.tester.helpers import HELLO_RUN, kill_9, make_bundle, make_tester
from tests.util import HELLO_C, HELLO_MAKEFILE, wait_for
from vmchecker.contract import STEP_FILES, TESTER_INFO
from vmchecker.tester import processes, results

REPO = Path(__file__).resolve().parents[2]
BASE = "vmchecker-base"
CLONE_PREFIX = "vmck-"
RUN_STDOUT = STEP_FILES["run"][0]

pytestmark = pytest.mark.lxc


@pytest.fixture(autouse=True)
def lxc_available():
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)


def clones_of(job_id: str) -> list[str]:
    out = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True, check=True).stdout.split()
    tag = "".join(c for c in job_id if c.isalnum())[:20]
    return [n for n in out if n.startswith(f"{CLONE_PREFIX}{tag}-")]


def hello_bundle(queue_dir: Path, job_id: str, run_sh: str = HELLO_RUN) -> Path:
    return make_bundle(queue_dir, job_id, None, archive_members={"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE},
                       build_sh="#!/bin/bash\nmake\n", run_sh=run_sh)


def lxc_tester(tmp_path: Path):
    return make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": {"type": "lxc"}})


def queue_manager(cfg, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmchecker.cli.queue_manager", "-v", *args, str(cfg.root)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path):
    yield
    for pid in processes.find_orphans(tmp_path):
        processes.kill_orphan(pid, grace=10)


def assert_hello_done(cfg, job_id: str) -> None:
    job_dir = cfg.done_dir / job_id
    assert results.read_marker(job_dir) is not None, f"no complete results in {job_dir}"
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "done" and result["grade_file"] is True, result
    assert "Hello, world!" in (job_dir / "run-stdout.vmr").read_text()
    assert (job_dir / "grade.vmr").read_text() == ""   # the tests' grade file: full points
    assert [p.name for p in cfg.queue_dir.iterdir()] == [TESTER_INFO]
    assert list(cfg.work_dir.iterdir()) == []


def test_bundle_queued_while_stopped_runs_with_once(tmp_path):
    cfg = lxc_tester(tmp_path)
    job_id = f"qmlxc{secrets.token_hex(4)}"
    hello_bundle(cfg.queue_dir, job_id)

    proc = queue_manager(cfg, "--once")
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    assert_hello_done(cfg, job_id)
    assert clones_of(job_id) == []


def test_kill_9_mid_job_leaves_no_clone_and_restart_produces_results(tmp_path):
    cfg = lxc_tester(tmp_path)
    job_id = f"qmkill{secrets.token_hex(4)}"
    # this run step never ends by itself, so the kill comes in the middle of it
    hello_bundle(cfg.queue_dir, job_id, run_sh=HELLO_RUN + "exec sleep 1000\n")

    proc = queue_manager(cfg)
    try:
        wait_for(lambda: clones_of(job_id), "the executor to clone the base container", timeout=120)
        wait_for(lambda: list(cfg.work_dir.glob(f"*/results/{RUN_STDOUT}")), "the run step to start", timeout=120)
    finally:
        kill_9(proc)

    hello_bundle(cfg.queue_dir, job_id)   # the same job sent again, with a run step that ends
    again = queue_manager(cfg, "--once")
    _, err = again.communicate(timeout=300)

    assert again.returncode == 0, err
    assert clones_of(job_id) == [], err
    assert_hello_done(cfg, job_id)
