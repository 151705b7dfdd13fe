"""What only the KVM backend does, on real libvirt/QEMU guests (TCG here): the guest
clock after a snapshot revert, kernel messages from the serial console, a guest that
never becomes ready (and keep_failed), leftovers of dead executors, both ways results
come out and both ways a payload goes in. The behaviour both backends share is in
test_behaviour.py.

Most jobs use ``revert: snapshot`` (the fast path: the RAM snapshot is loaded per job);
the keep-failed and leftover tests use ``revert: overlay`` (a transient guest per job).
Timeouts are small; nothing asserts on how long something took.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.executor.helpers import around_run_step, make_bundle, run_job, vmr
from tests.executor.kvm_fixtures import KVM_STATE, kvm_machine, owned_domains
from tests.util import side_by_side, wait_for
from vmchecker.executor.warm import WarmPool

pytestmark = pytest.mark.kvm


def test_guest_clock_is_set_after_revert(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "b", kvm_machine(), run="date -u +%s\n")
    assert abs(int(vmr(out, "run-stdout.vmr")) - time.time()) < 60


def km_arrived(results: Path, line: str) -> None:
    """Wait, after the run step, until ``line`` reached the job's run-km.vmr: the
    kernel_messages command follows the console on its own time, and the job stops it
    right after the run step."""
    wait_for(lambda: line in (results / "run-km.vmr").read_text(errors="replace"), f"{line!r} in run-km.vmr")


def test_kernel_messages_go_to_run_km(kvm_host, tmp_path, monkeypatch):
    console = KVM_STATE / "jobs" / "$VMCHECKER_VM.console"
    machine = kvm_machine(kernel_messages=[f"exec tail -n0 -F {console}"])
    around_run_step(monkeypatch, kvm_host, after=lambda results: km_arrived(results, "vmchecker-km-probe"))
    run = "echo '<3>vmchecker-km-probe' > /dev/kmsg\n"
    job, out = run_job(kvm_host, tmp_path / "b", machine, run=run)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "vmchecker-km-probe" in vmr(out, "run-km.vmr")


def test_guest_not_ready_is_an_error_and_keep_failed_keeps_its_disk(kvm_host, tmp_path):
    # no time at all to boot: not ready however fast the guest (a guard of 1 s could pass with KVM)
    machine = kvm_machine(revert="overlay", boot_timeout=0, keep_failed=True)
    job, out = run_job(kvm_host, tmp_path / "b", machine)
    assert job.status == "error"
    errors = vmr(out, "vmchecker-stderr.vmr")
    assert "was not ready within 0 s" in errors and "serial console" in errors
    kept = [line.rsplit(": ", 1)[1] for line in errors.splitlines() if "kept for inspection" in line]
    assert len(kept) == 1 and Path(kept[0]).is_file()
    Path(kept[0]).unlink()
    Path(kept[0]).with_suffix(".console").unlink(missing_ok=True)
    assert owned_domains(kvm_host, {os.getpid()}) == []


def test_guest_of_dead_executor_is_cleaned(kvm_host, tmp_path):
    from vmchecker.config import parse_machine
    from vmchecker.executor.kvm_modes import OverlayVM

    dead = subprocess.Popen(["true"])
    dead.wait()
    machine = parse_machine({"name": "linux", **kvm_machine(revert="overlay")}, "test")
    vm = OverlayVM(machine, f"vmck-left-{dead.pid}-abcdef", kvm_host.connection())
    vm.prepare_console()
    vm.revert()
    vm.start()
    assert owned_domains(kvm_host, {dead.pid}) == [vm.name]
    assert vm.name in kvm_host.cleanup_leftovers()
    assert owned_domains(kvm_host, {dead.pid}) == []
    assert not vm.overlay.exists() and not vm.console.exists()


def test_kernel_messages_of_two_snapshot_jobs_stay_apart(kvm_host, tmp_path, monkeypatch):
    # one snapshot domain, two slots: the second job waits for the domain, and its
    # kernel_messages command must not follow the shared console while the first runs
    console = KVM_STATE / "jobs" / "$VMCHECKER_VM.console"
    machine = kvm_machine(kernel_messages=[f"exec tail -n0 -F {console}"])
    around_run_step(monkeypatch, kvm_host,   # each job's own line is in before the next job may start
                    after=lambda results: km_arrived(results, f"vmchecker-km-{results.parent.name}"))
    results = side_by_side(lambda name: run_job(kvm_host, tmp_path / name, machine, job_id=name, timeout=30,
                                                run=f"echo '<3>vmchecker-km-{name}' > /dev/kmsg\n"), ("a", "b"))
    for name, other in (("a", "b"), ("b", "a")):
        job, out = results[name]
        assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
        km = vmr(out, "run-km.vmr")
        assert f"vmchecker-km-{name}" in km and f"vmchecker-km-{other}" not in km, (name, km)


def test_cleanup_looks_in_the_state_folders_of_the_machines_it_is_given(kvm_host, tmp_path):
    from vmchecker.config import parse_machine

    dead = subprocess.Popen(["true"])
    dead.wait()
    machine = parse_machine({"name": "linux", **kvm_machine(revert="overlay", base_image=str(tmp_path / "b.qcow2"))},
                            "test")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    left = f"vmck-left-{dead.pid}-abcdef"
    for suffix in (".qcow2", ".console"):
        (jobs / f"{left}{suffix}").write_text("x")
    mine = jobs / f"vmck-mine-{os.getpid()}-abcdef.qcow2"   # a running job's: kept
    mine.write_text("x")

    assert left not in kvm_host.cleanup_leftovers()   # the default folder only
    assert left in kvm_host.cleanup_leftovers([machine])
    assert sorted(p.name for p in jobs.iterdir()) == [mine.name]


def results_run(extra: int) -> str:
    """run.sh: the grade, a file over the 1 KiB cap, a note and ``extra`` more results,
    beside what the copy-out must not take: a dotfile, a link to a secret, a fifo."""
    return ('cd "$VMCHECKER_RESULTS" && : > "$VMCHECKER_GRADE" && head -c 3000 /dev/zero | tr "\\000" x > big.vmr'
            ' && echo note > note.vmr && echo hidden > .dot.vmr && ln -s /etc/shadow leak.vmr && mkfifo fifo.vmr'
            f' && for i in $(seq {extra}); do echo $i > n$i.vmr; done\n')


@pytest.mark.parametrize("many", [False, True], ids=["read-one-by-one", "as-one-tar"])
def test_results_come_out_capped_without_links_dotfiles_or_fifos(kvm_host, tmp_path, many):
    from vmchecker.executor.kvm_vm import FILE_READS_MAX

    extra = FILE_READS_MAX if many else 0
    machine = kvm_machine(limits={"output_kb": 1})
    job, out = run_job(kvm_host, tmp_path / "b", machine, build="true\n", run=results_run(extra))
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    names = {p.name for p in (out / "results").iterdir()}
    assert {"grade.vmr", "big.vmr", "note.vmr", *(f"n{i}.vmr" for i in range(1, extra + 1))} <= names
    assert not names & {"leak.vmr", ".dot.vmr", "fifo.vmr"}
    assert vmr(out, "note.vmr") == "note\n" and vmr(out, "grade.vmr") == ""
    big = vmr(out, "big.vmr")
    assert big.startswith("x" * 1024) and "x" * 1025 not in big and "truncated" in big


def test_a_payload_through_a_file_on_cold_and_warm_guests(own_domain, tmp_path, monkeypatch):
    # a payload over IN_DATA_MAX goes through a file in the guest; 0 sends every one so
    from vmchecker.executor import kvm_vm

    run = './hello; if [ -e /run/vmck-in.tar ]; then echo left; else echo gone; fi; : > "$VMCHECKER_GRADE"\n'
    monkeypatch.setattr(kvm_vm, "IN_DATA_MAX", 0)
    pool = WarmPool(tmp_path / "warm").ensure()
    outs = []
    for name, warm in (("cold", False), ("warm", True)):
        bundle_dir, info = make_bundle(tmp_path / name, run=run, job_id=name, **kvm_machine())
        if warm:
            assert own_domain.prepare_warm(info.machine, pool, os.getpid())
        job = own_domain.test_submission(bundle_dir, info.machine, info, warm=pool if warm else None)
        assert job.status == "done" and job.warm_guest == warm, vmr(bundle_dir, "vmchecker-stderr.vmr")
        outs.append(vmr(bundle_dir, "run-stdout.vmr"))
    assert outs == ["Hello, world!\ngone\n"] * 2
