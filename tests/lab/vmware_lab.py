"""The VMware test lab: a real vSphere API server on loopback whose VMs are Docker containers.

``tests/lab/vmware`` holds the server (Go, on govmomi's simulator, built offline by its
``build.sh``). Each VM it serves is backed by a container of ``vmchecker-base:latest`` created
at power on (no network, the VM's memoryMB as memory and swap limit, its CPUs, a pids limit);
a revert removes the container, so the next power on starts clean from the snapshot; a linked
clone starts from its source's current snapshot; the guest process and file calls of pyvmomi
run in the container. Facts a backend meets here (all as on a real host unless said):

* The server speaks **plain http**: ``url`` is ``http://127.0.0.1:PORT/sdk``; connect with
  ``SmartConnect(host=..., port=..., protocol="http")``.
* Login accepts only ``user``/``password``; guest calls accept any password for any user of
  the guest (``root``, ``student``); an unknown user is ``InvalidGuestLogin``. A VM that is off
  raises ``GuestOperationsUnavailable`` (a real host may say ``InvalidPowerState``).
* Every VM starts powered off with one snapshot ``clean`` (current). A revert leaves the VM off.
* File transfer URLs have host ``*``: replace the netloc with the server's. PUT needs a
  Content-Length and an existing parent folder; uploaded files are root-owned, mode 0444.
* ``ListProcessesInGuest`` lists the programs started through the API only; the exit code
  of a finished one stays listed (``exitCode`` and ``endTime`` are unset while it runs).
  ``TerminateProcessInGuest`` kills the program's whole session from the host (it works in a
  guest whose pids limit is exhausted); a killed program's exit code is 137.
* ``CloneVM_Task`` ignores ``spec.powerOn``: power the clone on yourself.

Everything the lab makes carries the Docker label ``vmchecker.lab=vmck-vmware-<pid>-<n>``
(``<pid>`` the test process); ``stop()`` removes it, and a later start removes what a dead
process left. The demo runs the lab as a daemon: ``python -m tests.lab.vmware_lab --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from tests.lab import require_marker
from tests.lab.netns import check_route

HERE = Path(__file__).resolve().parent / "vmware"
GOSRC = Path("/usr/share/gocode/src/github.com/vmware/govmomi/simulator")
IMAGE = "vmchecker-base:latest"
LABEL = "vmchecker.lab"
PREFIX = "vmck-vmware"
SNAPSHOT = "clean"
STOP_WAIT = 60.0  # seconds for the server to remove its containers after SIGTERM
_counter = itertools.count(1)


def build() -> Path:
    """Build the lab server if its sources changed (``build.sh``) and return the binary."""
    out = subprocess.run([str(HERE / "build.sh")], check=True, capture_output=True, text=True).stdout
    return Path(out.split()[-1])


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def lab_unusable(image: str = IMAGE) -> str | None:
    """Why the lab cannot run here (no root, Go, govmomi, pyvmomi, dockerd or image), or None."""
    if os.geteuid() != 0:
        return "the VMware lab needs root (Docker, and killing guest processes from the host)"
    if not shutil.which("go") or not GOSRC.is_dir():
        return "the VMware lab needs Go and govmomi's sources (apt-get install golang-go golang-github-vmware-govmomi-dev)"
    try:
        import pyVmomi  # noqa: F401
    except ImportError as exc:
        return f"pyvmomi is not installed ({exc}); pip install -e '.[vmware]'"
    if not shutil.which("docker"):
        return "docker is not installed (apt-get install docker.io)"
    try:
        _docker("version")
    except subprocess.CalledProcessError:
        return "dockerd does not answer: run tools/dockerd.sh start"
    try:
        _docker("image", "inspect", image)
    except subprocess.CalledProcessError:
        return f"no Docker image {image}: run lxc-resources/docker-image.sh"
    require_marker("vmware", "the VMware lab")
    return None


def remove_labelled(label: str) -> None:
    """Remove the containers and images carrying ``label`` (KEY=VALUE)."""
    for kind, rm in (("ps", ["rm", "-f"]), ("images", ["rmi", "-f"])):
        ids = _docker(kind, *(["-a"] if kind == "ps" else []), "-q", "--filter", f"label={label}").split()
        if ids:
            subprocess.run(["docker", *rm, *sorted(set(ids))], capture_output=True)


def _reap_dead_owners() -> None:
    """Remove the containers and images of labs whose test process died without stop()."""
    with contextlib.suppress(subprocess.CalledProcessError):
        values = _docker("ps", "-a", "--filter", f"label={LABEL}", "--format", f'{{{{.Label "{LABEL}"}}}}').split()
        images = _docker("images", "-q", "--filter", f"label={LABEL}").split()
        if images:
            values += _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}',
                              *set(images)).split()
        for value in sorted(set(values)):
            match = re.fullmatch(rf"{PREFIX}-(\d+)-\d+", value)
            if match and not _alive(int(match[1])):
                remove_labelled(f"{LABEL}={value}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it waits only to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class VmwareLab:
    """A running lab server with VMs ``vms`` (each off, with snapshot ``clean``)."""

    def __init__(self, vms: list[str], workdir: Path, image: str = IMAGE, pids: int = 512,
                 label: str | None = None) -> None:
        self.vms = list(vms)
        self.workdir = Path(workdir)
        self.image = image
        self.pids = pids
        self.label = label or f"{LABEL}={PREFIX}-{os.getpid()}-{next(_counter)}"
        self.user = "vmck"
        self.password = secrets.token_hex(16)
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, daemon: bool = False) -> VmwareLab:
        """Build and start the server, and read its URL (``daemon``: in its own session)."""
        check_route("127.0.0.1", "lo")
        binary = build()
        _reap_dead_owners()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "server.log", "ab") as server_log:
            self.process = subprocess.Popen(
                [str(binary), "-listen", "127.0.0.1:0", "-user", self.user, "-password", self.password,
                 "-vms", ",".join(self.vms), "-image", self.image, "-label", self.label, "-pids", str(self.pids)],
                stdout=subprocess.PIPE, stderr=server_log, stdin=subprocess.DEVNULL,
                # the simulator's datastore folder goes under TMPDIR: keep it in the workdir
                env={**os.environ, "TMPDIR": str(self.workdir)}, start_new_session=daemon)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # the server prints it once ready
        self.process.stdout.close()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the VMware lab server did not start; see {self.workdir / 'server.log'}")
        self.url = line.split()[1]
        return self

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 0

    def stop(self) -> None:
        """Stop the server and remove every container and image of its label."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()  # the server removes its containers on SIGTERM...
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        remove_labelled(self.label)  # ...and whatever a killed server left goes here

    def __enter__(self) -> VmwareLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_credentials(self, path: Path) -> Path:
        """Write the password alone to ``path``, readable by its owner only."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(self.password)  # the password alone, no newline
        return path

    def machine(self, credentials: Path, **overrides: object) -> dict:
        """The machine keys of a course or bundle that grades on this lab."""
        return {"type": "vmware", "vm": self.vms[0], "vms": list(self.vms), "snapshot": SNAPSHOT,
                "vmware_url": self.url, "vmware_user": self.user, "vmware_credentials": str(credentials),
                "guest_user": "root"} | overrides

    def containers(self) -> list[str]:
        """Names of this lab's containers, running or not."""
        out = _docker("ps", "-a", "--filter", f"label={self.label}", "--format", "{{.Names}}")
        return sorted(out.split())

    @contextlib.contextmanager
    def connect(self) -> Iterator[object]:
        """A pyvmomi ServiceInstance logged in to the lab (logged out after)."""
        from pyVim.connect import Disconnect, SmartConnect

        check_route(self.host, "lo")
        si = SmartConnect(host=self.host, port=self.port, user=self.user, pwd=self.password, protocol="http")
        try:
            yield si
        finally:
            Disconnect(si)

    def inventory(self, si: object) -> dict[str, object]:
        """Every VM of the lab server by name (the lab's own and any clone)."""
        from pyVmomi import vim

        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return {vm.name: vm for vm in view.view}
        finally:
            view.Destroy()

    def leftovers(self) -> list[str]:
        """What a test left: VMs other than the lab's (clones), lab VMs still powered on, and
        containers of no lab VM (a clone's, once its VM is gone)."""
        left = []
        with self.connect() as si:
            for name, vm in sorted(self.inventory(si).items()):
                if name not in self.vms:
                    left.append(f"VM {name} (not one of the lab's)")
                elif vm.runtime.powerState != "poweredOff":
                    left.append(f"VM {name} is {vm.runtime.powerState}")
        prefix = self.label.split("=", 1)[1]
        ours = [re.compile(rf"{re.escape(prefix)}-{re.escape(name)}-vm-\d+") for name in self.vms]
        left += [f"container {c}" for c in self.containers() if not any(p.fullmatch(c) for p in ours)]
        return left

    def reset(self) -> None:
        """Put the lab back as it started: clones destroyed, the lab's VMs reverted (off,
        no container). For cleanup after a test that failed half way."""
        from pyVim.task import WaitForTask

        with self.connect() as si:
            for name, vm in self.inventory(si).items():
                if name in self.vms:
                    WaitForTask(vm.RevertToCurrentSnapshot_Task())
                    continue
                if vm.runtime.powerState == "poweredOn":
                    WaitForTask(vm.PowerOffVM_Task())
                WaitForTask(vm.Destroy_Task())


