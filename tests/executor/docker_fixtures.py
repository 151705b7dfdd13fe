"""Fixtures for executor tests on real Docker containers.

``docker_host`` starts the engine (tools/dockerd.sh) and imports the LXC base as the
image (lxc-resources/docker-image.sh) once per session, both no-ops when done, and
skips, with the reason, where Docker cannot run here. The package's conftest.py makes
it visible to every test module; the helpers are imported from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab import require_marker

REPO = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "vmchecker-base:latest"


def _docker_unusable() -> str | None:
    """Why real Docker containers cannot run here, or None."""
    if os.geteuid() != 0:
        return "Docker tests need root (the engine's socket, the containers' cgroups)"
    try:
        import docker  # noqa: F401  (the SDK)
    except ImportError as exc:
        return f"the Docker SDK is not installed ({exc}); pip install -e '.[docker]'"
    if shutil.which("dockerd") is None:
        return "dockerd is missing: apt-get install docker.io"
    return None


def _script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def docker_host():
    """The Docker backend's Host, with the engine running and the image made."""
    reason = _docker_unusable()
    if reason:
        pytest.skip(reason)
    require_marker("docker", "Docker containers")
    proc = _script("tools/dockerd.sh", "start")
    if proc.returncode != 0:
        pytest.skip(f"the Docker engine cannot run here: {proc.stderr.strip()[-500:]}")
    proc = _script("lxc-resources/docker-image.sh")
    if proc.returncode != 0 and "run lxc-resources/build-base.sh" in proc.stderr:
        pytest.skip(f"no image to run: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"docker-image.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    from vmchecker.executor import get_host

    return get_host("docker")


def docker_machine(**overrides) -> dict:
    """Machine overrides for tests.executor.helpers.make_bundle: the base image."""
    return {"type": "docker", "vm": "", "image": DOCKER_IMAGE, **overrides}


def owned_containers(host, pids: set[int]) -> list[str]:
    """The job containers made by the processes ``pids`` (kept ones included: their
    names end like the job's)."""
    return [n for n in host.containers() if any(f"-{pid}-" in n for pid in pids)]


def remove_container(host, name: str) -> None:
    """Remove one container :func:`owned_containers` named, kept or not."""
    import contextlib

    import docker

    with contextlib.suppress(docker.errors.NotFound):
        host.api().remove_container(name, v=True, force=True)


def image_has(host, image: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` exist in a new container made from ``image`` (created, never
    started, removed again)."""
    import secrets

    import docker

    api = host.api()
    name = f"vmck-probe-{os.getpid()}-{secrets.token_hex(3)}"
    api.create_container(image, name=name, labels={"vmchecker.test": "probe"}, network_disabled=True)
    found = []
    try:
        for path in paths:
            try:
                api.get_archive(name, path)[0].close()
            except docker.errors.NotFound:
                continue
            found.append(path)
    finally:
        api.remove_container(name, v=True, force=True)
    return found
