"""The storer's SSH calls behave alike with paramiko 3.2+ and with Debian 12's paramiko
2.12 (the Debian package depends on that one). The 2.12 side is this paramiko with what
2.12 lacks taken away: ``PKey.from_path`` (and ``fingerprint``), and ``connect``'s ``channel_timeout`` (a
client whose connect does not take it, and a transport that records its channel opens)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from vmchecker import paramiko_compat
from vmchecker.paramiko_compat import fingerprint, load_private_key


def make_key(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().split()[1]


@pytest.mark.parametrize("without_from_path", [False, True], ids=["paramiko>=3.2", "paramiko 2.12"])
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_each_key_type_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                               without_from_path: bool) -> None:
    if without_from_path:
        monkeypatch.delattr(paramiko.PKey, "from_path", raising=False)
        monkeypatch.delattr(paramiko.PKey, "fingerprint", raising=False)
    path, public = make_key(tmp_path, kind)
    key = load_private_key(path)
    assert key.get_base64() == public
    shown = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    assert fingerprint(key) == shown.split()[1]   # as a sysadmin compares it


def test_not_a_key_is_paramikos_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paramiko.PKey, "from_path", raising=False)
    (tmp_path / "junk").write_text("not a key\n")
    with pytest.raises(paramiko.SSHException):
        load_private_key(tmp_path / "junk")
    with pytest.raises(OSError):
        load_private_key(tmp_path / "missing")


class RecordingTransport(paramiko.Transport):
    """Records the timeout of each channel open instead of opening one."""

    def __init__(self) -> None:   # no socket: nothing here talks to a server
        self.opened: list[float | None] = []

    def open_channel(self, kind: str, *args, timeout: float | None = None, **kwargs) -> None:
        self.opened.append(timeout)


class OldClient(paramiko.SSHClient):
    """An SSHClient whose connect, like 2.12's, takes no channel_timeout."""

    def connect(self, hostname: str, port: int = 22, username: str | None = None, **options) -> None:
        assert "channel_timeout" not in options
        self.options = options
        self._transport = RecordingTransport()


def test_without_channel_timeout_channel_opens_get_it_as_their_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paramiko_compat, "CHANNEL_TIMEOUT_OPTION", False)
    client = OldClient()
    paramiko_compat.connect(client, "h", 22, "u", channel_timeout=7, timeout=7, allow_agent=False)
    assert client.options == {"timeout": 7, "allow_agent": False}
    transport = client.get_transport()
    transport.open_channel("session")                 # as open_session and open_sftp do
    transport.open_channel("session", timeout=None)
    transport.open_channel("session", timeout=2)      # a caller's own bound stays
    assert transport.opened == [7, 7, 2]


def test_with_channel_timeout_it_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(paramiko_compat, "CHANNEL_TIMEOUT_OPTION", True)
    monkeypatch.setattr(paramiko.SSHClient, "connect", lambda self, *args, **options: seen.update(options))
    paramiko_compat.connect(paramiko.SSHClient(), "h", 22, "u", channel_timeout=7, timeout=7)
    assert seen == {"channel_timeout": 7, "timeout": 7}
