"""Every command in bin/ is installed by setup.py and explains itself with --help."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.name for p in (REPO / "bin").glob("vmchecker-*"))
CLI_MODULES = sorted(p.stem for p in (REPO / "vmchecker" / "cli").glob("*.py")
                     if p.stem not in ("__init__", "common"))


def test_every_command_module_has_a_wrapper():
    assert sorted(c.removeprefix("vmchecker-").replace("-", "_") for c in COMMANDS) == CLI_MODULES


@pytest.mark.parametrize("command", COMMANDS)
def test_installed_and_explains_itself(command):
    installed = Path(sys.executable).parent / command
    assert installed.exists(), f"{command} is not installed next to {sys.executable}: pip install -e ."
    done = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command}")
    assert len(done.stdout.splitlines()) > 3


@pytest.mark.parametrize("module", CLI_MODULES)
def test_config_flag_only_where_it_is_read(module, capsys):
    """``--config`` (the global config) is offered by exactly the commands that use it:
    a flag a command accepts and ignores would lie in its --help."""
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"vmchecker.cli.{module}").main(["--help"])
    assert exited.value.code == 0
    offered = "--config" in capsys.readouterr().out
    source = (REPO / "vmchecker" / "cli" / f"{module}.py").read_text()
    assert offered == ("args.config" in source)
