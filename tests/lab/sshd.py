"""A real OpenSSH server for tests, on loopback or inside a tester namespace.

``SshServer`` runs Debian's ``/usr/sbin/sshd -D`` with a config, host key, pid
file, log and authorized_keys of its own in a temporary folder
``/tmp/vmck-sshd-<pid>-*``, for a dedicated unprivileged account ``vmck-test``
(created on first use, unlocked with ``usermod -p '*'``, key login only). SFTP is
``internal-sftp``. ``stop()`` ends the listener and every session process it
spawned (sessions outlive a killed listener in OpenSSH, and rename themselves, so
they are found by parentage and by their open log file); ``close()`` also removes
the folder.

Files are shared between the namespaces, so a test can put or inspect the
tester's files directly under ``server.files`` (owned by the test account).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from tests.lab import require_marker
from tests.lab.netns import LOCK_FILE, TesterHost, check_route
from tests.util import free_port, pid_alive

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
TEST_USER = "vmck-test"
TMP_PREFIX = "vmck-sshd-"
READY_WAIT = 15.0  # seconds to wait for "Server listening" before giving up


def available() -> str | None:
    """Why a real sshd cannot run here (a skip reason), or None when it can."""
    if os.geteuid() != 0:
        return "running sshd for another account needs root"
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("useradd")):
        if not tool or not os.access(tool, os.X_OK):
            return f"{tool or 'ssh-keygen/useradd'} is not installed (apt-get install openssh-server)"
    return None


def ensure_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """The unprivileged test account, created if missing and unlocked for key login."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(name)
        # useradd leaves the account locked ('!') and sshd refuses locked accounts
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
        return entry
    finally:
        os.close(fd)


def foreign_host_key_line(folder: Path, entry: str) -> str:
    """A known_hosts line for ``entry`` with a fresh key that is not the server's (made in
    ``folder``): what a host key mismatch looks like."""
    key = folder / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, b64 = key.with_suffix(".pub").read_text().split()[:2]
    return f"{entry} {kind} {b64}"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes_using(folder: Path | str) -> set[int]:
    """Processes with a file open under ``folder`` (every sshd process holds its log)."""
    folder = str(folder).rstrip("/") + "/"
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path).startswith(folder):
                        found.add(int(entry.name))
                        break
    return found


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def leftovers(pid: int | None = None) -> list[str]:
    """sshd folders and processes made by process ``pid`` (default: this one) still present."""
    pid = os.getpid() if pid is None else pid
    found = []
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{pid}-*"):
        found.append(f"folder {folder}")
        found += [f"process {p} using {folder}" for p in processes_using(folder)]
    return found


