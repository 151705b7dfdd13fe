"""Fixtures of the storer tests that talk SFTP to a real OpenSSH server (the transport,
the batched requests and the result fetch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import sshd
from vmchecker.storer import testers_admin


@pytest.fixture
def course_key(tmp_path: Path) -> tuple[Path, str]:
    """The course's key pair (generated as add_tester does) and its public line."""
    key = tmp_path / "keys" / "id_ed25519"
    return key, testers_admin.ensure_course_key(key, "vmchecker-test")


@pytest.fixture
def server(ssh_server: sshd.SshServer, course_key: tuple[Path, str]) -> sshd.SshServer:
    """The lab's sshd, with the course's key authorized."""
    ssh_server.authorize(testers_admin.authorized_keys_line(course_key[1]))
    return ssh_server
