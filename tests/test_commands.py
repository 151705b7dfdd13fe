"""Every command in bin/ is installed by setup.py and explains itself with --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.name for p in (REPO / "bin").glob("vmchecker-*"))


def test_every_command_module_has_a_wrapper():
    modules = {p.stem for p in (REPO / "vmchecker" / "cli").glob("*.py")} - {"__init__", "common"}
    assert {c.removeprefix("vmchecker-").replace("-", "_") for c in COMMANDS} == modules


@pytest.mark.parametrize("command", COMMANDS)
def test_installed_and_explains_itself(command):
    installed = Path(sys.executable).parent / command
    assert installed.exists(), f"{command} is not installed next to {sys.executable}: pip install -e ."
    done = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command}")
    assert len(done.stdout.splitlines()) > 3
