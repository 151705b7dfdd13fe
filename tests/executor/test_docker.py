"""What only the Docker backend does: the image a job names must exist, the container
is confined (no network, read-only image, few capabilities), a killed executor's
container is removed by the next one, ``keep_failed`` keeps a failed job's container;
and, without an engine, how an exec's output stream is split and results are read out
of an archive stream. The behaviour every backend shares is in test_behaviour.py.

Assignment timeouts are a few seconds; nothing here asserts on how long something took.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.executor.docker_fixtures import docker_machine, owned_containers, remove_container
from tests.executor.helpers import make_bundle, run_job, vmr
from tests.util import wait_for
from vmchecker.executor import results
from vmchecker.executor.docker_io import Demux, take_vmrs, wrapped_payload

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- without an engine


class Sink:
    def __init__(self):
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_exec_stream_is_split_by_stream_whatever_the_chunks():
    stream = _frame(1, b"hello ") + _frame(2, b"oops\n") + _frame(1, b"world\n") + _frame(3, b"ignored")
    for size in (1, 3, 7, 8, 9, len(stream)):
        out, err = Sink(), Sink()
        demux = Demux({1: out, 2: err})
        for i in range(0, len(stream), size):
            demux.feed(stream[i:i + size])
        assert (out.data, err.data) == (b"hello world\n", b"oops\n"), size


def _archive(entries: list[tuple[str, bytes | None, bytes]]) -> list[bytes]:
    """A tar stream as get_archive sends it, in small chunks: (name, data or None for
    a folder, link target or b'')."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
                tf.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return [raw[i:i + 1000] for i in range(0, len(raw), 1000)]


def test_results_are_taken_capped_and_only_top_level_vmr(tmp_path):
    chunks = _archive([("results", None, b""), ("results/grade.vmr", b"-1: x\n", b""),
                       ("results/big.vmr", b"y" * 100_000, b""), ("results/notes.txt", b"no", b""),
                       ("results/.hidden.vmr", b"no", b""), ("results/sub", None, b""),
                       ("results/sub/deep.vmr", b"no", b""), ("results/link.vmr", None, b"/etc/shadow")])
    take_vmrs(chunks, tmp_path, 1024, "guest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.vmr", "grade.vmr"]
    assert (tmp_path / "grade.vmr").read_bytes() == b"-1: x\n"
    assert (tmp_path / "big.vmr").read_bytes() == b"y" * 1025


def test_results_take_at_most_the_guest_file_count(tmp_path):
    names = [f"f{i:03}.vmr" for i in range(results.MAX_GUEST_VMRS + 5)]
    take_vmrs(_archive([("results", None, b"")] + [(f"results/{n}", b"x", b"") for n in names]), tmp_path, 10, "g")
    assert len(list(tmp_path.iterdir())) == results.MAX_GUEST_VMRS


def test_payload_travels_as_one_file_for_the_guests_own_tar():
    with tarfile.open(fileobj=io.BytesIO(wrapped_payload(b"x" * 1000))) as tf:
        (member,) = tf.getmembers()
        assert member.name == ".vmck-in.tar" and tf.extractfile(member).read() == b"x" * 1000


# --------------------------------------------------------------------------- on the engine


@pytest.mark.docker
def test_missing_image_is_a_clear_job_error(docker_host, tmp_path):
    job, out = run_job(docker_host, tmp_path / "b", docker_machine(image="vmchecker-no-such-image:latest"))
    assert job.status == "error"
    errors = vmr(out, "vmchecker-stderr.vmr")
    assert "vmchecker-no-such-image" in errors and "lxc-resources/docker-image.sh" in errors, errors
    assert "create_container" in errors and job.vm in errors
    assert owned_containers(docker_host, {os.getpid()}) == []


@pytest.mark.docker
def test_guest_user_the_image_lacks_is_a_job_error_not_a_failed_build(docker_host, tmp_path):
    job, out = run_job(docker_host, tmp_path / "b", docker_machine(guest_user="nosuch"))
    assert job.status == "error" and "build" not in job.steps
    assert "the image has no user 'nosuch' (guest_user)" in vmr(out, "vmchecker-stderr.vmr")


