"""The Debian package as an operator gets it: ``make deb`` builds
``build/deb/vmchecker_<version>_all.deb`` once per session (it returns at once when the
tree has not changed), and the package is installed into a fresh LXC container, an
overlay clone of the base container, where its commands must work.

Offline install: the container has no network and no apt mirror. On the host, apt works
out which Debian packages the package needs that the base container lacks (apt reading
the base's own dpkg status) and downloads them once into build/deb/deps/ (from the
host's configured Debian mirror; later runs find them there). They and the package go
into the container as a local apt repository (``deb [trusted=yes] file:...``, indexed
with dpkg-scanpackages), its only source, and ``apt-get install`` of the .deb resolves
the Depends from it, as an operator without a mirror would. Recommends are left out
(``--no-install-recommends``): what a storer alone installs must run every command's
``--help``; the tester's bindings (python3-lxc, ...) are Recommends/Suggests.

The clone is named like a job guest (``vmck-deb-<pid>-<random>``), so an executor
removes it if this test process dies before its own ``finally`` does.
"""

from __future__ import annotations

import ast
import fcntl
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.lab import lxc_unusable

if TYPE_CHECKING:
    import lxc

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "deb"
DEPS = OUT / "deps"
BASE = "vmchecker-base"
REPO_IN_GUEST = "/var/tmp/vmchecker-debs"
COMMANDS = sorted(p.name for p in (ROOT / "bin").glob("vmchecker-*"))
UNITS = ["vmchecker-storer-daemon.service", "vmchecker-web.service", "vmchecker-queue-manager@.service"]
ENABLED = ["vmchecker-storer-daemon.service", "vmchecker-web.service"]   # a template has no instance yet
GUEST_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
             "DEBIAN_FRONTEND=noninteractive"]


def setup_version() -> str:
    match = re.search(r'^\s*version="([^"]+)"', (ROOT / "setup.py").read_text(encoding="utf-8"), re.M)
    assert match, "setup.py has no version=\"...\""
    return match.group(1)


@pytest.fixture(scope="session")
def deb() -> Path:
    """The package, built by ``make deb`` (once per session; skips where the Debian
    build tools are missing: ``make deps`` installs them)."""
    missing = [tool for tool in ("dpkg-buildpackage", "dh", "dh_python3") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Debian build tools missing ({', '.join(missing)}): run 'make deps'")
    done = subprocess.run(["make", "-s", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"make deb failed:\n{done.stdout}\n{done.stderr}"
    path = OUT / f"vmchecker_{setup_version()}_all.deb"
    assert path.is_file(), f"make deb did not build {path}"
    return path


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_package_contents(deb: Path, tmp_path: Path) -> None:
    """What dpkg would install, read from the .deb: every command of bin/ on the PATH,
    the global config as a conffile, the units, and maintainer scripts that enable the
    units but start none."""
    assert deb_field(deb, "Version") == setup_version()
    assert deb_field(deb, "Architecture") == "all"
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    assert {f"/usr/bin/{c}" for c in COMMANDS} <= paths
    assert {f"/lib/systemd/system/{u}" for u in UNITS} <= paths
    assert {"/etc/vmchecker/config.yaml", "/var/lib/vmchecker/"} <= paths
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path / "control")], check=True)
    assert (tmp_path / "control" / "conffiles").read_text().split() == ["/etc/vmchecker/config.yaml"]
    postinst = (tmp_path / "control" / "postinst").read_text()
    for unit in ENABLED:
        assert f"deb-systemd-helper enable '{unit}'" in postinst
    assert "deb-systemd-invoke" not in postinst, "the package must not start its units (dh_installsystemd --no-start)"


