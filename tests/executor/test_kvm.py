"""The executor on real libvirt/QEMU guests (TCG here): the LXC behaviours, on KVM.

Most jobs use ``revert: snapshot`` (the fast path: the RAM snapshot is loaded per job);
the two-slot, keep-failed and leftover tests use ``revert: overlay`` (a transient guest
per job). Timeouts are small; nothing asserts on how long something took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.executor import kvm_fixtures
from tests.executor.helpers import HELLO_FILES, c_program, make_bundle, vmr
from tests.executor.kvm_fixtures import KVM_STATE, kvm_machine, owned_domains

pytestmark = pytest.mark.kvm
kvm_host = kvm_fixtures.kvm_host   # the session fixture, made visible to this module


def run_job(host, folder: Path, machine: dict | None = None, **kwargs):
    bundle_dir, info = make_bundle(folder, **kwargs, **(machine or kvm_machine()))
    return host.test_submission(bundle_dir, info.machine, info), bundle_dir


def result_json(bundle_dir: Path) -> dict:
    return json.loads(vmr(bundle_dir, "result.json"))


def test_hello_builds_and_passes(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "b")
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert vmr(out, "run-stdout.vmr") == "Hello, world!\n"
    assert "gcc" in vmr(out, "build-stdout.vmr")
    assert vmr(out, "grade.vmr") == "10 hello ok\n"
    data = result_json(out)
    assert data["status"] == "done" and data["backend"] == "kvm"
    assert data["steps"]["build"]["exit_code"] == 0 and data["steps"]["run"]["exit_code"] == 0
    assert data["steps"]["build"]["cpu_s"] > 0 and data["steps"]["build"]["max_rss_kb"] > 0
    assert vmr(out, "vmchecker-stderr.vmr") == ""


def test_guest_clock_is_set_after_revert(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "b", run="date -u +%s\n")
    assert abs(int(vmr(out, "run-stdout.vmr")) - time.time()) < 60


def test_compile_error_skips_run(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "b", files={"hello.c": "int main(void) { return x; }\n",
                                                         "Makefile": HELLO_FILES["Makefile"]})
    assert job.status == "done"
    assert "error" in vmr(out, "build-stderr.vmr") and "hello.c" in vmr(out, "build-stderr.vmr")
    assert job.steps["build"].exit_code != 0
    assert not job.steps["run"].attempted
    assert vmr(out, "grade.vmr") == "done\n"


def test_infinite_loop_is_killed_and_next_job_runs(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "loop", files=c_program("fork(); for (;;) ;"), timeout=2)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert job.steps["run"].timed_out
    assert job.steps["run"].signal == signal.SIGKILL
    assert "did not finish within 2 s" in vmr(out, "vmchecker-stderr.vmr")
    job, out = run_job(kvm_host, tmp_path / "next")
    assert job.status == "done" and vmr(out, "run-stdout.vmr") == "Hello, world!\n"


def test_leftover_background_process_is_killed(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "b", run="(sleep 100; echo late) &\necho started > grade.vmr\n",
                       timeout=30)
    assert job.status == "done"
    assert not job.steps["run"].timed_out and job.steps["run"].exit_code == 0
    assert "late" not in vmr(out, "run-stdout.vmr")


def test_fork_bomb_is_contained(kvm_host, tmp_path):
    job, out = run_job(kvm_host, tmp_path / "bomb", files=c_program("for (;;) fork();"), timeout=3,
                       limits={"pids": 64})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert job.steps["run"].timed_out
    job, out = run_job(kvm_host, tmp_path / "next")
    assert vmr(out, "run-stdout.vmr") == "Hello, world!\n"


def test_memory_hog_is_contained(kvm_host, tmp_path):
    hog = c_program("for (size_t i = 0; i < 4096; i++) { char *p = malloc(1 << 20); if (!p) return 3;"
                    " memset(p, 1, 1 << 20); } puts(\"survived\"); return 0;")
    job, out = run_job(kvm_host, tmp_path / "hog", files=hog, run="exec ./hello\n", limits={"memory_mb": 64})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "survived" not in vmr(out, "run-stdout.vmr")
    assert job.steps["run"].signal == signal.SIGKILL   # the OOM killer, inside the step's cgroup
    assert not job.steps["run"].timed_out
    assert job.steps["run"].max_rss_kb <= 64 * 1024


def test_output_flood_is_capped(kvm_host, tmp_path):
    run = ("head -c 64M /dev/zero | tr '\\0' x\nhead -c 8M /dev/zero >&2\n"
           "echo big > grade.vmr\nhead -c 4M /dev/zero >> grade.vmr\n")
    job, out = run_job(kvm_host, tmp_path / "b", run=run, timeout=60, limits={"output_kb": 16})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    for name in ("run-stdout.vmr", "run-stderr.vmr", "grade.vmr"):
        assert (out / "results" / name).stat().st_size < 16 * 1024 + 200, name
        assert "[vmchecker: output truncated at 16 KiB" in vmr(out, name), name
    assert vmr(out, "run-stdout.vmr").startswith("x" * 1000)
    assert f"{64 * 2**20 - 16 * 1024} more bytes were dropped" in vmr(out, "run-stdout.vmr")


def test_files_outside_the_job_folder_do_not_survive(kvm_host, tmp_path):
    base = KVM_STATE / "base.qcow2"
    before = base.stat().st_mtime_ns
    evil = "echo owned > /etc/evil; echo owned > /root/x; mkdir -p /usr/local/evil; sync; echo ok\n"
    job, out = run_job(kvm_host, tmp_path / "evil", run=evil)
    assert vmr(out, "run-stdout.vmr") == "ok\n"
    check = "for f in /etc/evil /root/x /usr/local/evil; do test -e $f && echo dirty $f; done; echo checked\n"
    job, out = run_job(kvm_host, tmp_path / "check", run=check)
    assert vmr(out, "run-stdout.vmr") == "checked\n"
    assert base.stat().st_mtime_ns == before   # overlay jobs start from an untouched base


def test_kernel_messages_go_to_run_km(kvm_host, tmp_path):
    console = KVM_STATE / "jobs" / "$VMCHECKER_VM.console"
    machine = kvm_machine(kernel_messages=[f"exec tail -n0 -F {console}"])
    run = "echo '<3>vmchecker-km-probe' > /dev/kmsg; sleep 1\n"
    job, out = run_job(kvm_host, tmp_path / "b", machine, run=run)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "vmchecker-km-probe" in vmr(out, "run-km.vmr")


def test_two_overlay_jobs_at_once(kvm_host, tmp_path):
    results = {}

    def one(name: str) -> None:
        results[name] = run_job(kvm_host, tmp_path / name, kvm_machine(revert="overlay"),
                                run="./hello; sleep 3\n", job_id=name, timeout=30)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    seen = 0
    while any(t.is_alive() for t in threads):
        seen = max(seen, len(owned_domains(kvm_host, {os.getpid()})))
        time.sleep(0.1)
    for name in ("a", "b"):
        job, out = results[name]
        assert job.status == "done" and vmr(out, "run-stdout.vmr") == "Hello, world!\n", name
    assert seen == 2
    assert owned_domains(kvm_host, {os.getpid()}) == []
    assert not list((KVM_STATE / "jobs").glob(f"vmck-*-{os.getpid()}-*"))


def test_guest_not_ready_is_an_error_and_keep_failed_keeps_its_disk(kvm_host, tmp_path):
    machine = kvm_machine(revert="overlay", boot_timeout=1, keep_failed=True)
    job, out = run_job(kvm_host, tmp_path / "b", machine)
    assert job.status == "error"
    errors = vmr(out, "vmchecker-stderr.vmr")
    assert "was not ready within 1 s" in errors and "serial console" in errors
    kept = [line.rsplit(": ", 1)[1] for line in errors.splitlines() if "kept for inspection" in line]
    assert len(kept) == 1 and Path(kept[0]).is_file()
    Path(kept[0]).unlink()
    Path(kept[0]).with_suffix(".console").unlink(missing_ok=True)
    assert owned_domains(kvm_host, {os.getpid()}) == []


def test_guest_of_dead_executor_is_cleaned(kvm_host, tmp_path):
    from vmchecker.config import parse_machine
    from vmchecker.executor.kvm import KvmVM

    dead = subprocess.Popen(["true"])
    dead.wait()
    machine = parse_machine({"name": "linux", **kvm_machine(revert="overlay")}, "test")
    vm = KvmVM(machine, f"vmck-left-{dead.pid}-abcdef", kvm_host.connection())
    vm.prepare_console()
    vm.revert()
    vm.start()
    assert owned_domains(kvm_host, {dead.pid}) == [vm.name]
    assert vm.name in kvm_host.cleanup_leftovers()
    assert owned_domains(kvm_host, {dead.pid}) == []
    assert not vm.overlay.exists() and not vm.console.exists()


def test_kernel_messages_of_two_snapshot_jobs_stay_apart(kvm_host, tmp_path):
    # one snapshot domain, two slots: the second job waits for the domain, and its
    # kernel_messages command must not follow the shared console while the first runs
    console = KVM_STATE / "jobs" / "$VMCHECKER_VM.console"
    machine = kvm_machine(kernel_messages=[f"exec tail -n0 -F {console}"])
    results = {}

    def one(name: str) -> None:
        run = f"echo '<3>vmchecker-km-{name}' > /dev/kmsg; sleep 1\n"
        results[name] = run_job(kvm_host, tmp_path / name, machine, run=run, job_id=name, timeout=30)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
