"""What every backend must do, each test run once per backend on a real guest.

The ``backend`` fixture gives an LXC container (an overlay clone of the base per job) or
a libvirt/QEMU guest (TCG here: the base domain's RAM snapshot loaded per job, a
transient guest on a fresh overlay where jobs run side by side) or a Docker container
(a fresh one per job from the base image) or a VM of the VMware lab (a vSphere API server
whose VMs are containers: one of two VMs reverted to its snapshot per job). A backend
that cannot run here skips with its own reason. What only one backend does is tested in
test_lxc.py, test_kvm.py, test_docker.py and test_vmware.py.

Timeouts are a few seconds and the same on both backends; nothing here asserts on how
long something took.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.executor.conftest import owned_clones
from tests.executor.docker_fixtures import DOCKER_IMAGE, docker_machine, image_has, owned_containers, remove_container
from tests.executor.helpers import BASE, HELLO_FILES, around_run_step, c_program, result_json, run_job, vmr
from tests.executor.kvm_fixtures import KVM_STATE, job_leftovers, kvm_machine, owned_domains, remove_leftover
from tests.executor.vmware_fixtures import clone_leftovers, lab_images, reset, running_guests
from tests.util import side_by_side
from vmchecker.executor import base

# Seconds two parallel jobs may wait for each other before their run steps (a guard:
# a job that fails first breaks the wait at once).
BARRIER_WAIT = 600
# The run step's timeout of the tests that must be killed: their build compiles nothing.
STEP_TIMEOUT = 5
# Written by the job of test_files_outside_the_job_folder_do_not_survive.
EVIL_PATHS = ("etc/evil", "root/x", "usr/local/evil")


@dataclass
class Backend:
    """What a behaviour test needs from one backend."""

    name: str                       # the "backend" of result.json
    host: base.Host
    machine: dict                   # make_bundle overrides: the backend's base guest
    parallel: dict                  # overrides for jobs that run side by side
    flood: tuple[int, int, int]     # bytes the output-flood job writes to stdout, stderr, grade.vmr
    hog_peak_kb: int                # the most memory a step may report using under a 64 MiB limit
    guests: Callable[[], list[str]]          # this test's job guests, now
    leftovers: Callable[[], list[str]]       # guests (and their disks, consoles) this test left
    remove: Callable[[str], None]            # removes one leftover
    base_untouched: Callable[[], contextlib.AbstractContextManager]   # fails if its block changed the base

    def run(self, folder: Path, machine: dict | None = None, **kwargs):
        """Run one job on this backend's base guest; (the job, its bundle folder)."""
        return run_job(self.host, folder, {**self.machine, **(machine or {})}, **kwargs)


def _lxc(host) -> Backend:
    import lxc  # the binding

    rootfs = Path(lxc.Container(BASE).get_config_item("lxc.rootfs.path").removeprefix("dir:"))
    mine = {os.getpid()}

    @contextlib.contextmanager
    def base_untouched() -> Iterator[None]:
        yield
        written = [p for p in EVIL_PATHS if (rootfs / p).exists()]
        assert not written, f"a job wrote into the base container {rootfs}: {written}"

    def clones() -> list[str]:
        return owned_clones(host, mine)

    # Gigabytes: an LXC guest streams them within the step's timeout. Peak memory is the
    # attached process's max RSS (getrusage), and that process starts as a fork of this
    # one: its RSS before the exec counts too (99 MiB once, in a suite that had loaded
    # every backend). The hog's own peak passes the cgroup's limit a little before the OOM
    # kill (65580 KiB measured). This process's peak plus 96 MiB is still far from the
    # 4 GiB the hog asks for.
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + 96 * 1024
    return Backend("lxc", host, {}, {}, (2 * 2**30, 2**30, 50 * 2**20), peak_kb, clones, clones,
                   host.destroy_clone, base_untouched)


def _kvm(host) -> Backend:
    pid = os.getpid()
    disk = KVM_STATE / "base.qcow2"

    @contextlib.contextmanager
    def base_untouched() -> Iterator[None]:
        before = disk.stat().st_mtime_ns
        yield
        assert disk.stat().st_mtime_ns == before, f"a job wrote into the base image {disk}"

    def guests() -> list[str]:
        return owned_domains(host, {pid})

    # Megabytes: TCG is slow, and the step's timeout is the same as on LXC. Peak memory
    # is the step cgroup's memory.peak, which the limit bounds.
    return Backend("kvm", host, kvm_machine(), {"revert": "overlay"}, (64 * 2**20, 8 * 2**20, 4 * 2**20),
                   64 * 1024, guests, lambda: job_leftovers(host, pid),
                   lambda item: remove_leftover(host, item), base_untouched)


