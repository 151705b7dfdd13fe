"""Adding a tester to a course: its host key, its config entry, the key it must trust.

Behind ``vmchecker-init-course --add-tester NAME HOST[:PORT] USER QUEUE``. The
storer trusts a tester only through the course's known_hosts, so adding one means:
read its host key once (the admin checks the fingerprint), record it (never
replacing a different key already recorded for that host: that is a reinstall or
an attack, and a human decides), learn the tester's own name and slots when the
course key already logs in (refusing a tester that calls itself by another name),
list the tester under ``testers:`` in the course config and in every machine whose
``testers`` list is still empty (a fresh course's), and tell the admin which
authorized_keys line to install on the tester.

The config is edited as text so comments and layout survive: the new entry is
one flow-style line appended to the ``testers:`` block (or a new block at the
end), and an empty ``testers: []`` of a machine becomes ``testers: [NAME]``. The
result is checked to parse to exactly the old data plus these changes
and to load as a course config. When the text cannot be edited safely (e.g. the
block is written in flow style), the file is copied to ``config.yaml.bak`` and
rewritten from the data, which loses its comments; the returned text says so.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import paramiko
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.hostkeys import HostKeyEntry

from vmchecker import config
from vmchecker.contract import TESTER_INFO
from vmchecker.errors import ConfigError, TransportError, VmcheckerError
from vmchecker.fsutil import locked, write_atomic
from vmchecker.paramiko_compat import fingerprint, load_private_key
from vmchecker.storer.transport import CONNECT_TIMEOUT, TesterLink, fetch_host_key, known_hosts_entry
from vmchecker.tester_config import TesterSettings, parse_identity

log = logging.getLogger(__name__)

# The storer only needs SFTP on a tester: no shell, no forwarding, no pty.
AUTHORIZED_KEY_OPTIONS = 'restrict,command="internal-sftp"'

_EMPTY_LIST = re.compile(r"^(?P<indent>[ \t]+)testers:[ \t]*\[\](?P<rest>[^\n]*\n?)$")


# --------------------------------------------------------------------------- keys


def ensure_course_key(key_path: Path, comment: str) -> str:
    """The course's public key line, generating an ed25519 key pair if none exists."""
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        write_atomic(key_path, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), 0o600)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        write_atomic(key_path.with_name(key_path.name + ".pub"), f"{public} {comment}\n")
        log.info("generated the course key %s", key_path)
    try:
        key = load_private_key(key_path)
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise VmcheckerError(f"cannot read the course's private key {key_path}: {exc}") from None
    return f"{key.get_name()} {key.get_base64()} {comment}"


def authorized_keys_line(public_line: str) -> str:
    """The line a tester's account puts in ``~/.ssh/authorized_keys``: SFTP only."""
    return f"{AUTHORIZED_KEY_OPTIONS} {public_line}"


def _fingerprint(line: str) -> str:
    entry = HostKeyEntry.from_line(line)
    return f"{entry.key.get_name()} {fingerprint(entry.key)}"


def record_host_key(known_hosts: Path, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> tuple[str, bool]:
    """Read the host key of ``host:port`` and make sure ``known_hosts`` has it.

    Returns (its known_hosts line, True if it was added / False if already there).
    A different key already recorded for that host is refused with TransportError."""
    entry = known_hosts_entry(host, port)
    recorded = None
    if known_hosts.exists():
        try:
            recorded = paramiko.HostKeys(str(known_hosts)).lookup(entry)
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"cannot read known_hosts {known_hosts}: {exc}") from None
    if recorded:
        kind = recorded.keys()[0]
        line = fetch_host_key(host, port, timeout, key_type=kind)
        offered = HostKeyEntry.from_line(line).key
        if recorded.get(offered.get_name()) != offered:
            raise TransportError(
                f"{entry} offers {offered.get_name()} {fingerprint(offered)}, but {known_hosts} already records"
                f" {recorded[kind].get_name()} {fingerprint(recorded[kind])} for it: refusing to replace it;"
                " if the tester was reinstalled, remove its line from that file by hand and add it again")
        return line, False
    line = fetch_host_key(host, port, timeout)
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = known_hosts.read_text() if known_hosts.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_atomic(known_hosts, old + line + "\n", 0o644)
    log.info("recorded the host key of %s in %s", entry, known_hosts)
    return line, True


# --------------------------------------------------------------------------- config


