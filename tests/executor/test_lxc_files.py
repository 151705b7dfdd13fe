"""The LXC backend's host-side copies (:mod:`vmchecker.executor.lxc_files`), on a plain
folder standing in for a guest's root: what they may read and write is decided by the
path walk (openat2 below that folder), which is the same for a folder and for
``/proc/PID/root``; the real clone is exercised by the LXC tests and the grading contract."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from vmchecker.errors import ExecutorError
from vmchecker.executor import lxc_files
from vmchecker.executor.payload import NOBODY, Payload


@pytest.fixture
def guest_root(tmp_path):
    root = tmp_path / "guest"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nstudent:x:1000:1000::/home/student:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nstudent:x:1001:\n")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def payload(tmp_path: Path, student: str = "student") -> Payload:
    src = tmp_path / "payload"
    for d in ("job/sub", "course/bin", "results"):
        (src / d).mkdir(parents=True)
    (src / "job" / "main.c").write_text("int main(void) { return 0; }\n")
    (src / "job" / "sub" / "test.in").write_text("1 2\n")
    (src / "course" / "bin" / "vmchecker-step").write_text("#!/bin/sh\n")
    (src / "course" / "bin" / "vmchecker-step").chmod(0o755)
    os.utime(src / "job" / "main.c", (1_000_000_000, 1_000_000_000))
    return Payload(src, student, "root", frozenset({"job/main.c"}))


def test_copy_in_places_owners_modes_and_times_as_the_tar_copy_does(guest_root, tmp_path):
    root, fd = guest_root
    lxc_files.copy_in(fd, "/srv/vmchecker", payload(tmp_path))
    base = root / "srv" / "vmchecker"
    main, test_in = os.stat(base / "job" / "main.c"), os.stat(base / "job" / "sub" / "test.in")
    assert (main.st_uid, main.st_gid) == (1000, 1001)        # the guest's ids, by name
    assert int(main.st_mtime) == 1_000_000_000                 # make sees the archive's times
    assert (test_in.st_uid, stat.S_IMODE(test_in.st_mode)) == (0, 0o444)   # a test: read-only, root's
    assert stat.S_IMODE(os.stat(base / "job").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(base / "results").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(base / "course" / "bin" / "vmchecker-step").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o755


def test_a_student_the_guest_does_not_know_gets_nobody_never_root(guest_root, tmp_path):
    root, fd = guest_root
    lxc_files.copy_in(fd, "/vmchecker", payload(tmp_path, student="stranger"))
    st = os.stat(root / "vmchecker" / "job" / "main.c")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)


def test_a_guest_folder_that_is_an_absolute_link_stays_in_the_guest(guest_root, tmp_path):
    root, fd = guest_root
    outside = tmp_path / "host-folder"
    outside.mkdir()
    (root / "inside").mkdir()
    (root / "vmchecker").symlink_to(outside)                   # absolute: the host's path
    (root / "inside" / "x").mkdir()
    (root / "linked").symlink_to("/inside/x")
    load = payload(tmp_path)
    with pytest.raises(OSError):   # /vmchecker points to a folder the guest does not have
        lxc_files.copy_in(fd, "/vmchecker", load)
    assert not any(outside.iterdir())
    lxc_files.copy_in(fd, "/linked", load)        # resolved as the guest would
    assert (root / "inside" / "x" / "job" / "main.c").is_file()


def test_copy_out_takes_regular_vmr_files_only_capped_and_counted(guest_root, tmp_path):
    root, fd = guest_root
    results = root / "vmchecker" / "results"
    results.mkdir(parents=True)
    (results / "a.vmr").write_text("a" * 10)
    (results / "big.vmr").write_text("b" * 100)
    (results / "leak.vmr").symlink_to("/etc/passwd")          # a link: never followed
    os.mkfifo(results / "pipe.vmr")                            # a fifo: never blocks
    (results / "dir.vmr").mkdir()
    (results / ".hidden.vmr").write_text("h")
    (results / "notes.txt").write_text("n")
    for i in range(5):
        (results / f"z{i}.vmr").write_text(str(i))
    dest = tmp_path / "out"
    dest.mkdir()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (lxc_files.copy_out(fd, "/vmchecker/results", dest, 21, 4),
                                              done.set()), daemon=True)
    worker.start()
    worker.join(60)
    assert done.is_set(), "copy_out blocked (on the fifo?)"
    assert sorted(p.name for p in dest.iterdir()) == ["a.vmr", "big.vmr", "z0.vmr", "z1.vmr"]
    assert (dest / "big.vmr").read_text() == "b" * 21


def test_copy_out_of_a_missing_folder_gives_nothing(guest_root, tmp_path):
    _root, fd = guest_root
    lxc_files.copy_out(fd, "/vmchecker/results", tmp_path, 100, 10)
    assert list(tmp_path.iterdir()) == [Path(tmp_path / "guest")]


def test_the_hosts_own_root_is_refused():
    with pytest.raises(ExecutorError, match="host's root"):
        os.close(lxc_files.open_root(os.getpid(), "not-a-guest"))
