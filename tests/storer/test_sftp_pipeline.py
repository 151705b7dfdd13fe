"""Requests sent together on one SFTP channel against a real OpenSSH server: this pins
the private paramiko calls sftp_pipeline is built on (an upgrade that changes them
fails here, not in a job's fetch)."""

from __future__ import annotations

import os

import paramiko
from paramiko import sftp as proto

from tests.storer.sftp_helpers import link_to
from vmchecker.storer import sftp_pipeline
from vmchecker.storer.sftp_pipeline import Answer


def test_answers_come_back_in_request_order_with_their_types(server, tmp_path, course_key):
    folder = server.make_dir("batch")
    (folder / "a").write_bytes(b"12345")
    paths = [str(folder / "a"), str(folder / "ghost"), str(folder / "a")]

    def run(sftp: paramiko.SFTPClient) -> list[object]:
        answers = sftp_pipeline.exchange(sftp, [(proto.CMD_LSTAT, (p,)) for p in paths])
        assert sftp.normalize(str(folder)) == str(folder)  # the channel still serves plain calls
        return [sftp_pipeline.attributes(msg).st_size if kind == proto.CMD_ATTRS
                else type(sftp_pipeline.status_error(kind, msg)) for kind, msg in answers]

    with link_to(server, tmp_path, course_key) as link:
        assert link._run("lstat in a batch", run) == [5, FileNotFoundError, 5]


def test_a_batch_answered_out_of_order_is_put_back_in_order(server, tmp_path, course_key, monkeypatch):
    """The server may answer in any order; the answers are matched by their numbers."""
    folder = server.make_dir("batch")
    for name, size in (("one", 1), ("two", 2), ("three", 3)):
        (folder / name).write_bytes(b"x" * size)

    def run(sftp: paramiko.SFTPClient) -> list[int]:
        batch = sftp_pipeline.Batch(sftp, [(proto.CMD_LSTAT, (str(folder / n),)) for n in ("one", "two", "three")])
        packets = [sftp._read_packet() for _ in range(3)]
        with monkeypatch.context() as m:
            m.setattr(sftp, "_read_packet", packets.pop)  # handed over last first
            answers = batch.answers()
        return [sftp_pipeline.attributes(msg).st_size for _kind, msg in answers]

    with link_to(server, tmp_path, course_key) as link:
        assert link._run("lstat in a batch", run) == [1, 2, 3]


def test_a_batch_goes_out_in_one_send(server, tmp_path, course_key, monkeypatch):
    folder = server.make_dir("batch")

    def run(sftp: paramiko.SFTPClient) -> list[Answer]:
        channel, sends = sftp.get_channel(), []
        real_send = channel.send
        with monkeypatch.context() as m:
            m.setattr(channel, "send", lambda data: sends.append(len(data)) or real_send(data))
            answers = sftp_pipeline.exchange(sftp, [(proto.CMD_LSTAT, (str(folder),))] * 5)
        assert len(sends) == 1
        return answers

    with link_to(server, tmp_path, course_key) as link:
        assert [kind for kind, _msg in link._run("lstat in a batch", run)] == [proto.CMD_ATTRS] * 5


def test_status_errors_read_as_paramiko_raises_them(server, tmp_path, course_key):
    folder = server.make_dir("locked")
    os.chmod(folder, 0o000)
    try:
        def run(sftp: paramiko.SFTPClient) -> list[object]:
            answers = sftp_pipeline.exchange(sftp, [(proto.CMD_OPEN, (str(folder / "f"), proto.SFTP_FLAG_READ,
                                                                      paramiko.SFTPAttributes()))])
            return [sftp_pipeline.status_error(*answer) for answer in answers]

        with link_to(server, tmp_path, course_key) as link:
            (error,) = link._run("open in a batch", run)
        assert isinstance(error, PermissionError)
    finally:
        os.chmod(folder, 0o755)


def test_an_empty_batch_sends_nothing(server, tmp_path, course_key):
    with link_to(server, tmp_path, course_key) as link:
        assert link._run("nothing", lambda sftp: sftp_pipeline.exchange(sftp, [])) == []
