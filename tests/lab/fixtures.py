"""pytest fixtures over the lab helpers, for every test (tests/conftest.py loads them).

* ``lab_network``: a LabNetwork (bridge + free /24), removed after the test; a test
  using it is marked ``netns``.
* ``tester_host``: one TesterHost on ``lab_network``.
* ``ssh_server``: a started SshServer, parametrized: on loopback and inside a
  tester namespace (so every test using it runs in both places); its parameters
  carry the markers (``sshd``, and ``netns`` for the namespace), so a test that uses
  it, even through another fixture, is marked without saying so.
* ``vmware_lab``: a started VmwareLab (session scope) with VMs ``vmck-lab-1`` and
  ``vmck-lab-2``; it starts dockerd and imports the guest image first; a test using it is
  marked ``vmware``.
* ``no_lab_leftovers``: fails the test if a namespace, link, sshd process or sshd
  folder of this process is still there once the test's fixtures are gone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import netns, skip_unless_lab, sshd
from tests.lab import vmware_lab as vmware

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_lab_leftovers() -> Iterator[None]:
    yield
    left = netns.leftovers() + sshd.leftovers()
    assert not left, f"the test left these behind: {left}"


@pytest.fixture
def lab_network() -> Iterator[netns.LabNetwork]:
    skip_unless_lab()
    with netns.LabNetwork() as network:
        yield network


@pytest.fixture
def tester_host(lab_network: netns.LabNetwork) -> netns.TesterHost:
    return lab_network.add_host("t1")


@pytest.fixture(params=[pytest.param("loopback", marks=pytest.mark.sshd),
                        pytest.param("netns", marks=[pytest.mark.sshd, pytest.mark.netns])])
def ssh_server(request: pytest.FixtureRequest) -> Iterator[sshd.SshServer]:
    """A running sshd for ``vmck-test``; authorize keys with ``ssh_server.authorize``."""
    skip_unless_lab()
    if request.param == "loopback":
        with sshd.SshServer() as server:
            yield server
    else:
        with netns.LabNetwork() as network, sshd.SshServer(network.add_host("t1")) as server:
            yield server


@pytest.fixture(scope="session")
def vmware_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vmware.VmwareLab]:
    """The VMware lab server for the whole session; tests revert what they change."""
    for script in ("tools/dockerd.sh", "lxc-resources/docker-image.sh"):
        # Their failure shows up as lab_unusable()'s reason (no dockerd, no image).
        subprocess.run([str(ROOT / script)], capture_output=True)
    reason = vmware.lab_unusable()
    if reason:
        pytest.skip(reason)
    with vmware.VmwareLab(["vmck-lab-1", "vmck-lab-2"], tmp_path_factory.mktemp("vmware-lab")) as lab:
        yield lab
