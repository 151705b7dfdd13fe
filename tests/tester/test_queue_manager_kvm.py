"""The queue manager grades a bundle end to end on a real KVM (libvirt) guest.

The bundle names machine type ``kvm``; the tester's config points the machine at the
KVM base guest built by kvm-resources/build-image.sh (the session fixture builds it or
skips with the reason). Everything is real: queue manager, executor process, guest.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys

import pytest

from tests.executor.kvm_fixtures import KVM_STATE, kvm_host, kvm_machine  # noqa: F401  (kvm_host is a fixture)
from tests.tester.helpers import make_bundle, make_tester
from tests.util import HELLO_C, HELLO_MAKEFILE, wait_for
from vmchecker.contract import TESTER_INFO
from vmchecker.executor.warm import WarmPool
from vmchecker.tester import results

pytestmark = pytest.mark.kvm


def test_kvm_bundle_graded_by_the_queue_manager(tmp_path, kvm_host):  # noqa: F811
    overrides = {k: v for k, v in kvm_machine().items() if k != "type"}
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": overrides})
    job_id = f"qmkvm{secrets.token_hex(4)}"
    make_bundle(cfg.queue_dir, job_id, None, machine_type="kvm",
                archive_members={"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE})

    proc = subprocess.run([sys.executable, "-m", "vmchecker.cli.queue_manager", "--once", str(cfg.root)],
                          capture_output=True, text=True, timeout=600)

    assert proc.returncode == 0, proc.stderr
    job_dir = cfg.done_dir / job_id
    assert results.read_marker(job_dir) is not None, proc.stderr
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "done" and result["backend"] == "kvm" and result["grade_file"] is True, result
    assert "Hello, world!" in (job_dir / "run-stdout.vmr").read_text()
    assert (job_dir / "grade.vmr").read_text() == ""   # the tests' grade file: full points
    assert [p.name for p in cfg.queue_dir.iterdir()] == [TESTER_INFO]


def test_kvm_queue_manager_keeps_the_snapshot_domain_warm_and_stop_forgets_it(tmp_path, kvm_host):  # noqa: F811
    overrides = {k: v for k, v in kvm_machine().items() if k != "type"}
    cfg = make_tester(tmp_path / "tester", slots=1, executor_timeout=300, machines={"linux": overrides})
    job_id = f"qmkvmwarm{secrets.token_hex(4)}"
    pool = WarmPool(cfg.state_dir / "warm")
    token = KVM_STATE / "jobs" / ".vmchecker-kvm-base.warm"
    proc = subprocess.Popen([sys.executable, "-m", "vmchecker.cli.queue_manager", "-v", str(cfg.root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        make_bundle(cfg.queue_dir, job_id, None, machine_type="kvm",
                    archive_members={"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE})
        wait_for(lambda: results.read_marker(cfg.done_dir / job_id), "the job's results", timeout=300)
        warm = wait_for(pool.ready, "the domain kept warm after the job", timeout=300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0, err
    assert json.loads((cfg.done_dir / job_id / "result.json").read_text())["status"] == "done"
    assert warm[0].owner == proc.pid
    assert pool.ready() == [] and pool.claimed() == []
    assert not token.exists() or token.read_text().strip() != warm[0].name   # forgotten at stop
