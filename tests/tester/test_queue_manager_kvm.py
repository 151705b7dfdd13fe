"""The queue manager grades a bundle end to end on a real KVM (libvirt) guest.

The bundle names machine type ``kvm``; the tester's config points the machine at the
KVM base guest built by kvm-resources/build-image.sh (the session fixture builds it or
skips with the reason). Everything is real: queue manager, executor process, guest.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest

from tests.executor.kvm_fixtures import kvm_host, kvm_machine  # noqa: F401  (kvm_host is a fixture)
from tests.tester.helpers import make_bundle, make_tester
from tests.util import HELLO_C, HELLO_MAKEFILE
from vmchecker.contract import TESTER_INFO
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
