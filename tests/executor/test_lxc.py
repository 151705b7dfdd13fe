"""What only the LXC backend does, on real containers (every job in a fresh overlay
clone of the base): no network but loopback, no capability that reaches the host, the
read-only cgroup mount, a symlinked .vmr, the executor command and what happens to
its clone and host commands when it is killed. The behaviour both backends share is
in test_behaviour.py.

Assignment timeouts are a few seconds so the suite stays quick; nothing here asserts
on how long something took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.executor.helpers import c_program, make_bundle, result_json, run_job, vmr
from tests.util import pid_alive, wait_for
from vmchecker import contract
from vmchecker.executor import hostcmds

pytestmark = pytest.mark.lxc

REPO = Path(__file__).resolve().parents[2]


def test_no_network_but_loopback(lxc_host, tmp_path):
    run = """\
ls /sys/class/net
python3 - <<'PY'
import socket
for addr in ("1.1.1.1", "10.0.0.1"):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((addr, 80))
        print("connected", addr)
    except OSError as exc:
        print("refused", addr, exc.errno)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
c = socket.create_connection(srv.getsockname()); print("loopback ok")
PY
"""
    job, out = run_job(lxc_host, tmp_path / "b", run=run)
    text = vmr(out, "run-stdout.vmr")
    assert text.splitlines()[0] == "lo"
    assert "connected" not in text and text.count("refused") == 2
    assert "loopback ok" in text


def test_guest_root_has_no_capability_that_reaches_the_host(lxc_host, tmp_path):
    job, out = run_job(lxc_host, tmp_path / "b", run="grep CapEff /proc/self/status\n")
    caps = int(vmr(out, "run-stdout.vmr").split()[1], 16)
    for bit, name in ((21, "sys_admin"), (2, "dac_read_search"), (19, "sys_ptrace"), (16, "sys_module"),
                      (27, "mknod")):
        assert not caps & (1 << bit), f"the guest has CAP_{name.upper()}"
    assert caps & 1, "the guest root should keep CAP_CHOWN for its own files"


def _start_executor(bundle_dir: Path, pids: set[int]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "vmchecker.cli.vm_executor", str(bundle_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    pids.add(proc.pid)
    return proc


def _wait_for_clone(host, proc: subprocess.Popen) -> str:
    def clone() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"executor {proc.pid} ended before it made a clone: {proc.communicate()}")
        return next((n for n in host.clones() if f"-{proc.pid}-" in n), None)

    return wait_for(clone, f"a clone of executor {proc.pid}")


def test_sigterm_to_executor_leaves_no_clone(lxc_host, tmp_path, executor_pids):
    bundle_dir, _ = make_bundle(tmp_path / "b", run="sleep 60\n", timeout=60)
    proc = _start_executor(bundle_dir, executor_pids)
    try:
        name = _wait_for_clone(lxc_host, proc)
        # in its run step (the step's output file is opened just before): the guest is up
        wait_for((bundle_dir / "results" / contract.STEP_FILES["run"][0]).exists, "the run step to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert name not in lxc_host.clones()
    data = result_json(bundle_dir)
    assert data["status"] == "error" and "SIGTERM" in data["message"]


def test_clone_of_killed_executor_is_cleaned_at_next_start(lxc_host, tmp_path, executor_pids):
    bundle_dir, info = make_bundle(tmp_path / "b", run="sleep 60\n", timeout=60)
    proc = _start_executor(bundle_dir, executor_pids)
    name = _wait_for_clone(lxc_host, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert name in lxc_host.clones()
    assert name in lxc_host.cleanup_leftovers()
    assert name not in lxc_host.clones()
    assert "result.json" not in os.listdir(bundle_dir / "results")


def test_executor_command_runs_a_bundle_folder(lxc_host, tmp_path):
    bundle_dir, _ = make_bundle(tmp_path / "b")
    proc = subprocess.run([sys.executable, "-m", "vmchecker.cli.vm_executor", str(bundle_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("job job1: done (build exit 0, run exit 0)")
    assert vmr(bundle_dir, "grade.vmr") == "# hello ok\n"


def test_bad_bundle_gives_an_error_result(lxc_host, tmp_path):
    bundle_dir, _ = make_bundle(tmp_path / "b")
    (bundle_dir / contract.RUN_SCRIPT).unlink()
    proc = subprocess.run([sys.executable, "-m", "vmchecker.cli.vm_executor", str(bundle_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = result_json(bundle_dir)
    assert data["status"] == "error" and "run.sh" in data["message"]
    assert "run.sh" in vmr(bundle_dir, "vmchecker-stderr.vmr")


def test_tester_config_overrides_the_bundled_machine(lxc_host, tmp_path):
    bundle_dir, _ = make_bundle(tmp_path / "b", run="head -c 5000 /dev/zero | tr '\\0' a\n")
    tester = tmp_path / "tester.yaml"
    tester.write_text("tester: {slots: 1}\nmachines:\n  linux: {limits: {output_kb: 2}}\n")
    proc = subprocess.run([sys.executable, "-m", "vmchecker.cli.vm_executor", "--tester-config", str(tester),
                           str(bundle_dir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = vmr(bundle_dir, "run-stdout.vmr")
    assert text.startswith("a" * 2048) and "[vmchecker: output truncated at 2 KiB" in text


def test_guest_root_cannot_raise_its_own_cgroup_limits(lxc_host, tmp_path):
    # 256 MiB touched under a 64 MiB limit, after trying to lift the limits from inside
    hog = c_program("for (int i = 0; i < 256; i++) { char *p = malloc(1 << 20); if (!p) return 3;"
                    " memset(p, 1, 1 << 20); } puts(\"survived\"); return 0;")
    run = """\
