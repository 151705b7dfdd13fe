"""``quick_exit.exit_now``: a one-shot command skips the interpreter's teardown, and loses
nothing an exit must do: its exit status, what it printed but had not flushed, its log
lines, and the atexit handlers (the KVM and VMware backends close connections there)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, logging, sys
from pathlib import Path
from vmchecker.cli import common
from vmchecker.quick_exit import exit_now
common.setup_logging(False)
atexit.register(lambda: Path(sys.argv[1]).write_text("closed"))
logging.getLogger("probe").warning("a log line")
sys.stdout.write("printed, not flushed")
exit_now(3)
"""


def test_exit_now_keeps_the_status_output_logs_and_atexit_handlers(tmp_path):
    marker = tmp_path / "atexit"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "printed, not flushed"
    assert "a log line" in done.stderr
    assert marker.read_text() == "closed"


def test_the_one_shot_commands_end_through_exit_now_and_the_daemons_do_not():
    from pathlib import Path

    bin_dir = Path(__file__).resolve().parent.parent / "bin"
    daemons = {"vmchecker-storer-daemon", "vmchecker-queue-manager", "vmchecker-web"}
    for script in sorted(bin_dir.glob("vmchecker-*")):
        ends_now = "exit_now(main())" in script.read_text()
        assert ends_now == (script.name not in daemons), f"{script.name}: exit_now is for one-shot commands only"