def _docker(host) -> Backend:
    mine = {os.getpid()}
    api = host.api()

    @contextlib.contextmanager
    def base_untouched() -> Iterator[None]:
        before = api.inspect_image(DOCKER_IMAGE)["Id"]
        yield
        assert api.inspect_image(DOCKER_IMAGE)["Id"] == before, f"a job changed the image {DOCKER_IMAGE}"
        written = image_has(host, DOCKER_IMAGE, [f"/{p}" for p in EVIL_PATHS])
        assert not written, f"a new container from {DOCKER_IMAGE} has what a job wrote: {written}"

    def containers() -> list[str]:
        return owned_containers(host, mine)

    # Hundreds of megabytes: a step's output crosses the engine's exec stream (about
    # 280 MB/s here) under the same timeout as on LXC. Peak memory is the container
    # cgroup's memory.max_usage_in_bytes (page cache included), which the limit bounds.
    return Backend("docker", host, docker_machine(), {}, (512 * 2**20, 256 * 2**20, 50 * 2**20), 64 * 1024,
                   containers, containers, lambda name: remove_container(host, name), base_untouched)


def _vmware(host) -> Backend:
    @contextlib.contextmanager
    def base_untouched() -> Iterator[None]:
        before = lab_images(host)
        yield
        assert lab_images(host) == before, "a job changed the images the lab's snapshots start from"

    # Megabytes: a step's output lands in a file on the guest's disk (here a container's
    # layer on this host's disk) before the host reads its first bytes; what was dropped is
    # counted from the file's size. Peak memory is getrusage's max RSS in the guest, which
    # the VM's RAM (memoryMB, the limit) bounds. Jobs side by side take one VM each.
    return Backend("vmware", host, host.machine_keys(), {}, (64 * 2**20, 8 * 2**20, 4 * 2**20), 64 * 1024,
                   lambda: running_guests(host), lambda: clone_leftovers(host), lambda item: reset(host, item),
                   base_untouched)


