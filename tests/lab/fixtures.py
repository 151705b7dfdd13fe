"""pytest fixtures over the lab helpers, for every test (tests/conftest.py loads them).

* ``lab_network``: a LabNetwork (bridge + free /24), removed after the test; a test
  using it is marked ``netns``.
* ``tester_host``: one TesterHost on ``lab_network``.
* ``ssh_server``: a started SshServer, parametrized: on loopback and inside a
  tester namespace (so every test using it runs in both places); its parameters
  carry the markers (``sshd``, and ``netns`` for the namespace), so a test that uses
  it, even through another fixture, is marked without saying so.
* ``no_lab_leftovers``: fails the test if a namespace, link, sshd process or sshd
  folder of this process is still there once the test's fixtures are gone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab import netns, skip_unless_lab, sshd


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