def cleanup_leftovers() -> list[str]:
    """Kill and remove sshd servers of earlier test processes that are dead."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        owner = folder.name[len(TMP_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            _kill_all(processes_using(folder))
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    if removed:
        log.warning("removed sshd leftovers of earlier test runs: %s", ", ".join(removed))
    return removed


_cleaned = False


class SshServer:
    """A real sshd for the account ``vmck-test`` (key login only, internal-sftp).

    ``SshServer()`` listens on 127.0.0.1 at a free port; ``SshServer(host=tester)``
    runs inside the TesterHost's namespace on its address, port 22. Use as a
    context manager (or ``start()`` / ``close()``). Attributes: ``address``,
    ``port``, ``user``, ``dir`` (private folder), ``files`` (a folder owned by the
    account, for queues and job folders), ``log_path``, ``host_key_path``.
    """

    def __init__(self, host: TesterHost | None = None, *, port: int | None = None,
                 user: str = TEST_USER, authorized_keys: Iterable[str] = ()) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        require_marker("sshd", "a real sshd")
        global _cleaned
        if not _cleaned:
            _cleaned = True
            cleanup_leftovers()
        self.host = host
        self.user = user
        self.address = host.address if host else "127.0.0.1"
        self.port = port or (22 if host else free_port(self.address))
        self._account = ensure_user(user)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        self.dir.chmod(0o755)  # the account must reach authorized_keys and files/
        self.files = self.dir / "files"
        self.files.mkdir()
        os.chown(self.files, self._account.pw_uid, self._account.pw_gid)
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.host_key_path = self.dir / "ssh_host_ed25519_key"
        self.authorized_keys_path = self.dir / "authorized_keys"
        self.authorized_keys_path.write_text("".join(f"{k.strip()}\n" for k in authorized_keys))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmck-test-host",
                        "-f", str(self.host_key_path)], check=True, capture_output=True)
        self._write_config()
        self._proc: subprocess.Popen | None = None

    # ----------------------------------------------------------------- setup

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.address}\n"
            f"HostKey {self.host_key_path}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys_path}\n"
            "UsePAM no\n"
            "StrictModes no\n"  # authorized_keys lives under /tmp, which is world-writable
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            f"AllowUsers {self.user}\n"
            "UseDNS no\n"
            "MaxStartups 50\n"
            "LogLevel INFO\n"
            "Subsystem sftp internal-sftp\n"
        )

    def authorize(self, line: str) -> None:
        """Add an authorized_keys line (options allowed); sshd reads it at each login."""
        with self.authorized_keys_path.open("a") as f:
            f.write(line.strip() + "\n")

    def make_dir(self, relative: str) -> Path:
        """A folder under ``files`` owned by the account (a queue, a done/ folder...)."""
        path = self.files / relative
        path.mkdir(parents=True, exist_ok=True)
        for part in [path, *path.relative_to(self.files).parents]:
            os.chown(self.files / part, self._account.pw_uid, self._account.pw_gid)
        return path

    @property
    def known_hosts_entry(self) -> str:
        """How known_hosts names this server: ``ADDR`` on port 22, else ``[ADDR]:PORT``."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def host_key_line(self) -> str:
        """This server's known_hosts line."""
        kind, b64 = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        return f"{self.known_hosts_entry} {kind} {b64}"

    def accepted_logins(self) -> int:
        """How many public-key logins sshd has accepted (from its log)."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("Accepted publickey for ")

    # ----------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SshServer:
        """Start sshd and wait until it listens; raise with its log if it does not."""
        if self.running:
            return self
        if self.host:
            self.host.check_route()
        else:
            check_route(self.address, "lo")
        cmd = [SSHD, "-D", "-f", str(self.config_path), "-E", str(self.log_path)]
        start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = self.host.popen(cmd) if self.host else subprocess.Popen(cmd)
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if self._read_log(start_offset).find("Server listening on") >= 0:
                log.info("sshd %s listening on %s:%s", self.dir, self.address, self.port)
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not start on {self.address}:{self.port}: {self._read_log(start_offset)}")

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def processes(self) -> set[int]:
        """Every process of this server: the listener, its sessions, orphaned sessions."""
        found = processes_using(self.dir)
        if self.running:
            found |= {self._proc.pid} | _descendants(self._proc.pid)
        return found

    def stop(self) -> None:
        """End the listener and every session (a client's connection breaks)."""
        pids = self.processes()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
        _kill_all(pids - ({self._proc.pid} if self._proc else set()))
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        _kill_all(processes_using(self.dir))  # anything forked meanwhile
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same address, port and host key."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the folder (config, keys, log, files)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def tester_folder(ssh: SshServer, prefix: str = "vmck-tester-") -> Path:
    """A one-slot tester's folder (queue, done, tmpunzip, state, config.yaml) outside
    pytest's temporary tree, whose queue/ belongs to ``ssh``'s account: the storer's
    SFTP logs in as that account, which must reach and write the queue."""
    tester = Path(tempfile.mkdtemp(prefix=prefix))
    tester.chmod(0o755)
    for sub in ("queue", "done", "tmpunzip", "state"):
        (tester / sub).mkdir()
    entry = pwd.getpwnam(ssh.user)
    os.chown(tester / "queue", entry.pw_uid, entry.pw_gid)
    (tester / "config.yaml").write_text(yaml.safe_dump({"tester": {"name": "t1", "slots": 1}}))
    return tester
