"""Fixtures for executor tests on real libvirt/QEMU guests (TCG where KVM cannot run).

``kvm_host`` builds the guest once per session with kvm-resources/build-image.sh (a
no-op when its stamps match) and skips, with the reason, only where QEMU or libvirt
cannot run at all. The package's conftest.py makes ``kvm_host`` visible to every test
module; the helpers are imported from here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab import require_marker

REPO = Path(__file__).resolve().parents[2]
KVM_BASE = "vmchecker-kvm-base"
KVM_STATE = Path(os.environ.get("VMCHECKER_KVM_STATE", "/var/lib/vmchecker/kvm"))
TOOLS = ("qemu-system-x86_64", "qemu-img", "virsh", "libvirtd", "virtlogd", "mmdebstrap", "busybox", "mkfs.ext4")


def _kvm_unusable() -> str | None:
    """Why real QEMU guests cannot run here, or None."""
    if os.geteuid() != 0:
        return "KVM tests need root (libvirt's system instance)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: install the packages in kvm-resources/INSTALL.md"
    try:
        import libvirt  # noqa: F401
        import libvirt_qemu  # noqa: F401
    except ImportError as exc:
        return f"libvirt-python is not installed ({exc}); pip install libvirt-python"
    return None


@pytest.fixture(scope="session")
def kvm_host():
    """The KVM backend's Host, with the base guest built and snapshotted."""
    reason = _kvm_unusable()
    if reason:
        pytest.skip(reason)
    require_marker("kvm", "libvirt/QEMU guests")
    proc = subprocess.run([str(REPO / "kvm-resources" / "build-image.sh"), KVM_BASE],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"build-image.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    from vmchecker.executor import get_host

    return get_host("kvm")


@pytest.fixture
def own_domain(kvm_host, monkeypatch):
    """Hold the shared snapshot domain for the whole test, as a tester alone with it
    would: other suites running now wait, and this test's jobs and warm-ups, each taking
    the lock as usual, share this one (a dup of the locked file)."""
    from vmchecker.executor import kvm_modes

    fd = os.open(KVM_STATE / "jobs" / f".{KVM_BASE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setattr(kvm_modes.SnapshotVM, "_lock_domain", lambda vm: setattr(vm, "_lock", os.dup(fd)))
    yield kvm_host
    os.close(fd)


def kvm_machine(**overrides) -> dict:
    """Machine overrides for tests.executor.helpers.make_bundle: the KVM base guest."""
    return {"type": "kvm", "vm": KVM_BASE, "base_image": str(KVM_STATE / "base.qcow2"), **overrides}


def owned_domains(host, pids: set[int]) -> list[str]:
    """Running transient job guests made by the processes ``pids``."""
    import libvirt

    domains = host.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
    return [d.name() for d in domains if any(f"-{pid}-" in d.name() for pid in pids)]


def job_leftovers(host, pid: int) -> list[str]:
    """What the jobs of process ``pid`` left: transient guests, and overlays and
    consoles in the state folder's jobs/."""
    from vmchecker.executor.guest import GUEST_PREFIX

    return owned_domains(host, {pid}) + sorted(str(p) for p in (KVM_STATE / "jobs").glob(f"{GUEST_PREFIX}*-{pid}-*"))


def remove_leftover(host, item: str) -> None:
    """Remove one item :func:`job_leftovers` named (a file, or a guest to destroy)."""
    import contextlib

    import libvirt

    if item.startswith("/"):
        Path(item).unlink(missing_ok=True)
    else:
        with contextlib.suppress(libvirt.libvirtError):
            host.connection().lookupByName(item).destroy()
