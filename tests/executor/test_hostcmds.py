"""Host commands around a job: their process groups are recorded while they run, so
whoever SIGKILLs the executor can stop them too."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.util import pid_alive, wait_for
from vmchecker.executor import hostcmds


def test_host_command_groups_are_recorded_until_stopped(tmp_path):
    record = tmp_path / "b" / "results" / f".host_commands{hostcmds.PGIDS_SUFFIX}"
    record.parent.mkdir(parents=True)
    commands = hostcmds.HostCommands("host_commands", record)
    commands.start(["exec sleep 60"], {}, None)
    assert len(record.read_text().split()) == 1
    commands.stop()
    assert not record.exists()


def test_kill_recorded_stops_the_host_commands_of_a_dead_executor(tmp_path):
    record = tmp_path / "b" / "results" / f".kernel_messages{hostcmds.PGIDS_SUFFIX}"
    record.parent.mkdir(parents=True)
    commands = hostcmds.HostCommands("kernel_messages", record)
    # the second command leaves a grandchild in its group, as `tail -F ... | grep` would
    commands.start(["exec sleep 60", f"sleep 60 & echo $! > {tmp_path}/grandchild; wait"], {}, None)
    procs = list(commands._procs)
    pgids = sorted(int(p) for p in record.read_text().split())
    assert pgids == sorted(p.pid for p in procs)
    grandchild = int(wait_for(lambda: (tmp_path / "grandchild").exists() and (tmp_path / "grandchild").read_text(),
                              "the second host command to start its child"))

    assert hostcmds.kill_recorded(tmp_path / "b") == pgids   # as if the executor had been SIGKILLed

    for proc in procs:
        assert proc.wait(10) == -signal.SIGKILL
    wait_for(lambda: not pid_alive(grandchild), "the host command's child to die with its group")
    assert not record.exists()
    assert hostcmds.kill_recorded(tmp_path / "b") == []


def test_a_zombie_is_not_alive():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert hostcmds.pid_alive(proc.pid)
        proc.kill()
        # exited, not yet reaped by us: a zombie, which holds nothing any more
        wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 "the killed child to become a zombie")
        assert not hostcmds.pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
