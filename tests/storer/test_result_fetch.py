"""A job's result files fetched together (result_fetch) against a real OpenSSH server:
what the batched requests must not change. One refused file among several leaves
nothing in place and no channel in use; a file swapped or grown after its lstat is
caught; reads answered short or spread over several rounds still copy every byte;
every file is on disk before the fetch returns."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import paramiko
import pytest
from paramiko import sftp as proto
from paramiko.message import Message

from tests.storer.sftp_helpers import link_to, make_job, refused_fetch
from vmchecker.errors import ResultRefused
from vmchecker.storer import result_fetch

pytestmark = pytest.mark.usefixtures("no_lab_leftovers")

FILES = {"build-stdout.vmr": b"gcc ok\n", "empty.vmr": b"", "result.json": b'{"status": "ok"}' * 100,
         "run-stdout.vmr": b"Hello, world!\n"}


def after_batch(monkeypatch: pytest.MonkeyPatch, number: int, act) -> None:
    """Call ``act(answers)`` once batch ``number`` (1: the lstats, 2: the opens, 3: the
    first reads) is answered, before result_fetch sees its answers."""
    real = result_fetch.exchange
    seen = [0]

    def exchange(sftp, requests):
        answers = real(sftp, requests)
        seen[0] += 1
        if seen[0] == number:
            answers = act(answers) or answers
        return answers
    monkeypatch.setattr(result_fetch, "exchange", exchange)


def fetched(server, tmp_path, course_key, job: Path, names: list[str]) -> dict[str, bytes]:
    results = tmp_path / "results"
    with link_to(server, tmp_path, course_key) as link:
        link.fetch_results(str(job), names, results)
    return {p.name: p.read_bytes() for p in results.iterdir()}


def hostile(job: Path, kind: str) -> str:
    """Put a file of ``kind`` the tester must not send back into ``job``; return its name."""
    path = job / f"{kind}.vmr"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))   # /dev/null
    else:
        path.symlink_to(job / "result.json")
    return path.name


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink"])
def test_one_refused_file_among_several_leaves_nothing_and_no_channel_in_use(server, tmp_path, course_key,
                                                                              monkeypatch, kind):
    job = make_job(server, FILES)
    bad = hostile(job, kind)
    opened: list[paramiko.SFTPClient] = []
    real_open = paramiko.SSHClient.open_sftp
    monkeypatch.setattr(paramiko.SSHClient, "open_sftp", lambda self: opened.append(real_open(self)) or opened[-1])
    names = ["build-stdout.vmr", "empty.vmr", bad, "result.json"]
    with link_to(server, tmp_path, course_key) as link:
        with pytest.raises(ResultRefused, match=f"{bad}: (not a regular file|it is a symbolic link)"):
            link.fetch_results(str(job), names, tmp_path / "results")
        assert list((tmp_path / "results").iterdir()) == []
        assert opened[0].get_channel().closed, "the channel of the refused fetch is not kept"
        link.fetch_results(str(job), list(FILES), tmp_path / "again")
        assert len(opened) == 2 and not opened[1].get_channel().closed
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()} == FILES


def test_a_file_swapped_after_its_lstat_is_refused_on_the_open_file(server, tmp_path, course_key,
                                                                     monkeypatch):
    job = make_job(server, FILES)

    def swap(_answers) -> None:
        (job / "result.json").unlink()
        (job / "result.json").mkdir()   # what the open finds now: a folder, not the file lstat saw
    after_batch(monkeypatch, 1, swap)
    assert "not a regular file" in refused_fetch(server, tmp_path, course_key, job, list(FILES))


def test_a_file_that_grows_after_its_lstat_is_copied_whole(server, tmp_path, course_key, monkeypatch):
    job = make_job(server, FILES)
    more = os.urandom(100_000)

    def grow(_answers) -> None:
        with (job / "run-stdout.vmr").open("ab") as f:
            f.write(more)
    after_batch(monkeypatch, 2, grow)
    assert fetched(server, tmp_path, course_key, job, list(FILES)) == {**FILES, "run-stdout.vmr": FILES[
        "run-stdout.vmr"] + more}


def test_a_file_that_grows_past_the_cap_after_its_lstat_is_refused(server, tmp_path, course_key,
                                                                   monkeypatch):
    job = make_job(server, FILES)

    def grow(_answers) -> None:
        (job / "empty.vmr").write_bytes(b"x" * 5000)
    after_batch(monkeypatch, 2, grow)
    message = refused_fetch(server, tmp_path, course_key, job, list(FILES), max_file_size=4000)
    assert "empty.vmr" in message and "grew past the limit" in message


def test_files_spread_over_several_rounds_arrive_whole(server, tmp_path, course_key, monkeypatch):
    files = {**FILES, "big.vmr": os.urandom(1000), "odd.vmr": os.urandom(77)}
    job = make_job(server, files)
    monkeypatch.setattr(result_fetch, "_CHUNK", 16)
    monkeypatch.setattr(result_fetch, "_ROUND", 100)   # a round holds a few reads; files wait for the next
    assert fetched(server, tmp_path, course_key, job, list(files)) == files


def test_a_read_answered_short_is_asked_again_from_where_the_copy_stands(server, tmp_path,
                                                                         course_key, monkeypatch):
    files = {"a.vmr": os.urandom(100), "b.vmr": os.urandom(50)}
    job = make_job(server, files)
    monkeypatch.setattr(result_fetch, "_CHUNK", 32)

    def shorten(answers):
        kind, msg = answers[1]          # a.vmr: fstat, then the read at 0
        assert kind == proto.CMD_DATA
        short = Message()
        short.add_string(msg.get_binary()[:5])
        return [*answers[:1], (kind, Message(short.asbytes())), *answers[2:]]
    after_batch(monkeypatch, 3, shorten)
    assert fetched(server, tmp_path, course_key, job, list(files)) == files


def test_every_file_is_fsynced_in_the_staging_folder_before_the_fetch_returns(server, tmp_path,
                                                                              course_key, monkeypatch):
    job = make_job(server, FILES)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
    monkeypatch.setattr(os, "fsync", fsync)
    results = tmp_path / "sub" / "results"
    with link_to(server, tmp_path, course_key) as link:
        link.fetch_results(str(job), list(FILES), results)
    staged = [Path(p) for p in synced if ".results.fetch-" in p]
    assert sorted(p.name for p in staged) == sorted(FILES)
    assert synced[-1] == str(results), "the folder, after the files were moved in"
