"""The lab itself: what a failed test leaves is removed, leftovers of a dead run are
cleaned at the next start, and no lab traffic may leave the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.lab import netns, skip_unless_lab, sshd

pytestmark = pytest.mark.netns


@pytest.mark.sshd
def test_lab_cleans_up_after_a_failed_test():
    skip_unless_lab()
    with pytest.raises(RuntimeError, match="boom"):
        with netns.LabNetwork() as network:
            server = sshd.SshServer(network.add_host("t1")).start()
            pids = server.processes()
            with server:
                assert netns.leftovers() and sshd.leftovers()
                raise RuntimeError("boom")
    assert netns.leftovers() == [] and sshd.leftovers() == []
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]


def test_leftovers_of_a_dead_run_are_removed():
    skip_unless_lab()
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, link = f"vmck-{dead.pid}-1-old", f"vmck{dead.pid}h1"
    netns.ip("netns", "add", ns)
    netns.ip("link", "add", link, "type", "veth", "peer", "name", f"vmck{dead.pid}g1")
    folder = Path(f"/tmp/{sshd.TMP_PREFIX}{dead.pid}-old")
    folder.mkdir()
    assert netns.leftovers(dead.pid) and sshd.leftovers(dead.pid)
    netns.cleanup_leftovers()
    sshd.cleanup_leftovers()
    assert netns.leftovers(dead.pid) == [] and sshd.leftovers(dead.pid) == []
    assert not folder.exists()


def test_routes_out_of_the_machine_are_refused(lab_network):
    lab_network.check_route(lab_network.add_host("t1").address)
    outside = "192.0.2.77" if netns.default_device() else None
    if outside is None:
        pytest.skip("this machine has no default route to guard against")
    with pytest.raises(AssertionError, match="default-route device"):
        lab_network.check_route(outside)