def _entry_line(name: str, body: dict[str, Any]) -> str:
    flow = yaml.safe_dump({name: body}, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return flow[1:-1]  # "{t2: {host: ...}}" -> "t2: {host: ...}"


def insert_tester_text(text: str, name: str, body: dict[str, Any]) -> str | None:
    """``text`` with ``name: body`` added under the top-level ``testers:`` block,
    comments untouched; None when the block is in a form this cannot edit."""
    return insert_entry_text(text, "testers", name, body)


def insert_entry_text(text: str, section: str, name: str, body: Any) -> str | None:
    """``text`` with ``name: body`` added under the top-level ``section:`` block (a
    mapping), comments untouched; None when the block is in a form this cannot edit."""
    entry = _entry_line(name, body)
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if re.match(rf"^{section}[ \t]*:", line)), None)
    if header is None:
        sep = "\n" if text and not text.endswith("\n") else ""
        return f"{text}{sep}{section}:\n  {entry}\n"
    match = re.match(rf"^{section}:[ \t]*(?P<empty>\{{\}}|null|~)?[ \t]*(?P<comment>#.*)?$",
                     lines[header].rstrip("\r\n"))
    if not match:
        return None  # e.g. "testers: {t1: {...}}"
    last, indent = header, None
    for i in range(header + 1, len(lines)):
        raw = lines[i].rstrip("\r\n")
        if not raw.strip() or raw.startswith("#"):
            continue  # blank lines and top-level comments do not end the block, nor extend it
        if raw[0] not in " \t":
            break
        if indent is None and not raw.lstrip().startswith("#"):
            indent = raw[: len(raw) - len(raw.lstrip())]
        last = i
    if match.group("empty") and last != header:
        return None
    if match.group("empty"):
        comment = match.group("comment")
        lines[header] = f"{section}:" + (f"  {comment}" if comment else "") + "\n"
    if not lines[last].endswith("\n"):
        lines[last] += "\n"
    lines.insert(last + 1, f"{indent or '  '}{entry}\n")
    return "".join(lines)


def fill_machine_testers_text(text: str, name: str) -> str:
    """``text`` with each ``testers: []`` of the top-level ``machines:`` block made
    ``testers: [NAME]`` (comments after it kept)."""
    listed = yaml.safe_dump([name], default_flow_style=True).strip()
    lines = text.splitlines(keepends=True)
    in_machines = False
    for i, line in enumerate(lines):
        if line.strip() and line[0] not in " \t#":
            in_machines = bool(re.match(r"^machines[ \t]*:", line))
            continue
        match = _EMPTY_LIST.match(line) if in_machines else None
        if match:
            lines[i] = f"{match['indent']}testers: {listed}{match['rest']}"
    return "".join(lines)


def _unserved_machines(data: dict[str, Any]) -> list[str]:
    """The machines whose ``testers`` list is written and empty (a fresh course's)."""
    machines = data.get("machines") or {}
    return [str(m) for m, body in machines.items()
            if isinstance(body, dict) and isinstance(body.get("testers"), list) and not body["testers"]]


