"""The course key is read alike with paramiko 3.2+ (``PKey.from_path``) and with Debian
12's paramiko 2.12, which lacks it (the Debian package depends on that one): the second
is this paramiko with ``from_path`` taken away."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from vmchecker.storer.ssh_keys import load_private_key


def make_key(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().split()[1]


@pytest.mark.parametrize("without_from_path", [False, True], ids=["paramiko>=3.2", "paramiko 2.12"])
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_each_key_type_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                               without_from_path: bool) -> None:
    if without_from_path:
        monkeypatch.delattr(paramiko.PKey, "from_path")
    path, public = make_key(tmp_path, kind)
    assert load_private_key(path).get_base64() == public


def test_not_a_key_is_paramikos_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paramiko.PKey, "from_path")
    (tmp_path / "junk").write_text("not a key\n")
    with pytest.raises(paramiko.SSHException):
        load_private_key(tmp_path / "junk")
    with pytest.raises(OSError):
        load_private_key(tmp_path / "missing")
