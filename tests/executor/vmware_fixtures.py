"""Fixtures for executor tests on the VMware lab (a vSphere API server on loopback whose
VMs are Docker containers: tests/lab/vmware_lab.py).

``vmware_host`` is the real VMware backend's Host, with a state folder of the session's
own, carrying the lab's machine keys (``machine``: snapshot mode over the lab's two VMs)
so the shared behaviour tests can make jobs from it. The package's conftest.py makes it
visible to every test module; the helpers are imported from here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmchecker.executor.vmware import VmwareHost


class LabHost(VmwareHost):
    """The real Host, told where the lab is: nothing of it is replaced."""

    def __init__(self, state: Path, lab, credentials: Path):
        super().__init__(state)
        self.lab = lab
        self.credentials = credentials
        self.machine = lab.machine(credentials)

    def machine_keys(self, **overrides) -> dict:
        """make_bundle overrides: the lab's machine, with ``overrides``."""
        return {**self.machine, **overrides}


@pytest.fixture(scope="session")
def vmware_host(vmware_lab, tmp_path_factory: pytest.TempPathFactory) -> LabHost:
    """The VMware backend's Host on the lab (skips with the lab's reason)."""
    folder = tmp_path_factory.mktemp("vmware-host")
    host = LabHost(folder / "state", vmware_lab, vmware_lab.write_credentials(folder / "credentials"))
    yield host
    host.close()


def clone_leftovers(host: LabHost) -> list[str]:
    """What the tests' jobs left on the lab (clones, VMs powered on, their containers)
    and records of clones in the host's state folder."""
    return host.lab.leftovers() + [f"record {p.name}" for p in host.clone_records()]


def reset(host: LabHost, item: str) -> None:
    """Put the lab back as it started (every clone destroyed, the lab's VMs reverted)
    and drop the clone records: one call clears every item of :func:`clone_leftovers`."""
    host.lab.reset()
    for record in host.clone_records():
        record.unlink()


def running_guests(host: LabHost) -> list[str]:
    """The lab's containers that run now: one per VM (or clone) powered on."""
    out = subprocess.run(["docker", "ps", "--filter", f"label={host.lab.label}", "--format", "{{.Names}}"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(out.split())


def lab_images(host: LabHost) -> list[str]:
    """The images the lab's snapshots start from (a snapshot taken by a job would add one)."""
    out = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter", f"label={host.lab.label}"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(out.split())
