"""The generic flow of base.Host, with a VM that runs its "guest" in a host folder.

The fake subclasses the real VM and overrides only the primitives (what touches a
guest); everything else is the real flow, on real files and real processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.executor.helpers import GUARD_TIMEOUT, make_bundle, vmr
from vmchecker.errors import BundleError, ExecutorError, Interrupted
from vmchecker.executor import base, get_host, interrupts, results


class FolderVM(base.VM):
    """A 'guest' that is a host folder; steps run as host processes in it."""

    def __init__(self, machine, name, root: Path, fail: dict[str, BaseException]):
        super().__init__(machine, name)
        self.root, self.fail, self.calls = root, fail, []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if what in self.fail:
            raise self.fail[what]

    def revert(self):
        self._call("revert")

    def start(self):
        self._call("start")

    def wait_ready(self, timeout):
        self._call("wait_ready")

    def copy_to(self, load, guest_dir):
        self._call("copy_to")
        shutil.copytree(load.root, self.root / guest_dir.lstrip("/"))

    def copy_from(self, guest_dir, dest, cap):
        self._call("copy_from")
        for path in (self.root / guest_dir.lstrip("/")).glob("*.vmr"):
            with open(path, "rb") as f:
                (dest / path.name).write_bytes(f.read(cap + 1))

    def run(self, argv, cwd, timeout, stdout, stderr):
        """What vmchecker-step does, minus the users: ``argv`` is [sh, step program,
        step, shell]; the step's script runs with the grade file in the environment."""
        self._call("run")
        base_dir = self.root / Path(argv[1]).parent.parent.parent.relative_to("/")
        env = {"PATH": "/usr/bin:/bin", "VMCHECKER_RESULTS": str(base_dir / "results"),
               "VMCHECKER_GRADE": str(base_dir / "results" / "grade.vmr")}
        proc = subprocess.run(["/bin/sh", str(base_dir / "course" / f"{argv[2]}.sh")], cwd=self.root / cwd.lstrip("/"),
                              capture_output=True, timeout=timeout, env=env)
        stdout.write(proc.stdout)
        stderr.write(proc.stderr)
        return results.StepResult(exit_code=proc.returncode, wall_s=0.0)

    def stop(self):
        self._call("stop")

    def cleanup(self, failed=False):
        self.calls.append("cleanup")
        self.cleaned_after_failure = failed
        return "guest kept for inspection in /somewhere" if failed else None


class FolderHost(base.Host):
    def __init__(self, root: Path, **fail: BaseException):
        self.root, self.fail, self.vms = root, fail, []

    def get_vm(self, machine, job_id):
        vm = FolderVM(machine, f"folder-{job_id}", self.root, self.fail)
        self.vms.append(vm)
        return vm


def run_job(tmp_path: Path, host: FolderHost | None = None, **kwargs):
    host = host or FolderHost(tmp_path / "guest")
    bundle_dir, info = make_bundle(tmp_path / "bundle", **kwargs)
    return host.test_submission(bundle_dir, info.machine, info), bundle_dir, host


def test_full_flow_in_order(tmp_path):
    run = ("echo out; echo err >&2; echo '-3: slow' > \"$VMCHECKER_GRADE\"; echo note > \"$VMCHECKER_RESULTS/extra.vmr\"\n"
           "echo forged > grade.vmr; echo forged > job.vmr\n")   # the job folder's *.vmr are never results
    job, out, host = run_job(tmp_path, build="echo built\n", run=run)
    assert job.status == "done"
    assert host.vms[0].calls == ["revert", "start", "wait_ready", "copy_to", "run", "run", "copy_from", "stop",
                                 "cleanup"]
    assert not host.vms[0].cleaned_after_failure
    assert vmr(out, "build-stdout.vmr") == "built\n"
    assert vmr(out, "run-stdout.vmr") == "out\n" and vmr(out, "run-stderr.vmr") == "err\n"
    assert vmr(out, "grade.vmr") == "-3: slow\n" and vmr(out, "extra.vmr") == "note\n"
    assert not (out / "results" / "job.vmr").exists()
    data = json.loads(vmr(out, "result.json"))
    assert data["status"] == "done" and data["steps"]["run"]["exit_code"] == 0
    assert data["grade_file"] is True and data["steps"]["run"]["timeout_s"] == GUARD_TIMEOUT


def test_result_json_says_when_each_stage_happened_in_order(tmp_path):
    _job, out, _host = run_job(tmp_path, build="echo built\n", run="echo ran\n")
    data = json.loads(vmr(out, "result.json"))
    order = ["executor_started", "guest_ready", "build_started", "build_ended", "run_started", "run_ended",
             "executor_ended"]
    assert list(data["timeline"]) == order and list(data["timeline_s"]) == order
    times = list(data["timeline"].values())
    assert times == sorted(times) and data["timeline_s"]["executor_started"] == 0
    assert list(data["timeline_s"].values()) == sorted(data["timeline_s"].values())


def test_a_failed_start_has_no_guest_ready_in_its_timeline(tmp_path):
    _job, out, _host = run_job(tmp_path, FolderHost(tmp_path / "guest", start=ExecutorError("did not start")))
    timeline = json.loads(vmr(out, "result.json"))["timeline"]
    assert list(timeline) == ["executor_started", "executor_ended"]


def test_no_grade_file_is_said_in_result_json_and_nothing_stands_for_it(tmp_path):
    job, out, _ = run_job(tmp_path, run="echo 10 > grade.vmr\n")
    assert job.status == "done" and not (out / "results" / "grade.vmr").exists()
    assert json.loads(vmr(out, "result.json"))["grade_file"] is False