@pytest.mark.docker
def test_network_true_is_refused(docker_host, tmp_path):
    job, out = run_job(docker_host, tmp_path / "b", docker_machine(network=True))
    assert job.status == "error" and "network: true is not supported" in vmr(out, "vmchecker-stderr.vmr")


@pytest.mark.docker
def test_container_has_no_network_a_read_only_image_and_few_capabilities(docker_host, tmp_path):
    run = ("ls /sys/class/net; grep CapEff /proc/self/status\n"
           "touch /usr/x 2>/dev/null || echo image read-only\n"
           'touch /tmp/x "$VMCHECKER_RESULTS/x" && echo folders writable\n')
    job, out = run_job(docker_host, tmp_path / "b", docker_machine(), run=run)
    assert job.status == "done", vmr(out, "vmchecker-stderr.vmr")
    lines = vmr(out, "run-stdout.vmr").splitlines()
    assert lines[0] == "lo" and lines[1].startswith("CapEff:")
    caps = int(lines[1].split()[1], 16)
    for bit, name in ((21, "sys_admin"), (27, "mknod"), (13, "net_raw"), (18, "sys_chroot"), (12, "net_admin")):
        assert not caps & (1 << bit), f"the guest has CAP_{name.upper()}"
    assert caps & 1 and caps & (1 << 5), "the guest root keeps CAP_CHOWN and CAP_KILL"
    assert lines[2:] == ["image read-only", "folders writable"]


@pytest.mark.docker
def test_container_of_killed_executor_is_removed_by_cleanup(docker_host, tmp_path):
    bundle_dir, _ = make_bundle(tmp_path / "b", run="sleep 60\n", timeout=60, **docker_machine())
    proc = subprocess.Popen([sys.executable, "-m", "vmchecker.cli.vm_executor", str(bundle_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def started() -> list[str] | None:
            if proc.poll() is not None:
                raise AssertionError(f"executor {proc.pid} ended before its run step: {proc.communicate()}")
            ready = (bundle_dir / "results" / "run-stdout.vmr").exists()
            return owned_containers(docker_host, {proc.pid}) if ready else None

        (name,) = wait_for(started, f"the run step of executor {proc.pid}")
        os.killpg(proc.pid, signal.SIGKILL)   # what the queue manager does to a stuck executor
        proc.communicate()
        assert owned_containers(docker_host, {proc.pid}) == [name]
        assert name in docker_host.cleanup_leftovers()
        assert owned_containers(docker_host, {proc.pid}) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for left in owned_containers(docker_host, {proc.pid}):
            remove_container(docker_host, left)


@pytest.mark.docker
def test_keep_failed_keeps_the_failed_jobs_container(docker_host, tmp_path):
    # No such student user: the copy-in's check fails the job once its files are in.
    job, out = run_job(docker_host, tmp_path / "b", docker_machine(keep_failed=True, student_user="nobody2"))
    mine = owned_containers(docker_host, {os.getpid()})
    try:
        assert job.status == "error"
        errors = vmr(out, "vmchecker-stderr.vmr")
        assert "the guest has no user 'nobody2'" in errors, errors
        assert mine == [f"kept-{job.vm}"] and f"kept for inspection: kept-{job.vm}" in errors
        assert mine[0] not in docker_host.cleanup_leftovers()   # a kept container is nobody's leftover
        api = docker_host.api()
        assert api.inspect_container(mine[0])["State"]["Running"]
        probe = api.exec_create(mine[0], ["ls", "/vmchecker/job"])["Id"]
        assert "hello.c" in api.exec_start(probe).decode()   # the job's files, as the job left them
    finally:
        for name in mine:
            remove_container(docker_host, name)
    job, _ = run_job(docker_host, tmp_path / "ok", docker_machine(keep_failed=True))
    assert job.status == "done" and owned_containers(docker_host, {os.getpid()}) == []
