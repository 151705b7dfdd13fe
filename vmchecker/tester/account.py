"""The tester's account for the storer: the Unix user the storer logs in as over SFTP.

The storer writes bundles into the tester's ``queue/`` and reads results from its
``done/``, logging in with the course key, which the account's ``authorized_keys``
restricts to SFTP. What trips a sysadmin up is small and silent: ``useradd`` leaves
the account locked, and sshd refuses a locked account even for a key ("account is
locked" in its log, while the storer sees only "Permission denied (publickey)"); a
folder above ``queue/`` closed to the account; ``authorized_keys`` with the wrong owner
or mode (sshd's StrictModes ignores it). So the set-up is one list of steps, each a
shell line a sysadmin can read (and run by hand) and the same action done here when
``vmchecker-init-course tester --user`` runs as root.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)

SHELL = "/usr/sbin/nologin"  # the storer only needs SFTP; sshd still wants a real shell file
SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Step:
    """One thing to set up: the shell line that does it, and the same done in Python."""

    shell: str
    action: Callable[[], None]


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise VmcheckerError(f"{argv[0]} not found: install it (Debian: passwd, util-linux)") from None
    if done.returncode != 0:
        raise VmcheckerError(f"{shlex.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")


def _command(argv: list[str]) -> Step:
    return Step(shlex.join(argv), lambda: _run(argv))


def _home(user: str) -> Path:
    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        return Path("/home") / user  # where useradd --create-home puts it


def _add_key_line(user: str, line: str) -> None:
    """Append ``line`` to the user's authorized_keys unless it is there; owner and modes
    as sshd's StrictModes wants them."""
    entry = pwd.getpwnam(user)
    ssh = Path(entry.pw_dir) / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh / "authorized_keys"
    old = keys.read_text() if keys.exists() else ""
    if line not in old.splitlines():
        keys.write_text(old + ("" if not old or old.endswith("\n") else "\n") + line + "\n")
    for path, mode in ((ssh, 0o700), (keys, 0o600)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, mode)


def steps(user: str, root: Path, queue: Path, done: Path, key_line: str | None) -> list[Step]:
    """What makes ``user`` an account the storer can use for the tester in ``root``."""
    out = []
    try:
        pwd.getpwnam(user)
    except KeyError:
        out.append(_command(["useradd", "--system", "--create-home", "--shell", SHELL, user]))
    # useradd leaves the password field '!' (locked): sshd then refuses every login
    # of the account, keys included. '*' is no password, and not locked.
    out.append(_command(["usermod", "-p", "*", user]))
    if key_line:
        home = _home(user)
        out.append(Step(f"install -d -m 700 -o {user} -g {user} {shlex.quote(str(home / '.ssh'))} && echo"
                        f" {shlex.quote(key_line)} >> {shlex.quote(str(home / '.ssh/authorized_keys'))} &&"
                        f" chown {user}: {shlex.quote(str(home / '.ssh/authorized_keys'))} &&"
                        f" chmod 600 {shlex.quote(str(home / '.ssh/authorized_keys'))}",
                        lambda: _add_key_line(user, key_line)))
    out.append(_command(["chown", f"{user}:", str(queue)]))          # it writes bundles here
    out.append(_command(["chmod", "755", str(root), str(done)]))      # it reads results from done/<job>/
    return out


def closed_folders(user: str, folders: list[Path]) -> list[Path]:
    """The folders above (and including) ``folders`` that ``user`` cannot pass through."""
    entry = pwd.getpwnam(user)
    groups = {g for g in os.getgrouplist(user, entry.pw_gid)}
    closed = []
    for folder in folders:
        for path in [*reversed(folder.absolute().parents), folder.absolute()]:
            st = path.stat()
            if st.st_uid == entry.pw_uid:
                ok = st.st_mode & 0o100
            elif st.st_gid in groups:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok and path not in closed:
                closed.append(path)
    return closed


def sshd_advice(user: str) -> list[str]:
    """How sshd must run for the account (printed: sshd is the system's, not ours)."""
    lines = []
    if not os.access(SSHD, os.X_OK):
        lines.append("sshd is not installed: apt-get install openssh-server (Debian starts it as ssh.service)")
    lines += [
        "sshd: the system's own (systemctl enable --now ssh) serves the account as it is, key logins only;",
        f"  if /etc/ssh/sshd_config has AllowUsers or AllowGroups, add {user} there; the storer needs no",
        "  shell, no forwarding and no pty (its authorized_keys line allows SFTP only).",
        "The storer adds this tester with --add-tester; compare the host key fingerprint it prints with:",
        "  ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
    ]
    return lines


def set_up(user: str, root: Path, queue: Path, done: Path, key_line: str | None) -> list[str]:
    """Do every step (as root) and return what was done, with sshd's part and any
    folder the account cannot reach, as lines to print."""
    if os.geteuid() != 0:
        raise VmcheckerError("setting up the tester's account needs root (or run without --user and follow"
                             " the printed commands)")
    if shutil.which("useradd") is None:
        raise VmcheckerError("useradd not found: install passwd")
    lines = []
    for step in steps(user, root, queue, done, key_line):
        step.action()
        lines.append(f"done: {step.shell}")
    closed = closed_folders(user, [queue, done])
    if closed:
        lines.append(f"warning: {user} cannot pass through {', '.join(map(str, closed))}: the storer could"
                     f" not reach the queue; e.g. chmod o+x {' '.join(shlex.quote(str(p)) for p in closed)}")
    return lines + sshd_advice(user)


def recipe(user: str, root: Path, queue: Path, done: Path, key_line: str | None) -> list[str]:
    """The same steps as shell lines for a sysadmin to run as root."""
    lines = ["As root on the tester, for the account the storer logs in as:"]
    lines += [f"  {step.shell}" for step in steps(user, root, queue, done, key_line)]
    if not key_line:
        lines.append(f"  (and put the course's authorized_keys line, which --add-tester prints, in ~{user}"
                     "/.ssh/authorized_keys; or give --storer-key FILE)")
    return lines + sshd_advice(user)
