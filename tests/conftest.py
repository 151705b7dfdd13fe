"""Fixtures shared by the whole suite, and the check that every test using a real
component (LXC, KVM, sshd, network namespaces, the browser) carries its marker, so that
``-m "not kvm"`` and the like leave out exactly those tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import lab
from tests.util import write_course
from vmchecker import config

pytest_plugins = ["tests.fixtures", "tests.lab.fixtures"]

# Fixtures that bring up a real component, and the marker a test using them must carry.
REAL_FIXTURES = {
    "lxc_host": "lxc",
    "kvm_host": "kvm",
    "docker_host": "docker",
    "vmware_lab": "vmware",
    "ssh_server": "sshd",
    "lab_network": "netns",
    "tester_host": "netns",
    "page": "browser",
    "prometheus_server": "prometheus",
}
# Parametrized fixtures whose parameter picks the component: {fixture: {param: marker}}.
REAL_PARAMS = {
    "backend": {"lxc": "lxc", "kvm": "kvm", "docker": "docker", "vmware": "vmware"},
    "ssh_server": {"netns": "netns"},
}


def missing_markers(item: pytest.Item) -> set[str]:
    """The component markers ``item`` needs (by the fixtures it uses) and does not carry."""
    needed = {REAL_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in REAL_FIXTURES}
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, by_param in REAL_PARAMS.items():
        if name in params and params[name] in by_param:
            needed.add(by_param[params[name]])
    return needed - {m.name for m in item.iter_markers()}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test uses a real component without its marker (checked before
    ``-m`` deselects anything, so a wrong file fails every run, not only the full one)."""
    wrong = [f"{item.nodeid}: mark it {', '.join(sorted(m))}" for item in items if (m := missing_markers(item))]
    if wrong:
        raise pytest.UsageError("tests use a real component without its marker:\n  " + "\n  ".join(wrong))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tell the lab which markers the running test carries, from before its first fixture
    to after its last teardown: a helper that starts a real component asks for its marker
    (``tests.lab.require_marker``), which also catches uses no fixture name reveals."""
    lab.current_markers = {m.name for m in item.iter_markers()}
    try:
        yield
    finally:
        lab.current_markers = None


@pytest.fixture
def course(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config.CourseConfig:
    """A course ``so`` in a temporary folder, registered in a global config that
    ``$VMCHECKER_CONFIG`` points to."""
    path = write_course(tmp_path)
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    return config.load_course(path)
