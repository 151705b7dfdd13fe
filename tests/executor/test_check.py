"""The check step's sandbox, with the real bubblewrap: a check grades from the outputs
and the tests, and cannot write the host, reach the network, run as root, outlive its
time, flood the disk, fork without end or smuggle a host file out through its grade."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.util import make_zip
from vmchecker.config import Limits
from vmchecker.errors import ExecutorError
from vmchecker.executor import cgroups, check
from vmchecker.executor.results import CappedWriter, truncation_line

QUICK = Limits(memory_mb=256, pids=64, output_kb=64, disk_mb=64)


class Run:
    """One check run: the job's outputs folder, the tests, the script, what came back."""

    def __init__(self, root: Path, script: str, outputs: dict[str, str] | None = None,
                 tests: dict[str, str] | None = None):
        self.root = root
        root.mkdir(exist_ok=True)
        self.outputs = root / "results"
        self.outputs.mkdir()
        for name, text in (outputs or {"run-stdout.vmr": "42\n"}).items():
            (self.outputs / name).write_text(text)
        self.tests = make_zip(root / "tests.zip", tests or {"expected": "42\n"})
        self.script = root / "check.sh"
        self.script.write_text("#!/bin/bash\n" + textwrap.dedent(script))
        self.grade = self.outputs / "grade.vmr"

    def __call__(self, timeout: float = 20, limits: Limits = QUICK):
        out = CappedWriter(self.outputs / "check-stdout.vmr", limits.output_kb * 1024)
        err = CappedWriter(self.outputs / "check-stderr.vmr", limits.output_kb * 1024)
        try:
            self.result = check.run_check(self.script, self.outputs, self.tests, self.grade, timeout,
                                          limits, out, err)
        finally:
            out.close()
            err.close()
        self.stdout = (self.outputs / "check-stdout.vmr").read_text(errors="replace")
        self.stderr = (self.outputs / "check-stderr.vmr").read_text(errors="replace")
        return self.result


def alive(marker: str) -> list[int]:
    """Pids of processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and entry.name != str(os.getpid()):
                found.append(int(entry.name))
    return found


def our_cgroups() -> list[Path]:
    mounts, own = cgroups.cgroup_mounts(), check._own_cgroups()
    where = {mounts[c] / own.get(c, "") for c in ("memory", "pids") if c in mounts}
    where |= {mounts["unified"]} if "unified" in mounts else set()
    return [p for w in where if w.is_dir() for p in w.glob(f"vmchecker-check-{os.getpid()}-*")]


@pytest.fixture(autouse=True)
def nothing_left() -> None:
    """No staging folder and no transient cgroup outlives a check."""
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("vmchecker-check-*"))
    yield
    assert set(tmp.glob("vmchecker-check-*")) <= before
    assert our_cgroups() == []


@pytest.fixture(params=["cgroup", "rlimits"])
def confinement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a check is held: a transient cgroup with rlimits, or rlimits alone
    (a host where no cgroup can be made)."""
    if request.param == "rlimits":
        monkeypatch.setattr(cgroups, "cgroup_mounts", dict)
    return request.param


def test_a_check_grades_from_the_outputs_and_the_tests(tmp_path):
    run = Run(tmp_path, """
        cmp -s run-stdout.vmr "$VMCHECKER_TESTS/expected" || echo "-3: wrong" > "$VMCHECKER_GRADE"
        env | sort
        pwd
    """, outputs={"run-stdout.vmr": "41\n"})
    result = run()
    assert result.succeeded and result.exit_code == 0 and not result.timed_out
    assert run.grade.read_text() == "-3: wrong\n"
    env = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_")} == check.check_env()
    assert "/vmchecker/outputs" in run.stdout.splitlines()


def test_the_exit_status_and_the_missing_grade_are_reported(tmp_path):
    run = Run(tmp_path, "echo oops >&2; exit 3\n")
    result = run()
    assert result.exit_code == 3 and not result.succeeded
    assert not run.grade.exists()
    assert "oops" in run.stderr and "wrote no grade file" in run.stderr


def test_a_check_cannot_write_the_host_reach_the_network_or_be_root(tmp_path):
    host_dir = Path(tempfile.mkdtemp(prefix="vmchecker-test-host-"))
    host_dir.chmod(0o777)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    targets = ["run-stdout.vmr", "new.vmr", "$VMCHECKER_TESTS/expected", "$VMCHECKER_TESTS/new",
               "/etc/passwd", "/etc/new", "/root/new", "/usr/new", "/new", "/dev/new", f"{host_dir}/new",
               str(tmp_path / "results" / "new"), "$VMCHECKER_OUTPUTS/../new", "/vmchecker/grade/new"]
    run = Run(tmp_path, f"""
        for f in {' '.join(f'"{t}"' for t in targets)}; do
            (echo pwned > "$f") 2>/dev/null && echo "WROTE $f"
        done
        rm -f run-stdout.vmr "$VMCHECKER_TESTS/expected" 2>/dev/null && echo REMOVED
        rm -f "$VMCHECKER_GRADE" 2>/dev/null && echo REMOVED
        (echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo NETWORK
        echo "uid=$(id -u) gid=$(id -g)"
        grep CapEff /proc/self/status
        (echo scratch > /tmp/scratch && cat /tmp/scratch)
    """)
    try:
        result = run()
        assert result.succeeded, run.stderr
        assert "WROTE" not in run.stdout and "REMOVED" not in run.stdout and "NETWORK" not in run.stdout
        assert f"uid={check.SANDBOX_ID} gid={check.SANDBOX_ID}" in run.stdout
        assert "CapEff:\t0000000000000000" in run.stdout
        assert "scratch" in run.stdout      # its own /tmp works
        assert list(host_dir.iterdir()) == [] and not Path("/new").exists() and not Path("/root/new").exists()
        assert (run.outputs / "run-stdout.vmr").read_text() == "42\n"
        assert sorted(p.name for p in run.outputs.iterdir()) == ["check-stderr.vmr", "check-stdout.vmr",
                                                                 "run-stdout.vmr"]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass                             # the port was open: the sandbox had no way to it
    finally:
        listener.close()
        host_dir.rmdir()


