"""The daemon base: pid file locking and a clean stop on SIGTERM, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.util import wait_for
from vmchecker.errors import VmcheckerError
from vmchecker.service import PidFile

REPO = Path(__file__).resolve().parents[2]

SERVICE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vmchecker.service import Service

    class Sleeper(Service):
        def serve(self):
            Path(sys.argv[2]).write_text("serving")
            while not self.stop.wait(0.1):
                pass
            Path(sys.argv[2]).write_text("stopped cleanly")
            return 0

    sys.exit(Sleeper(pid_file=sys.argv[1]).run())
""")


def test_pid_file_refuses_a_live_holder_and_ignores_a_stale_one(tmp_path):
    path = tmp_path / "run" / "x.pid"
    path.parent.mkdir()
    path.write_text("99999\n")  # stale: nobody holds the lock
    first = PidFile(path)
    first.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(VmcheckerError, match=f"pid {os.getpid()}.* already running"):
        PidFile(path).acquire()
    first.release()
    assert not path.exists()
    PidFile(path).acquire()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_asks_the_loop_to_stop_cleanly(tmp_path, sig):
    pid_file, state = tmp_path / "s.pid", tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", SERVICE, str(pid_file), str(state)], cwd=REPO)
    try:
        wait_for(lambda: state.exists() and pid_file.exists(), "the service to start")
        second = subprocess.run([sys.executable, "-c", SERVICE, str(pid_file), str(tmp_path / "other")],
                                cwd=REPO, capture_output=True, text=True)
        assert second.returncode != 0 and "already running" in second.stderr
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert state.read_text() == "stopped cleanly"
    assert not pid_file.exists()
