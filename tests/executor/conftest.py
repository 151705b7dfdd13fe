"""Fixtures for executor tests on real guests: ``lxc_host`` here, ``kvm_host`` from
kvm_fixtures.py, ``docker_host`` from docker_fixtures.py and ``vmware_host`` from
vmware_fixtures.py (made visible to every module of the package)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.executor.docker_fixtures import docker_host  # noqa: F401  (a fixture, for every module here)
from tests.executor.helpers import BASE
from tests.executor.kvm_fixtures import kvm_host, own_domain  # noqa: F401  (fixtures, for every module here)
from tests.executor.vmware_fixtures import vmware_host  # noqa: F401  (a fixture, for every module here)
from tests.lab import lxc_unusable


@pytest.fixture(scope="session")
def lxc_host():
    """The LXC backend's Host; skips with the reason when LXC cannot run here."""
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    from vmchecker.executor import get_host

    return get_host("lxc")


def owned_clones(host, pids: set[int]) -> list[str]:
    """The job clones made by the processes ``pids`` (other testers' runs are not ours)."""
    return [n for n in host.clones() if any(f"-{pid}-" in n for pid in pids)]


@pytest.fixture
def executor_pids() -> set[int]:
    """Pids of executors a test started as subprocesses (their clones are the test's)."""
    return {os.getpid()}


@pytest.fixture(autouse=True)
def no_clone_left(request: pytest.FixtureRequest, executor_pids: set[int]) -> Iterator[None]:
    """Every LXC test must leave no job clone of its own behind."""
    yield
    if "lxc_host" in request.fixturenames:
        host = request.getfixturevalue("lxc_host")
        left = owned_clones(host, executor_pids)
        for name in left:   # do not let one failure cascade into the next tests
            host.destroy_clone(name)
        assert not left, f"clones left behind: {left}"
