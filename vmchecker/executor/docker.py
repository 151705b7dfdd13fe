"""Docker backend: each job runs in a fresh container made from the machine's image.

Revert is a new container (the image is never written: its root is read-only), PID 1
is the image's CMD (``/sbin/vmchecker-init`` in the image lxc-resources/docker-image.sh
makes), which keeps the container alive between the steps; commands run through the
exec API as the guest user, files travel through the archive API. The container has
no network, the machine's memory (swap included), pids and CPU limits, only the
capabilities root needs to keep the grading contract, and ``no-new-privileges``.

Writable are only the guest folder (``guest_base_path``: a tmpfs volume of
``limits.disk_mb``, mounted by the engine so the archive API reaches it), /tmp (a tmpfs
of the same size) and the engine's /dev/shm. That is the disk quota: overlay2 takes a
``storage-opt size=`` only on xfs with project quotas, not on the ext4 testers have;
tmpfs pages count against the container's memory limit, as an LXC clone's files do.

A step that outlives its timeout, and whatever a step leaves running, is killed through
the container's cgroup (:class:`.cgroups.GuestCgroup`: freeze, SIGKILL every process
but PID 1, thaw). Containers are named ``vmck-<job>-<owner pid>-<random>`` and labelled
``vmchecker.job``, so :meth:`DockerHost.cleanup_leftovers` removes those whose executor
died; a failed job's container is kept for inspection under ``kept-<name>`` where the
machine says ``keep_failed``. Every Docker error becomes an ExecutorError naming the
container and the call. A warm container (:mod:`.warm`) is one created and started ahead
of its job, from the image the machine names as it was then (its id).
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import docker  # the Docker SDK (absolute: this module is vmchecker.executor.docker)
import requests
from docker.types import DriverConfig, Mount

from vmchecker.config import Machine
from vmchecker.errors import ExecutorError
from vmchecker.executor import base, docker_io, guest, payload, results
from vmchecker.executor.cgroups import KILL_TIMEOUT, GuestCgroup
from vmchecker.executor.lxc_process import Buffer  # a capped in-memory sink (no LXC in it)
from vmchecker.executor.warm import WarmGuest

log = logging.getLogger(__name__)

LABEL = "vmchecker.job"
KEPT_PREFIX = "kept-"
IMAGE_HINT = "lxc-resources/docker-image.sh makes it from the LXC base"
# What root in the guest needs: unpack the payload with its owners and modes, become
# the student (setpriv), kill the student's processes, read and write every file of the
# job. Everything else (mknod, raw sockets, chroot, setfcap, audit...) is dropped.
CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
ENV = [f"PATH={guest.GUEST_PATH}", "LANG=C.UTF-8", "TERM=dumb"]   # HOME: the user's, set by the engine
STOP_TIMEOUT = 1            # seconds for PID 1 to end on SIGTERM (vmchecker-init takes milliseconds)

# Root, in the guest folder $1: the guest user $2 exists (the engine would run the steps
# as nobody else, and a build that cannot start is not the student's failure), unpack
# the payload (owners by name: the guest's passwd decides), check the guest can keep
# the grading contract.
COPY_IN = ('id -u -- "$2" >/dev/null 2>&1 || { echo "the image has no user \'$2\' (guest_user)" >&2; exit 125; };'
           f' cd -- "$1" && tar -xpf {docker_io.IN_TAR}; rc=$?; rm -f {docker_io.IN_TAR};'
           f' [ $rc = 0 ] && exec /bin/sh course/bin/{payload.STEP_PROGRAM} prepare; exit $rc')


def explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


@contextlib.contextmanager
def calling(call: str, name: str) -> Iterator[None]:
    """Turn any Docker failure inside the block into an ExecutorError naming the call."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ExecutorError(f"Docker {call} for container {name} failed: {explain(exc)} ({IMAGE_HINT})") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise ExecutorError(f"Docker {call} for container {name} failed: {explain(exc)}") from None


