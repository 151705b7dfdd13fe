"""The KVM backend's step wrapper (``vmchecker/executor/guest/step.pl``) run with this
host's perl, as the guest agent runs it in a guest: in a cgroup v2 of its own, here a
fresh one under this process's cgroup (memory and pids unlimited: a hybrid host has no
v2 memory controller). What it reports (exit code, signal, timeout, output kept and
counted) and what it kills (the step at its timeout, what the step left running) is
what the KVM backend turns into a StepResult."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.util import pid_alive, wait_for
from vmchecker.executor import guest

STEP_PL = guest.program("step.pl")


def _cgroup2_here() -> Path | None:
    """This process's cgroup v2 folder, if there is one."""
    mount = next((line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[2] == "cgroup2"), None)
    own = next((line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")),
               None)
    return Path(mount, own.lstrip("/")) if mount and own is not None else None


@pytest.fixture
def cgroup_parent():
    """A cgroup v2 folder the wrapper may create its step cgroups in; removed after."""
    if shutil.which("perl") is None:
        pytest.skip("no perl on this host")
    here = _cgroup2_here()
    if here is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    parent = here / f"vmck-test-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        parent.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {here}: {exc.strerror}")
    if not (parent / "cgroup.kill").exists():
        parent.rmdir()
        pytest.skip("this kernel's cgroup v2 has no cgroup.kill")
    yield parent
    for child in parent.iterdir():
        if child.is_dir():
            child.rmdir()
    parent.rmdir()


@dataclass
class Report:
    exit_code: str
    signal: str
    timed_out: bool
    cpu_usec: str
    out: bytes
    err: bytes
    out_total: int
    err_total: int


def step(parent: Path, *argv: str, timeout: float = 10, cap: int = 4096, uid: int = 0, gid: int = 0,
         cwd: str = "/", name: str | None = None) -> Report:
    """Run ``argv`` under the wrapper; its report, parsed as the KVM backend does."""
    args = [str(parent), name or f"step-{secrets.token_hex(3)}", str(cap), str(timeout), "max", "max", "max",
            str(uid), str(gid), guest.GUEST_PATH, "/root", cwd, *argv]
    proc = subprocess.run(["perl", "-e", STEP_PL, *args], capture_output=True, timeout=timeout + 30)
    assert proc.returncode == 0, proc.stderr
    line, _, rest = proc.stdout.partition(b"\n")
    fields = line.decode().split()
    assert len(fields) == 10 and fields[0] == "vmck", line
    out_kept, err_kept = int(fields[6]), int(fields[8])
    assert len(rest) == out_kept + err_kept
    assert not (parent / args[1]).exists(), "the step's cgroup is removed"
    return Report(exit_code=fields[1], signal=fields[2], timed_out=fields[3] == "1", cpu_usec=fields[4],
                  out=rest[:out_kept], err=rest[out_kept:], out_total=int(fields[7]), err_total=int(fields[9]))


def test_exit_code_and_both_streams(cgroup_parent):
    r = step(cgroup_parent, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.signal, r.timed_out) == ("3", "-", False)
    assert (r.out, r.err) == (b"out\n", b"err\n")
    assert r.cpu_usec.isdigit()


def test_a_signal_is_reported_as_such(cgroup_parent):
    r = step(cgroup_parent, "/bin/sh", "-c", "kill -TERM $$")
    assert (r.exit_code, r.signal, r.timed_out) == ("-", "15", False)


def test_a_step_past_its_timeout_is_killed(cgroup_parent):
    r = step(cgroup_parent, "/bin/sh", "-c", "echo started; exec sleep 60", timeout=1)
    assert (r.exit_code, r.signal, r.timed_out) == ("-", "9", True)
    assert r.out == b"started\n"


def test_what_a_step_leaves_running_is_killed(cgroup_parent):
    r = step(cgroup_parent, "/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!")
    assert (r.exit_code, r.timed_out) == ("0", False)
    wait_for(lambda: not pid_alive(int(r.out)), "the background process to die with the step's cgroup", timeout=10)


def test_output_is_kept_up_to_the_cap_and_counted(cgroup_parent):
    r = step(cgroup_parent, "/bin/sh", "-c", "head -c 100000 /dev/zero; head -c 7 /dev/zero >&2", cap=10)
    assert (r.out, r.out_total) == (b"\0" * 10, 100000)
    assert (r.err, r.err_total) == (b"\0" * 7, 7)


def test_the_step_runs_as_the_guest_user_with_a_clean_environment(cgroup_parent, monkeypatch):
    monkeypatch.setenv("VMCK_SECRET", "host only")
    r = step(cgroup_parent, "/bin/sh", "-c", 'id -u; id -g; pwd; echo "$PATH|$HOME|$LANG|${VMCK_SECRET-unset}"',
             uid=65534, gid=65534, cwd="/usr")
    assert r.out.decode().splitlines() == ["65534", "65534", "/usr", f"{guest.GUEST_PATH}|/root|C.UTF-8|unset"], r.err


def test_a_program_that_cannot_run_exits_127(cgroup_parent):
    r = step(cgroup_parent, "/nonexistent/program")
    assert r.exit_code == "127" and b"cannot run /nonexistent/program" in r.err


def test_a_step_that_cannot_be_set_up_fails_loudly(cgroup_parent):
    (cgroup_parent / "taken").mkdir()
    proc = subprocess.run(["perl", "-e", STEP_PL, str(cgroup_parent), "taken", "10", "1", "max", "max", "max",
                           "0", "0", guest.GUEST_PATH, "/root", "/", "/bin/true"], capture_output=True)
    assert proc.returncode != 0 and b"cannot create cgroup" in proc.stderr and proc.stdout == b""
