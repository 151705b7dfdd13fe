"""What every backend shares about guests, run on this host: the copy-out program (as
root would run it in a guest, here on a host folder), guest names and their owners, the
guest user's passwd entry."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from vmchecker.errors import ExecutorError
from vmchecker.executor import guest, results


def copy_out(folder: Path, dest: Path, cap: int, count: int = results.MAX_GUEST_VMRS) -> list[str]:
    """Run COPY_OUT on ``folder`` to stdout, unpack it with extract_vmrs; the names taken."""
    proc = subprocess.run(["/bin/sh", "-c", guest.COPY_OUT, "sh", str(folder), str(cap + 1), str(count), "-"],
                          capture_output=True, check=True)
    dest.mkdir()
    results.extract_vmrs(proc.stdout, dest, cap, "test")
    return sorted(p.name for p in dest.iterdir())


def test_copy_out_takes_regular_vmr_files_capped(tmp_path):
    job = tmp_path / "job"
    (job / "sub").mkdir(parents=True)
    (job / "grade.vmr").write_text("10 ok\n")
    (job / "big.vmr").write_bytes(b"x" * 5000)
    (job / "notes.txt").write_text("not a result")
    (job / "sub" / "deep.vmr").write_text("not at the top")
    (job / "dir.vmr").mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root's file")
    (job / "link.vmr").symlink_to(secret)   # root must never follow it
    taken = copy_out(job, tmp_path / "out", cap=100)
    assert taken == ["big.vmr", "grade.vmr"]
    assert (tmp_path / "out" / "grade.vmr").read_text() == "10 ok\n"
    assert (tmp_path / "out" / "big.vmr").read_bytes() == b"x" * 101   # cap + 1: the reader sees it was cut


def test_copy_out_takes_at_most_count_files(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    for i in range(5):
        (job / f"{i}.vmr").write_text(str(i))
    assert copy_out(job, tmp_path / "out", cap=10, count=3) == ["0.vmr", "1.vmr", "2.vmr"]


def test_copy_out_of_a_missing_folder_is_an_empty_tar(tmp_path):
    assert copy_out(tmp_path / "missing", tmp_path / "out", cap=10) == []


def test_copy_out_to_a_file_replaces_it(tmp_path):
    job, tar = tmp_path / "job", tmp_path / "out.tar"
    job.mkdir()
    (job / "a.vmr").write_text("a")
    tar.symlink_to(tmp_path / "elsewhere")   # a link planted where the tar goes is removed, not followed
    subprocess.run(["/bin/sh", "-c", guest.COPY_OUT, "sh", str(job), "10", "5", str(tar)], check=True)
    assert not tar.is_symlink() and not (tmp_path / "elsewhere").exists()
    with tarfile.open(tar) as tf:
        assert sorted(m.name for m in tf if m.isreg()) == ["./a.vmr"]


def test_extract_vmrs_rejects_a_stream_that_is_not_tar():
    with pytest.raises(ExecutorError, match="not a valid tar stream"):
        results.extract_vmrs(b"garbage" * 200, Path("/nonexistent"), 10, "g1")


def test_guest_names_carry_the_executor_pid():
    name = guest.guest_name("so_1-hello_bob_20260220")
    assert name.startswith(f"{guest.GUEST_PREFIX}so1hellobob20260220-{os.getpid()}-")
    assert guest.owner_alive(name)


def test_a_guest_of_a_dead_executor_is_removed_and_others_kept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    left, ours, foreign = f"vmck-job-{dead.pid}-abc123", guest.guest_name("job"), "vmck-handmade"
    removed = []
    assert guest.remove_leftovers([left, ours, foreign, "other"], removed.append, "test guest") == [left]
    assert removed == [left]


def test_a_failed_removal_is_not_reported_as_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()

    def fail(name: str) -> None:
        raise ExecutorError(f"{name} could not be destroyed")

    assert guest.remove_leftovers([f"vmck-job-{dead.pid}-abc123"], fail, "test guest") == []


def test_passwd_entry():
    text = "root:x:0:0:root:/root:/bin/bash\nstudent:x:1500:1500::/home/student:/bin/bash\nbad:x:a:b::/:\n"
    assert guest.passwd_entry(text, "student") == (1500, 1500, "/home/student")
    assert guest.passwd_entry(text, "bad") is None and guest.passwd_entry(text, "nobody") is None