class DockerVM(base.VM):
    """One job's container, made from ``machine.image``."""

    def __init__(self, machine: Machine, name: str, api: docker.APIClient):
        super().__init__(machine, name)
        self.api = api
        self._created = False
        self._cgroup: GuestCgroup | None = None
        self._usage: docker_io.Usage | None = None

    # -- primitives

    def revert(self) -> None:
        limits = self.machine.limits
        disk = f"size={limits.disk_mb}m,nr_inodes={max(limits.disk_mb * 256, 4096)}"
        folder = Mount(self.machine.guest_base_path.rstrip("/"), None, type="volume", driver_config=DriverConfig(
            "local", {"type": "tmpfs", "device": "tmpfs", "o": f"{disk},mode=0755,nosuid,nodev"}))
        with calling("create_container", self.name):
            config = self.api.create_host_config(
                network_mode="none", read_only=True, mounts=[folder],
                tmpfs={"/tmp": f"rw,exec,nosuid,nodev,{disk},mode=1777"},
                mem_limit=limits.memory_mb << 20, memswap_limit=limits.memory_mb << 20, pids_limit=limits.pids,
                nano_cpus=int(limits.cpus * 1e9), cap_drop=["ALL"], cap_add=CAPS, security_opt=["no-new-privileges"])
            self.api.create_container(self.machine.image, name=self.name, hostname="vmchecker", host_config=config,
                                      labels={LABEL: self.name, "vmchecker.machine": self.machine.name},
                                      stop_timeout=STOP_TIMEOUT)
        self._created = True

    def start(self) -> None:
        with calling("start", self.name):
            self.api.start(self.name)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with calling("inspect_container", self.name):
                state = self.api.inspect_container(self.name)["State"]
            if state.get("Running") and state.get("Pid", 0) > 0:
                break
            if state.get("Status") in ("exited", "dead"):
                raise ExecutorError(f"Docker container {self.name} stopped at once (exit code {state.get('ExitCode')}):"
                                    f" the CMD of image {self.machine.image!r} must keep running (vmchecker-init)")
            if time.monotonic() > deadline:
                raise ExecutorError(f"Docker container {self.name} was not running after {timeout} s")
            time.sleep(0.01)
        try:
            self._cgroup, self._usage = GuestCgroup(state["Pid"]), docker_io.Usage(state["Pid"])
        except OSError as exc:
            raise ExecutorError(f"cannot read the cgroups of Docker container {self.name}: {exc}") from None

    def copy_to(self, load: payload.Payload, guest_dir: str) -> None:
        buf = io.BytesIO()
        load.write(buf)
        with calling("put_archive", self.name):
            if not self.api.put_archive(self.name, guest_dir, docker_io.wrapped_payload(buf.getvalue())):
                raise ExecutorError(f"Docker refused the job's files for {guest_dir} in container {self.name}")
        errors = Buffer(64 * 1024)
        code, timed_out = self._exec(["/bin/sh", "-c", COPY_IN, "sh", guest_dir, self._user()], "/", "0", guest.COPY_TIMEOUT,
                                     {2: errors})
        if timed_out or code != 0:
            reason = errors.text() or ("timed out" if timed_out else f"exit status {code}")
            raise ExecutorError(f"copying the job's files into {guest_dir} in {self.name} failed: {reason}")

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        with calling("get_archive", self.name):
            try:
                chunks, _stat = self.api.get_archive(self.name, guest_dir, chunk_size=65536)
            except docker.errors.NotFound:
                return   # no results folder: nothing to take
            docker_io.take_vmrs(chunks, dest, cap, self.name)

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: results.CappedWriter, stderr: results.CappedWriter) -> results.StepResult:
        usage = self._ready()[1]
        cpu_before = usage.start()
        started = time.monotonic()
        code, timed_out = self._exec(argv, cwd, self._user(), timeout, {1: stdout, 2: stderr})
        cpu_s, peak_kb = usage.since(cpu_before)
        result = results.StepResult(timed_out=timed_out, wall_s=round(time.monotonic() - started, 3),
                                    cpu_s=cpu_s, max_rss_kb=peak_kb)
        # The engine reports 128+N for a process a signal N ended: only a kill of ours is
        # known to be one.
        if timed_out and code in (None, 128 + signal.SIGKILL):
            result.signal = signal.SIGKILL
        else:
            result.exit_code = code
        return result

    def stop(self) -> None:
        with calling("stop", self.name):
            self.api.stop(self.name, timeout=STOP_TIMEOUT)

    def identity(self) -> str | None:
        """The id of the image the machine names now (a rebuilt image is another)."""
        try:
            return self.api.inspect_image(self.machine.image)["Id"]
        except (docker.errors.DockerException, requests.RequestException):
            return None   # the cold path says what is wrong

    def adopt(self, record: WarmGuest) -> bool:
        with calling("inspect_container", record.name), contextlib.suppress(docker.errors.NotFound):
            info = self.api.inspect_container(record.name)
            if info["State"].get("Running") and info.get("Image") == record.identity:
                self.name, self._created = record.name, True
                return True
        return False

    def cleanup(self, failed: bool = False) -> str | None:
        if not self._created:
            return None
        if failed and self.machine.keep_failed:
            return self._keep()
        with calling("remove_container", self.name), contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(self.name, v=True, force=True)
        self._created = False
        return None

    # -- helpers

    def _ready(self) -> tuple[GuestCgroup, docker_io.Usage]:
        if self._cgroup is None or self._usage is None:
            raise ExecutorError(f"Docker container {self.name} was not started")
        return self._cgroup, self._usage

    def _user(self) -> str:
        return self.machine.guest_user or "root"

    def _kill_all(self) -> None:
        self._ready()[0].kill_all()

    def _ended(self, exec_id: str) -> bool:
        with calling("exec_inspect", self.name):
            info = self.api.exec_inspect(exec_id)
        return not info["Running"] and info["ExitCode"] is not None

    def _exec(self, argv: list[str], cwd: str, user: str, timeout: float,
              sinks: dict[int, docker_io.Sink]) -> tuple[int | None, bool]:
        """Run ``argv`` in the container as ``user`` with its output in ``sinks`` (by
        stream id), at most ``timeout`` seconds; then kill what is left. (exit code,
        timed out)."""
        self._ready()
        with calling("exec_create", self.name):
            exec_id = self.api.exec_create(self.name, argv, stdout=True, stderr=True, user=user, workdir=cwd,
                                           environment=ENV)["Id"]
        with calling("exec_start", self.name):
            raw = self.api.exec_start(exec_id, socket=True)
        sock = getattr(raw, "_sock", raw)
        try:
            with calling("exec output", self.name):
                timed_out = docker_io.pump(sock, docker_io.Demux(sinks), timeout, lambda: self._ended(exec_id),
                                           self._kill_all)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            raw.close()
        deadline = time.monotonic() + KILL_TIMEOUT
        while not self._ended(exec_id):
            if time.monotonic() > deadline:
                raise ExecutorError(f"a process in Docker container {self.name} outlived being killed")
            time.sleep(0.01)
        with calling("exec_inspect", self.name):
            return self.api.exec_inspect(exec_id)["ExitCode"], timed_out

    def _keep(self) -> str:
        """Keep the failed job's container, renamed out of the leftovers' names, with
        nothing but PID 1 running in it."""
        kept = KEPT_PREFIX + self.name
        try:
            if self._cgroup is not None:
                self._cgroup.kill_all()
            with calling("rename", self.name):
                self.api.rename(self.name, kept)
        except ExecutorError as exc:
            return f"keeping the failed job's container failed: {exc.message}"
        return (f"the failed job's container is kept for inspection: {kept} (docker exec -it {kept} /bin/bash;"
                f" docker rm -f -v {kept} removes it)")