def test_a_check_cannot_signal_host_processes(tmp_path):
    victim = subprocess.Popen(["sleep", "31331"], user=check.SANDBOX_ID, group=check.SANDBOX_ID, extra_groups=[])
    try:
        run = Run(tmp_path, "kill -9 -1; pkill -9 sleep; ps -e | wc -l\n")
        run()
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_hanging_check_is_killed_with_everything_it_started(tmp_path, confinement):
    run = Run(tmp_path, """
        echo "-1: partial" > "$VMCHECKER_GRADE"
        (setsid sleep 31332 &)
        sleep 31333 & sleep 31334
    """)
    start = time.monotonic()
    result = run(timeout=2)
    assert result.timed_out and not result.succeeded and result.signal == 9
    assert time.monotonic() - start < 10
    assert result.timeout_s == 2
    assert alive("sleep 3133") == []
    assert run.grade.read_text() == "-1: partial\n"    # copied: the caller judges a timed-out check


def test_what_a_finished_check_leaves_running_is_killed(tmp_path, confinement):
    run = Run(tmp_path, "(setsid sleep 31335 &); nohup sleep 31336 >/dev/null 2>&1 &\nexit 0\n")
    assert run().succeeded
    assert alive("sleep 3133") == []


def test_output_and_grade_floods_are_capped(tmp_path):
    limits = Limits(memory_mb=256, pids=64, output_kb=16, disk_mb=8)
    run = Run(tmp_path, """
        head -c 2G /dev/zero
        head -c 64M /dev/zero > "$VMCHECKER_GRADE"
        ls -l "$VMCHECKER_GRADE" >&2
    """)
    result = run(timeout=120, limits=limits)
    assert not result.timed_out
    cap = limits.output_kb * 1024
    assert (run.outputs / "check-stdout.vmr").stat().st_size <= cap + len(truncation_line(cap, 2 * 1024**3))
    assert run.grade.read_bytes() == bytes(cap) + truncation_line(cap)
    assert " 8388608 " in run.stderr       # the file it wrote stopped at disk_mb (RLIMIT_FSIZE)


def test_a_fork_bomb_is_contained(tmp_path, confinement):
    limits = Limits(memory_mb=256, pids=20, output_kb=64, disk_mb=64)
    run = Run(tmp_path, """
        python3 - <<'EOF'
        import os, time
        started = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(31337)
                    os._exit(0)
            except OSError:
                break
            started += 1
        print("started", started, flush=True)
        EOF
        bomb() { bomb | bomb & }; bomb
        sleep 31338
    """)
    result = run(timeout=5, limits=limits)
    assert result.timed_out
    started = int(run.stdout.split("started ")[1].split()[0])
    assert 0 < started < limits.pids
    assert alive("sleep 3133") == [] and alive("31337") == []


def test_a_memory_hog_is_stopped(tmp_path, confinement):
    run = Run(tmp_path, """
        python3 -c "b = bytearray(400 * 2**20); print('allocated', len(b))"
    """)
    result = run(limits=Limits(memory_mb=64, pids=64, output_kb=64, disk_mb=64))
    assert result.exit_code != 0 and "allocated" not in run.stdout
    assert result.oom_killed is (True if confinement == "cgroup" else None)


def test_the_grade_file_cannot_become_a_link_to_a_host_file(tmp_path):
    secret = Path("/etc/passwd").read_text()
    run = Run(tmp_path, """
        ln -sf /etc/passwd "$VMCHECKER_GRADE" || echo LINK FAILED
        ln -s /etc/passwd /vmchecker/grade/other.vmr || echo OTHER FAILED
        mkfifo /tmp/f && mv -f /tmp/f "$VMCHECKER_GRADE" || echo FIFO FAILED
        exit 0
    """)
    assert run().succeeded
    assert "LINK FAILED" in run.stdout and "OTHER FAILED" in run.stdout and "FIFO FAILED" in run.stdout
    assert not run.grade.exists() and "wrote no grade file" in run.stderr
    assert "root:" not in run.stdout + run.stderr
    assert Path("/etc/passwd").read_text() == secret


def test_a_grade_file_the_host_finds_as_a_link_or_a_fifo_is_not_read(tmp_path):
    """What the sandbox cannot do, checked again where the grade is copied out."""
    source = tmp_path / "grade.vmr"
    source.symlink_to("/etc/passwd")
    out = CappedWriter(tmp_path / "notes.vmr", 4096)
    check._copy_grade(source, tmp_path / "copied.vmr", 4096, out)
    source.unlink()
    os.mkfifo(source)
    check._copy_grade(source, tmp_path / "copied.vmr", 4096, out)
    out.close()
    assert not (tmp_path / "copied.vmr").exists()
    notes = (tmp_path / "notes.vmr").read_text()
    assert "not readable" in notes and "not a regular file" in notes


def test_without_bubblewrap_the_error_says_what_to_install(tmp_path, monkeypatch):
    run = Run(tmp_path, "exit 0\n")
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    with pytest.raises(ExecutorError, match="install"):
        run()


def test_a_temp_folder_the_sandbox_cannot_reach_is_refused_clearly(tmp_path, monkeypatch):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    run = Run(tmp_path, "exit 0\n")
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with pytest.raises(ExecutorError, match="TMPDIR"):
        run()