# --- the demo's command line: a lab that outlives the command -------------------------------

def _start(args: argparse.Namespace) -> int:
    state = Path(args.dir)
    state.mkdir(parents=True, exist_ok=True)
    if (state / "pid").exists() and _alive(int((state / "pid").read_text())):
        print((state / "url").read_text().strip())
        return 0
    lab = VmwareLab(args.vms.split(","), state, image=args.image, pids=args.pids,
                    label=f"{LABEL}={PREFIX}-cli-{secrets.token_hex(4)}")
    lab.start(daemon=True)
    assert lab.process is not None
    (state / "url").write_text(lab.url + "\n")
    (state / "label").write_text(lab.label + "\n")
    (state / "user").write_text(lab.user + "\n")
    lab.write_credentials(state / "credentials")
    (state / "pid").write_text(f"{lab.process.pid}\n")
    print(lab.url)
    return 0


def _stop(args: argparse.Namespace) -> int:
    state = Path(args.dir)
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int((state / "pid").read_text())
        os.kill(pid, signal.SIGTERM)
        # wait for it to clean up (it is not our child: poll its /proc entry)
        for _ in range(int(STOP_WAIT * 10)):
            if not _alive(pid):
                break
            time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        remove_labelled((state / "label").read_text().strip())
    for name in ("pid", "url", "label"):
        (state / name).unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.vmware_lab",
        description="Run the VMware test lab server as a daemon (for the demo). 'start' prints the URL and "
                    "writes DIR/url, DIR/user, DIR/credentials (the password, mode 0600) and DIR/pid; "
                    "'stop' stops it and removes its containers (safe to run twice).")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the lab (or print the URL of the one running)")
    start.add_argument("--dir", required=True, help="state folder of the lab")
    start.add_argument("--vms", required=True, help="comma-separated VM names")
    start.add_argument("--image", default=IMAGE, help=f"guest image (default {IMAGE})")
    start.add_argument("--pids", type=int, default=512, help="pids limit per VM (default 512)")
    start.set_defaults(func=_start)
    stop = sub.add_parser("stop", help="stop the lab of --dir")
    stop.add_argument("--dir", required=True, help="state folder of the lab")
    stop.set_defaults(func=_stop)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"vmware_lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