class DockerHost(base.Host):
    backend = "docker"

    def __init__(self) -> None:
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()

    def api(self) -> docker.APIClient:
        """The engine's API client (the default socket, or DOCKER_HOST), made on first use."""
        with self._lock:
            if self._api is None:
                try:
                    self._api = docker.from_env().api
                except docker.errors.DockerException as exc:
                    raise ExecutorError(f"cannot reach the Docker engine: {explain(exc)}"
                                        " (is dockerd running? tools/dockerd.sh start)") from None
            return self._api

    def get_vm(self, machine: Machine, job_id: str) -> DockerVM:
        if machine.network:
            raise ExecutorError(f"machine {machine.name!r}: network: true is not supported by the Docker backend"
                                " yet; set network: false")
        return DockerVM(machine, guest.guest_name(job_id), self.api())

    def containers(self) -> list[str]:
        """The names of every job container on this engine (kept ones included)."""
        with calling("containers", "vmck-*"):
            found = self.api().containers(all=True, filters={"label": LABEL})
        return [n.lstrip("/") for c in found for n in c.get("Names", [])[:1]]

    def remove_container(self, name: str) -> None:
        """Remove the job container ``name`` (whoever made it) and its guest folder."""
        if not name.startswith(guest.GUEST_PREFIX):
            raise ExecutorError(f"refusing to remove {name!r}: not a job container ({guest.GUEST_PREFIX}*)")
        with calling("remove_container", name), contextlib.suppress(docker.errors.NotFound):
            self.api().remove_container(name, v=True, force=True)

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        return guest.remove_leftovers(self.containers(), self.remove_container, "Docker container")

    def drop_warm(self, record: WarmGuest) -> None:
        self.remove_container(record.name)


def create_host() -> DockerHost:
    return DockerHost()