def test_a_failed_build_skips_the_run(tmp_path):
    job, out, host = run_job(tmp_path, build="exit 2\n", run="echo ran > \"$VMCHECKER_GRADE\"\n")
    assert job.status == "done" and host.vms[0].calls.count("run") == 1
    data = json.loads(vmr(out, "result.json"))
    assert data["steps"]["build"]["exit_code"] == 2 and data["steps"]["run"]["attempted"] is False
    assert data["grade_file"] is False


def test_a_guest_cannot_overwrite_the_executors_files(tmp_path):
    job, out, _ = run_job(tmp_path, run='echo real\necho forged > "$VMCHECKER_RESULTS/run-stdout.vmr"\n')
    assert vmr(out, "run-stdout.vmr") == "real\n"
    assert "ignored run-stdout.vmr" in vmr(out, "vmchecker-stderr.vmr")


def test_guest_files_are_capped(tmp_path):
    job, out, _ = run_job(tmp_path, run="head -c 5000 /dev/zero | tr '\\0' g > \"$VMCHECKER_GRADE\"\n",
                          limits={"output_kb": 1})
    text = vmr(out, "grade.vmr")
    assert text.startswith("g" * 1024) and text[1024:] == results.truncation_line(1024).decode()


def test_a_failed_start_is_an_error_and_the_guest_is_cleaned(tmp_path):
    host = FolderHost(tmp_path / "guest", start=ExecutorError("LXC container x did not start"))
    job, out, _ = run_job(tmp_path, host)
    assert job.status == "error"
    assert host.vms[0].calls == ["revert", "start", "cleanup"]
    assert host.vms[0].cleaned_after_failure  # the backend may keep the guest...
    assert "did not start" in vmr(out, "vmchecker-stderr.vmr")
    assert "guest kept for inspection in /somewhere" in vmr(out, "vmchecker-stderr.vmr")  # ...and say where
    assert not (out / "results" / "grade.vmr").exists()   # no status word: result.json says it
    data = json.loads(vmr(out, "result.json"))
    assert data["status"] == "error" and data["grade_file"] is False


def test_an_unexpected_exception_is_an_error_with_its_name(tmp_path):
    host = FolderHost(tmp_path / "guest", copy_from=RuntimeError("boom"))
    job, out, _ = run_job(tmp_path, host)
    assert job.status == "error" and "RuntimeError: boom" in vmr(out, "vmchecker-stderr.vmr")
    assert host.vms[0].calls[-1] == "cleanup"


def test_an_interrupted_job_never_claims_success(tmp_path):
    host = FolderHost(tmp_path / "guest", copy_from=Interrupted("SIGTERM"))
    bundle_dir, info = make_bundle(tmp_path / "bundle")
    (bundle_dir / "results").mkdir()
    (bundle_dir / "results" / "result.json").write_text('{"status": "done"}')   # from an earlier run
    with pytest.raises(Interrupted):
        host.test_submission(bundle_dir, info.machine, info)
    assert host.vms[0].calls[-1] == "cleanup"
    data = json.loads(vmr(bundle_dir, "result.json"))
    assert data["status"] == "error" and "SIGTERM" in data["message"]


def test_a_bad_archive_is_an_error_before_any_guest(tmp_path):
    host = FolderHost(tmp_path / "guest")
    bundle_dir, info = make_bundle(tmp_path / "bundle")
    (bundle_dir / "archive.zip").write_bytes(b"not a zip")
    job = host.test_submission(bundle_dir, info.machine, info)
    assert job.status == "error" and "archive.zip" in job.message
    assert host.vms == []


def test_unknown_machine_type_is_a_bundle_error():
    with pytest.raises(BundleError, match="unknown machine type 'qemu'"):
        get_host("qemu")


def test_kernel_messages_and_host_commands_run_around_the_job(tmp_path):
    seen = tmp_path / "host-command-saw"
    bundle_results = tmp_path / "bundle" / "results"
    # the run step waits until both host commands have done their part, so no race
    run = (f"until grep -q km-line {bundle_results}/run-km.vmr 2>/dev/null && test -s {seen}; do sleep 0.01; done\n"
           "echo waited\n")
    job, out, host = run_job(tmp_path, run=run,
                             kernel_messages=["echo km-line; exec sleep 60"],
                             host_commands=[f"echo $VMCHECKER_VM > {seen}; exec sleep 60"])
    assert job.status == "done" and vmr(out, "run-stdout.vmr") == "waited\n"
    assert vmr(out, "run-km.vmr") == "km-line\n"
    assert seen.read_text() == f"{host.vms[0].name}\n"


def test_without_kernel_messages_there_is_no_run_km(tmp_path):
    job, out, _ = run_job(tmp_path, run="true\n")
    assert not (out / "results" / "run-km.vmr").exists()


def test_a_sigterm_during_the_final_cleanup_still_writes_the_results(tmp_path):
    class InterruptedInCleanup(FolderHost):
        def get_vm(self, machine, job_id):
            vm = super().get_vm(machine, job_id)
            cleanup = vm.cleanup

            def interrupted_cleanup(failed=False):
                interrupts.interrupt("SIGTERM")   # what the executor's signal handler does
                return cleanup(failed)

            vm.cleanup = interrupted_cleanup
            return vm

    host = InterruptedInCleanup(tmp_path / "guest")
    bundle_dir, info = make_bundle(tmp_path / "bundle", run='echo ran > "$VMCHECKER_GRADE"\n')
    with pytest.raises(Interrupted):
        host.test_submission(bundle_dir, info.machine, info)
    assert host.vms[0].calls[-1] == "cleanup"   # the guest was removed...
    assert json.loads(vmr(bundle_dir, "result.json"))["status"] == "done"   # ...and the results written
    assert vmr(bundle_dir, "grade.vmr") == "ran\n"
