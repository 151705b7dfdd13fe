"""Every command logs in one shape: the same plain line, or with ``--log-format json`` one
JSON object per line, through the one ``setup_logging`` of vmchecker/cli/common.py."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmchecker.cli import common

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.name for p in (REPO / "bin").glob("vmchecker-*"))

# Arguments that take each command past its logging set-up to a quick end (most to an
# error: the global config they name does not exist); ``-v`` then logs at least how it
# ended. TMP stands for the test's own folder; a command not listed gets DEFAULT_ARGS.
DEFAULT_ARGS = ["so"]
ARGS = {
    "vmchecker-grade": ["so", "1-hello", "bob", "--add", "-1: test"],
    "vmchecker-grades": ["so"],
    "vmchecker-init-course": ["tester", "TMP/tester"],
    "vmchecker-migrate-config": ["TMP/none.ini"],
    "vmchecker-queue-manager": ["--once", "TMP/no-tester"],
    "vmchecker-resubmit": ["so", "--all"],
    "vmchecker-status": ["--url", "http://127.0.0.1:9/"],
    "vmchecker-storer-daemon": ["--state", "TMP/state", "--once"],
    "vmchecker-submit": ["so", "1-hello", "bob", "TMP/none.zip"],
    "vmchecker-teams": ["so", "list"],
    "vmchecker-vm-executor": ["TMP/no-bundle"],
    "vmchecker-web": ["--add-user", "bob"],
}
PLAIN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [\w.]+\[\d+\] \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL): ")


def run_command(command: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    installed = Path(sys.executable).parent / command
    args = [a.replace("TMP", str(tmp_path)) for a in ARGS.get(command, DEFAULT_ARGS)]
    env = {**os.environ, "VMCHECKER_CONFIG": str(tmp_path / "no-global.yaml")}
    done = subprocess.run([str(installed), "-v", *options, *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert "usage:" not in done.stderr, f"give {command} arguments it accepts in ARGS: {done.stderr}"
    return done


@pytest.mark.parametrize("command", COMMANDS)
def test_json_lines(command, tmp_path):
    """With ``--log-format json`` every line on stderr is one JSON object (the error that
    ends a command too), with time, level, logger and message."""
    done = run_command(command, tmp_path, "--log-format", "json")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, f"{command} logged nothing"
    records = []
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}", record["time"]), record["time"]
        records.append(record)
    ends = [r for r in records if r["logger"] == "vmchecker.cli.common" and r["message"].startswith(f"{command}: exit")]
    assert len(ends) == 1 and ends[0]["level"] == "DEBUG"
    assert ends[0]["message"].startswith(f"{command}: exit {done.returncode} after")


@pytest.mark.parametrize("command", COMMANDS)
def test_plain_lines_are_the_same_for_every_command(command, tmp_path):
    """Without the option, every log line has the one plain shape; the only other lines
    are the ``command: message`` a person at a terminal reads when it fails."""
    done = run_command(command, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    log_lines = [line for line in lines if PLAIN_LINE.match(line)]
    assert all(line.startswith(f"{command}: ") for line in lines if line not in log_lines), lines
    assert any(re.search(rf"vmchecker\.cli\.common\[\d+\] MainThread DEBUG: {command}: exit {done.returncode} after",
                         line) for line in log_lines), lines
    if done.returncode:
        assert sum(line.startswith(f"{command}: ") for line in lines) == 1


def test_a_record_with_an_exception_is_one_line():
    """The traceback and a message's own newlines stay inside the one JSON line."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("x.y").makeRecord("x.y", logging.ERROR, __file__, 1, "two\nlines %s", ("ok",),
                                                     sys.exc_info())
    line = common.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines ok" and entry["logger"] == "x.y" and entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback") and "RuntimeError: boom" in entry["exception"]


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        common.setup_logging(log_format="xml")
