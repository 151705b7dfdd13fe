"""Fixtures for executor tests on real LXC containers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.executor.helpers import BASE


def _lxc_unusable() -> str | None:
    """Why real LXC jobs cannot run here, or None."""
    if os.geteuid() != 0:
        return "LXC tests need root"
    try:
        import lxc  # noqa: F401  (the binding, not vmchecker.executor.lxc)
    except ImportError as exc:
        return f"the LXC Python binding is not installed ({exc}); pip install -e '.[lxc]'"
    import lxc as binding

    if not binding.Container(BASE).defined:
        return f"the LXC base container {BASE!r} does not exist: run 'make base'"
    return None


@pytest.fixture(scope="session")
def lxc_host():
    """The LXC backend's Host; skips with the reason when LXC cannot run here."""
    reason = _lxc_unusable()
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
