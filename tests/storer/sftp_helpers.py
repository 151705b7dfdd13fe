"""Helpers of the storer tests against a real OpenSSH server: a tester link to it, a
job's results folder on it, a fetch that must be refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab import sshd
from vmchecker.errors import ResultRefused
from vmchecker.storer import transport  # TesterLink not by name: pytest collects "Test*"


def known_hosts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "keys" / "known_hosts"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def link_to(server: sshd.SshServer, tmp_path: Path, course_key: tuple[Path, str], **options) -> transport.TesterLink:
    kh = tmp_path / "keys" / "known_hosts"
    if not kh.exists():
        known_hosts(tmp_path, server.host_key_line())
    return transport.TesterLink("t1", server.address, server.port, server.user, course_key[0], kh, **options)


def make_job(server: sshd.SshServer, files: dict[str, bytes]) -> Path:
    job = server.make_dir("done/17")
    for name, data in files.items():
        (job / name).write_bytes(data)
    return job


def refused_fetch(server, tmp_path, course_key, job: Path, names: list[str], **options) -> str:
    results = tmp_path / "results"
    with link_to(server, tmp_path, course_key, **options) as link, pytest.raises(ResultRefused) as err:
        link.fetch_results(str(job), names, results)
    assert list(results.iterdir()) == []  # all or nothing: the good file did not land either
    assert os.listdir(tmp_path).count("results") == 1 and not [n for n in os.listdir(tmp_path) if "fetch" in n]
    return err.value.message