@pytest.fixture(params=[pytest.param("lxc", marks=pytest.mark.lxc), pytest.param("kvm", marks=pytest.mark.kvm),
                        pytest.param("docker", marks=pytest.mark.docker),
                        pytest.param("vmware", marks=pytest.mark.vmware)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """One backend on a real guest (skips with the reason where it cannot run); after
    the test, no guest of the test may be left."""
    make = {"lxc": _lxc, "kvm": _kvm, "docker": _docker, "vmware": _vmware}[request.param]
    backend = make(request.getfixturevalue(f"{request.param}_host"))
    yield backend
    left = backend.leftovers()
    for item in left:   # do not let one failure cascade into the next tests
        backend.remove(item)
    assert not left, f"{backend.name}: left behind: {left}"


def test_hello_builds_and_passes(backend, tmp_path):
    job, out = backend.run(tmp_path / "b")
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert vmr(out, "run-stdout.vmr") == "Hello, world!\n"
    assert "gcc" in vmr(out, "build-stdout.vmr")
    assert vmr(out, "grade.vmr") == "# hello ok\n"
    data = result_json(out)
    assert data["status"] == "done" and data["backend"] == backend.name and data["grade_file"] is True
    assert data["steps"]["build"]["exit_code"] == 0 and data["steps"]["run"]["exit_code"] == 0
    assert data["steps"]["run"]["timed_out"] is False
    assert data["steps"]["build"]["cpu_s"] > 0 and data["steps"]["build"]["max_rss_kb"] > 0
    assert data["guest_start_s"] is not None and data["total_s"] >= data["steps"]["run"]["wall_s"]
    assert vmr(out, "vmchecker-stderr.vmr") == ""


def test_compile_error_skips_run(backend, tmp_path):
    job, out = backend.run(tmp_path / "b", files={"hello.c": "int main(void) { return x; }\n",
                                                  "Makefile": HELLO_FILES["Makefile"]})
    assert job.status == "done"
    assert "error" in vmr(out, "build-stderr.vmr") and "hello.c" in vmr(out, "build-stderr.vmr")
    assert job.steps["build"].exit_code != 0
    assert not job.steps["run"].attempted
    assert vmr(out, "run-stdout.vmr") == "" and vmr(out, "run-stderr.vmr") == ""
    assert not (out / "results" / "grade.vmr").exists() and result_json(out)["grade_file"] is False


def test_course_scripts_cannot_be_shadowed(backend, tmp_path):
    files = {**HELLO_FILES, "build.sh": "echo student build; exit 1\n", "expected.txt": "forged\n"}
    job, out = backend.run(tmp_path / "b", files=files)
    assert job.steps["build"].exit_code == 0
    assert "student build" not in vmr(out, "build-stdout.vmr")
    assert vmr(out, "grade.vmr") == "# hello ok\n"   # tests.zip's expected.txt won


def test_infinite_loop_is_killed_and_next_job_runs(backend, tmp_path):
    # Two spinning processes, in perl (in every guest): nothing to compile, so the build
    # (under the same timeout) is over at once even on an emulated CPU of a busy machine.
    job, out = backend.run(tmp_path / "loop", files={"spin.pl": "fork; 1 while 1;\n"}, build=":\n",
                           run="vmchecker-run perl ./spin.pl\n", timeout=STEP_TIMEOUT)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert job.steps["build"].succeeded and job.steps["run"].timed_out
    assert job.steps["run"].signal == signal.SIGKILL
    assert f"did not finish within {STEP_TIMEOUT} s" in vmr(out, "vmchecker-stderr.vmr")
    job, out = backend.run(tmp_path / "next")
    assert job.status == "done" and vmr(out, "run-stdout.vmr") == "Hello, world!\n"


def test_leftover_background_process_is_killed(backend, tmp_path):
    # The run script returns while a child keeps the output pipe open and runs on.
    run = '(sleep 100; echo late) &\necho started > "$VMCHECKER_GRADE"\n'
    job, out = backend.run(tmp_path / "b", run=run, timeout=30)
    assert job.status == "done"
    assert not job.steps["run"].timed_out and job.steps["run"].exit_code == 0
    assert "late" not in vmr(out, "run-stdout.vmr")


def test_fork_bomb_is_contained(backend, tmp_path):
    # forks on when a fork fails (a shell would give up at the first failure)
    job, out = backend.run(tmp_path / "bomb", files={"bomb.pl": "fork while 1;\n"}, build=":\n",
                           run="vmchecker-run perl ./bomb.pl\n", timeout=STEP_TIMEOUT, limits={"pids": 64})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert job.steps["build"].succeeded and job.steps["run"].timed_out
    # the host still forks, and the next job runs
    assert subprocess.run(["true"]).returncode == 0
    job, out = backend.run(tmp_path / "next")
    assert vmr(out, "run-stdout.vmr") == "Hello, world!\n"


def test_memory_hog_is_contained(backend, tmp_path):
    hog = c_program("for (size_t i = 0; i < 4096; i++) { char *p = malloc(1 << 20); if (!p) return 3;"
                    " memset(p, 1, 1 << 20); } puts(\"survived\"); return 0;")
    job, out = backend.run(tmp_path / "hog", files=hog, run="exec vmchecker-run ./hello\n",
                           limits={"memory_mb": 64})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    assert "survived" not in vmr(out, "run-stdout.vmr")
    # the OOM killer, inside the step's cgroup; vmchecker-run says so
    assert job.steps["run"].exit_code == 128 + signal.SIGKILL
    assert "./hello was killed by signal 9 (KILL)" in vmr(out, "run-stderr.vmr")
    assert not job.steps["run"].timed_out
    assert job.steps["run"].max_rss_kb <= backend.hog_peak_kb   # far from the 4 GiB it asked for


def test_output_flood_is_capped(backend, tmp_path):
    stdout, stderr, grade = backend.flood
    run = (f"head -c {stdout} /dev/zero | tr '\\0' x\nhead -c {stderr} /dev/zero >&2\n"
           f'echo big > "$VMCHECKER_GRADE"\nhead -c {grade} /dev/zero >> "$VMCHECKER_GRADE"\n')
    job, out = backend.run(tmp_path / "b", run=run, timeout=60, limits={"output_kb": 16})
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    for name in ("run-stdout.vmr", "run-stderr.vmr", "grade.vmr"):
        assert (out / "results" / name).stat().st_size < 16 * 1024 + 200, name
        assert "[vmchecker: output truncated at 16 KiB" in vmr(out, name), name
    assert vmr(out, "run-stdout.vmr").startswith("x" * 1000)
    assert f"{stdout - 16 * 1024} more bytes were dropped" in vmr(out, "run-stdout.vmr")


def test_files_outside_the_job_folder_do_not_survive(backend, tmp_path):
    evil = "echo owned > /etc/evil; echo owned > /root/x; mkdir -p /usr/local/evil; sync; echo ok\n"
    with backend.base_untouched():
        job, out = backend.run(tmp_path / "evil", run=evil)
        assert vmr(out, "run-stdout.vmr") == "ok\n"
        check = "for f in /etc/evil /root/x /usr/local/evil; do test -e $f && echo dirty $f; done; echo checked\n"
        job, out = backend.run(tmp_path / "check", run=check)
        assert vmr(out, "run-stdout.vmr") == "checked\n"


def test_two_jobs_at_once(backend, tmp_path, monkeypatch):
    # Each job waits, before its run step, for the other to reach its own: at that
    # moment both guests are up, however long either took to boot. A job that fails
    # before the barrier breaks it, so its partner fails too instead of waiting.
    seen: list[int] = []
    barrier = threading.Barrier(2, action=lambda: seen.append(len(backend.guests())), timeout=BARRIER_WAIT)
    around_run_step(monkeypatch, backend.host, before=lambda results: barrier.wait())
    results = side_by_side(lambda name: backend.run(tmp_path / name, backend.parallel, run="vmchecker-run ./hello\n",
                                                    job_id=name, timeout=30), ("a", "b"), barrier)
    for name in ("a", "b"):
        job, out = results[name]
        assert job.status == "done" and vmr(out, "run-stdout.vmr") == "Hello, world!\n", \
            (name, vmr(out, "vmchecker-stderr.vmr"))
    assert seen == [2], "both guests must be up while both jobs wait before their run steps"
    assert backend.leftovers() == []