cg=/sys/fs/cgroup
lift() { [ -e "$cg/$1" ] && echo "$2" > "$cg/$1" && echo "raised $1"; }
lift memory/memory.memsw.limit_in_bytes 1073741824; lift memory/memory.limit_in_bytes 1073741824
lift memory.swap.max max; lift memory.max max
lift pids/pids.max max; lift pids.max max
lift cpu/cpu.cfs_quota_us -1; lift cpu.max max
echo "pids $(cat $cg/pids/pids.max 2>/dev/null || cat $cg/pids.max)"
exec ./hello
"""
    job, out = run_job(lxc_host, tmp_path / "b", files=hog, run=run, limits={"memory_mb": 64, "pids": 100})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    text = vmr(out, "run-stdout.vmr")
    assert "raised" not in text, text
    assert "pids 100\n" in text
    assert "survived" not in text and job.steps["run"].signal == signal.SIGKILL   # the memory limit held


def test_a_symlinked_vmr_is_not_copied_out(lxc_host, tmp_path):
    # The student cannot read a root-only file nor link into the results folder; the
    # job folder's *.vmr are never copied; and the copy-out, which is root, does not
    # follow a link even where run.sh (trusted) left one among the results.
    student = ('ln -s /etc/shadow grade.vmr; ln -s /etc/shadow leak.vmr; ln -s /etc/shadow "$VMCHECKER_RESULTS/x.vmr";'
               ' cat /etc/shadow; echo "cat: $?"')
    run = (f"vmchecker-run sh -c '{student}'\n"
           'ln -s /etc/shadow "$VMCHECKER_RESULTS/leak.vmr"\necho "# ok" > "$VMCHECKER_GRADE"\n')
    job, out = run_job(lxc_host, tmp_path / "b", run=run)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "cat: 1" in vmr(out, "run-stdout.vmr")   # the student cannot read it...
    assert "Permission denied" in vmr(out, "run-stderr.vmr")   # ...nor reach the results...
    assert not {"leak.vmr", "x.vmr"} & set(os.listdir(out / "results"))   # ...nor have it copied out
    assert vmr(out, "grade.vmr") == "# ok\n"


def test_a_guest_user_that_is_not_root_runs_the_students_code_itself(lxc_host, tmp_path):
    # Only root can become the student: with another guest_user (INSTALL: no separation)
    # every step, and what vmchecker-run starts, runs as that user; grading still works.
    run = 'id -un\nvmchecker-run id -un\necho "# graded by $(id -un)" > "$VMCHECKER_GRADE"\n'
    job, out = run_job(lxc_host, tmp_path / "b", build="id -un\nmake\n", run=run, guest_user="nobody",
                       guest_base_path="/tmp/job")
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert vmr(out, "build-stdout.vmr").startswith("nobody\n") and job.steps["build"].exit_code == 0
    assert vmr(out, "run-stdout.vmr") == "nobody\nnobody\n"
    assert vmr(out, "grade.vmr") == "# graded by nobody\n"


def test_host_commands_of_a_sigkilled_executor_can_be_killed(lxc_host, tmp_path, executor_pids):
    host_pid = tmp_path / "host.pid"
    bundle_dir, _ = make_bundle(tmp_path / "b", run="sleep 60\n", timeout=60,
                                kernel_messages=[f"echo $$ > {host_pid}; exec sleep 1000"])
    proc = _start_executor(bundle_dir, executor_pids)
    try:
        _wait_for_clone(lxc_host, proc)
        wait_for(lambda: host_pid.exists() and host_pid.read_text().strip(), "the kernel_messages command to start")
        os.killpg(proc.pid, signal.SIGKILL)   # what the queue manager does to a stuck executor
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lxc_host.cleanup_leftovers()
    pid = int(host_pid.read_text())
    assert os.getpgid(pid) == pid   # alive, in a group of its own: the executor's kill missed it
    assert hostcmds.kill_recorded(bundle_dir) == [pid]
    wait_for(lambda: not pid_alive(pid), f"host command {pid} to die")