def _check_candidate(config_path: Path, text: str) -> None:
    """Load ``text`` as this course's config (same folder, so paths resolve the same)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{config_path.name}.", suffix=".new", dir=config_path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            config.load_course(tmp)
        except ConfigError as exc:
            raise ConfigError(config_path, exc.key, f"{exc.reason} (after adding the tester; file unchanged)") from None
    finally:
        os.unlink(tmp)


def add_tester_to_config(config_path: Path, name: str, body: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """Add ``testers.NAME`` to the course config, and NAME to each machine whose
    ``testers`` list is empty; returns the backup path if the file had to be rewritten
    (comments lost), else None, and the machines that now list the tester."""
    text = config_path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    expected = copy.deepcopy(data)
    expected["testers"] = {**(expected.get("testers") or {}), name: body}
    served = _unserved_machines(data)
    for machine in served:
        expected["machines"][machine]["testers"] = [name]
    new_text = insert_tester_text(text, name, body)
    if new_text is not None and served:
        new_text = fill_machine_testers_text(new_text, name)
    if new_text is not None:
        try:
            if yaml.safe_load(new_text) != expected:
                new_text = None
        except yaml.YAMLError:
            new_text = None
    backup = None
    if new_text is None:
        new_text = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
        backup = config_path.with_name(config_path.name + ".bak")
        n = 1
        while backup.exists():
            backup = config_path.with_name(f"{config_path.name}.bak.{n}")
            n += 1
    _check_candidate(config_path, new_text)
    if backup is not None:
        shutil.copy2(config_path, backup)
        log.warning("%s: rewrote the file to add tester %s; the original is in %s", config_path, name, backup)
    write_atomic(config_path, new_text, config_path.stat().st_mode & 0o777)
    return backup, served


def learn_tester(name: str, host: str, port: int, user: str, queue: str, key_path: Path, known_hosts: Path,
                 timeout: float = CONNECT_TIMEOUT) -> tuple[int | None, str]:
    """The slots a tester runs, read from its queue/TESTER_INFO with the course key
    (None when it cannot be read yet), and a line saying where the value came from.
    A tester that calls itself by another name is refused with both names."""
    link = TesterLink(name, host, port, user, key_path, known_hosts, queue=queue, connect_timeout=timeout)
    try:
        raw = link.read_info()
    except TransportError as exc:
        return None, f"could not read the tester's settings yet: {exc.message}"
    finally:
        link.close()
    info = None if raw is None else parse_identity(raw)
    if info is None:
        return None, (f"the tester has no valid {queue}/{TESTER_INFO} yet"
                      " (vmchecker-init-course tester and its queue manager write it)")
    if info["name"] != name:
        raise ConfigError(info.get("config", f"{host}:{TESTER_INFO}"), "tester.name",
                          f"the tester at {host}:{port} calls itself {info['name']!r}, not {name!r}: add it as"
                          f" {info['name']!r}, or change its tester.name to {name!r}")
    return info["slots"], f"slots learned from the tester ({info.get('config', TESTER_INFO)})"


# --------------------------------------------------------------------------- the command's work


def add_tester(course_root: Path | str, name: str, host: str, port: int, user: str, queue: str, *,
               slots: int | None = None, timeout: float = CONNECT_TIMEOUT) -> str:
    """Add tester ``name`` to the course in ``course_root`` (its folder or config.yaml).

    Records the tester's host key in the course's known_hosts, generates the course
    key if there is none, learns the tester's slots from the tester when the course
    key logs in already (``slots``, if given, must agree; else, when the tester cannot
    be read yet, a tester's default is written and the daemon checks it later), adds it
    under ``testers:`` and to every machine without testers, and returns the text to
    show the admin: the host key fingerprint and the exact authorized_keys line to
    install for ``user`` on the tester."""
    path = Path(course_root)
    config_path = path / "config.yaml" if path.is_dir() else path
    course = config.load_course(config_path)
    if name in course.testers:
        raise ConfigError(course.path, f"testers.{name}", "a tester of this name already exists")
    if not 0 < port < 65536:
        raise ConfigError(course.path, f"testers.{name}.port", f"bad port {port}")
    if not user or not queue:
        raise ConfigError(course.path, f"testers.{name}", "the tester needs a user and a queue folder")
    known_hosts = course.resolve(course.storer.known_hosts)
    key_path = course.resolve(course.storer.ssh_key)
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold the private key
    with locked(known_hosts.parent / ".add-tester.lock"):
        line, added = record_host_key(known_hosts, host, port, timeout)
        public = ensure_course_key(key_path, f"vmchecker-{course.id}")
        learned, source = learn_tester(name, host, port, user, queue, key_path, known_hosts, timeout)
        if learned is not None and slots is not None and learned != slots:
            raise ConfigError(course.path, f"testers.{name}.slots",
                              f"asked for {slots} slot(s) but the tester runs {learned} ({source}):"
                              " change tester.slots there, or add it without --slots")
        if learned is None:
            source += f"; wrote {slots or TesterSettings.slots} slot(s), which the daemon checks once it can"
        slots = learned or slots or TesterSettings.slots
        body = {"host": host, "port": port, "user": user, "queue": queue, "slots": slots}
        backup, served = add_tester_to_config(course.path, name, body)
    notes = [
        f"Tester {name} added to {course.path}: {user}@{host}:{port}, queue {queue}, {slots} slot(s).",
        f"  ({source})",
        f"Host key {'recorded in' if added else 'already in'} {known_hosts}: {_fingerprint(line)}",
        "  (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the tester)",
    ]
    if backup:
        notes.append(f"The config was rewritten (its comments are lost); the original is in {backup}.")
    notes += [
        f"Course public key ({key_path}.pub): {public}",
        f"On the tester, ~{user}/.ssh/authorized_keys must hold this line"
        " (vmchecker-init-course tester DIR --user USER --storer-key FILE writes it):",
        authorized_keys_line(public),
    ]
    if served:
        notes.append(f"Listed under the testers of machine {', '.join(served)}: it gets its jobs.")
    else:
        notes.append(f"Then list {name} under machines.<machine>.testers to give it work.")
    return "\n".join(notes) + "\n"