def test_depends_covers_the_requirements_and_the_web(deb: Path) -> None:
    """Each of setup.py's requirements and of its web extra is a Debian dependency (by
    dh-python's own name mapping), so a library added there cannot be missing from the
    package: every command, vmchecker-web included, must run with Depends alone."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    options = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    wanted = [r for r in options["install_requires"] + options["extras_require"]["web"] if "python_version" not in r]
    fallback = Path("/usr/share/dh-python/dist/cpython3_fallback").read_text(encoding="utf-8").splitlines()
    debian = {re.sub(r"[-_.]+", "-", line.split()[0]).lower(): line.split()[1] for line in fallback if " " in line}
    depends = {d.strip().split()[0].split(":")[0] for d in deb_field(deb, "Depends").split(",")}
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()
        assert debian.get(name) in depends, f"{requirement} (Debian: {debian.get(name)}) is not in Depends"


@pytest.fixture
def local_repo(deb: Path, tmp_path: Path) -> Path:
    """A folder holding the package and the Debian packages the base container lacks,
    with the Packages index apt reads from a ``file:`` source."""
    status = Path("/var/lib/lxc", BASE, "rootfs/var/lib/dpkg/status")
    (DEPS / "partial").mkdir(parents=True, exist_ok=True)
    fetch = ["apt-get", "install", "--download-only", "-y", "-q", "--no-install-recommends", "-o", "Debug::NoLocking=1",
             "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={DEPS}", str(deb)]
    with open(DEPS / ".lock", "w") as lock:   # one fetch at a time into the shared folder
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(fetch, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:   # the host's package lists may be older than the mirror
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            done = subprocess.run(fetch, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"apt could not gather the package's dependencies:\n{done.stdout}\n{done.stderr}"
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in [deb, *DEPS.glob("*.deb")]:
        shutil.copy(path, repo)
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture_output=True,
                           text=True, check=True).stdout
    (repo / "Packages").write_text(index, encoding="utf-8")
    return repo


@pytest.fixture
def container() -> Iterator[lxc.Container]:
    """A running overlay clone of the base container, destroyed afterwards even when the
    test fails."""
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    import lxc  # the binding (absolute), present once lxc_unusable said yes

    from vmchecker.executor import guest
    from vmchecker.executor.lxc import LxcHost

    host = LxcHost()
    name = guest.guest_name("deb")
    clone = lxc.Container(BASE).clone(name, flags=lxc.LXC_CLONE_SNAPSHOT, bdevtype="overlayfs")
    try:
        assert clone is not None and clone.defined, f"cloning {BASE} as {name} failed"
        assert clone.start(close_fds=True) and clone.wait("RUNNING", 30), f"container {name} did not start"
        yield clone
    finally:
        host.destroy_clone(name)


def run(name: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``sh -c script`` as root in the container, with a clean environment."""
    argv = ["lxc-attach", "-n", name, "--clear-env"]
    for assignment in GUEST_ENV:
        argv += ["--set-var", assignment]
    return subprocess.run([*argv, "--", "sh", "-c", script], capture_output=True, text=True, timeout=timeout)


def ok(name: str, script: str, timeout: float = 120) -> str:
    done = run(name, script, timeout)
    assert done.returncode == 0, f"in the container, {script!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.lxc
def test_install_in_fresh_container(deb: Path, local_repo: Path, container: lxc.Container) -> None:
    """apt installs the package from the local repository; then the service user, the
    state folder, the config, the enabled units, a course made by
    ``vmchecker-init-course storer`` and every command's ``--help``; a purge removes
    the state folder."""
    shutil.copytree(local_repo, f"/proc/{container.init_pid}/root{REPO_IN_GUEST}")
    name = container.name
    ok(name, f"echo 'deb [trusted=yes] file:{REPO_IN_GUEST} ./' > /etc/apt/sources.list"
             " && rm -f /etc/apt/sources.list.d/* && apt-get update -q")
    ok(name, f"apt-get install -y -q --no-install-recommends {REPO_IN_GUEST}/{deb.name}", timeout=300)

    user = ok(name, "getent passwd vmchecker").strip().split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/vmchecker" and user[6] == "/usr/sbin/nologin", user
    assert ok(name, "stat -c '%U:%G %a' /var/lib/vmchecker").split() == ["vmchecker:vmchecker", "750"]
    assert "/etc/vmchecker/config.yaml" in ok(name, "dpkg-query -W -f='${Conffiles}' vmchecker")
    ok(name, " && ".join(f"test -f /lib/systemd/system/{u}" for u in UNITS))
    ok(name, " && ".join(f"test -L /etc/systemd/system/multi-user.target.wants/{u}" for u in ENABLED))
    assert ok(name, "ls /usr/bin/ | grep '^vmchecker-'").split() == COMMANDS

    ok(name, "vmchecker-init-course storer /srv/vmchecker/x --course-id x")
    ok(name, "test -f /srv/vmchecker/x/config.yaml && test -f /srv/vmchecker/x/keys/id_ed25519")
    assert "x: /srv/vmchecker/x/config.yaml" in ok(name, "cat /etc/vmchecker/config.yaml")

    failed = {}
    for command in COMMANDS:
        done = run(name, f"{command} --help")
        if done.returncode != 0 or "usage:" not in done.stdout:
            failed[command] = f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    assert not failed, f"--help failed in the installed package: {failed}"

    ok(name, "apt-get purge -y -q vmchecker")
    ok(name, "test ! -e /var/lib/vmchecker && getent passwd vmchecker >/dev/null")

