"""``vmchecker-init-course``: create a course's folders (storer) or a tester's folders.

``storer DIR --course-id ID`` makes DIR/{repo,tests,keys}, a commented config.yaml,
sample build.sh/run.sh, the course's SSH key pair (for reaching testers) and an empty
known_hosts, and registers the course in the global config (creating that file, with
its ``daemon`` section: the one place for the daemon's address). ``--add-tester`` then
adds a tester (:mod:`vmchecker.storer.testers_admin`).
``tester DIR`` makes DIR/{queue,tmpunzip,done,state}, a commented config.yaml and the
tester's identity in queue/; with ``--user`` it also sets up the account the storer
logs in as (:mod:`vmchecker.tester.account`: done as root, else printed).

Safe to run twice: an existing config, script or key is never overwritten; the command
says what it kept. The config templates live in ``vmchecker/templates/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import logging
import os
import subprocess
import sys
from pathlib import Path
from string import Template

import yaml

from vmchecker import config, confparse, fsutil, tester_config
from vmchecker.cli import common
from vmchecker.errors import ConfigError, VmcheckerError
from vmchecker.storer import testers_admin
from vmchecker.tester import account

log = logging.getLogger(__name__)

PROG = "vmchecker-init-course"


def template(name: str) -> str:
    """The text of a file in vmchecker/templates/."""
    return importlib.resources.files("vmchecker").joinpath("templates", name).read_text(encoding="utf-8")


def _create(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write a new file; False (and untouched) if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        print(f"kept existing {path}")
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)
    print(f"created {path}")
    return True


def _mkdirs(root: Path, names: list[str], mode: int = 0o755) -> None:
    for name in ["", *names]:
        folder = root / name
        if folder.is_dir():
            continue
        folder.mkdir(mode=mode, parents=True)
        print(f"created {folder}/")


# --------------------------------------------------------------------------- storer


def course_config_text(course_id: str, today: dt.date | None = None) -> str:
    """A commented course config that loads as is: window from today for half a year,
    a sample assignment due in two weeks."""
    start = dt.datetime.combine(today or dt.date.today(), dt.time())
    return Template(template("course-config.yaml")).substitute(
        course_id=course_id,
        opens=confparse.format_datetime(start),
        closes=confparse.format_datetime(start + dt.timedelta(days=182, hours=23, minutes=59)),
        deadline=confparse.format_datetime(start + dt.timedelta(days=14, hours=23, minutes=55)),
    )


def _existing_course_id(path: Path) -> str | None:
    """The course id an existing config declares, if it can be read."""
    try:
        data = confparse.read_yaml(path)
    except ConfigError:
        return None
    course = data.get("course") if isinstance(data, dict) else None
    return str(course.get("id")) if isinstance(course, dict) and course.get("id") is not None else None


def _ssh_key(keys: Path, course_id: str) -> None:
    key = keys / "id_ed25519"
    pub = keys / "id_ed25519.pub"
    if key.exists():
        print(f"kept existing {key}")
        if not pub.exists():
            public = _ssh_keygen(["-y", "-f", str(key)])
            _create(pub, public)
        return
    if pub.exists():
        raise VmcheckerError(f"{pub} exists without its private key {key}: restore the key or remove {pub}")
    _ssh_keygen(["-q", "-t", "ed25519", "-N", "", "-C", f"vmchecker-{course_id}", "-f", str(key)])
    print(f"created {key} and {pub}")


def _ssh_keygen(args: list[str]) -> str:
    try:
        done = subprocess.run(["ssh-keygen", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise VmcheckerError("ssh-keygen not found: install openssh-client") from None
    if done.returncode != 0:
        raise VmcheckerError(f"ssh-keygen {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _read_global(path: Path) -> dict:
    if not path.exists():
        return {}
    data = confparse.read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping with 'courses'")
    courses = data.get("courses")
    if courses is not None and not isinstance(courses, dict):
        raise ConfigError(path, "courses", f"expected a mapping of course id to config file, got {courses!r}")
    return data


def _check_registration(glob: Path, course_id: str, course_config: Path) -> bool:
    """True if already registered to this config; refuse if registered elsewhere."""
    registered = (_read_global(glob).get("courses") or {}).get(course_id)
    if registered is None:
        return False
    if (glob.parent / str(registered)).resolve() == course_config.resolve():
        return True
    raise ConfigError(glob, f"courses.{course_id}",
                      f"course {course_id!r} is already registered to {registered}, not {course_config}")


def _register(glob: Path, course_id: str, course_config: Path) -> None:
    """Add the course to the global file, as a line under ``courses:`` (comments kept);
    a new file starts from the commented template, ``daemon:`` section included."""
    if _check_registration(glob, course_id, course_config):
        print(f"kept registration of {course_id} in {glob}")
        return
    text = glob.read_text(encoding="utf-8") if glob.exists() else template("global-config.yaml")
    data = confparse.safe_load(text) or {}
    expected = {**data, "courses": {**(data.get("courses") or {}), course_id: str(course_config)}}
    new_text = testers_admin.insert_entry_text(text, "courses", course_id, str(course_config))
    if new_text is None or confparse.safe_load(new_text) != expected:
        new_text = yaml.safe_dump(expected, sort_keys=False)
    glob.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(glob, new_text)
    print(f"registered {course_id} -> {course_config} in {glob}")


def init_storer(root: Path, course_id: str, global_path: Path | str | None = None) -> Path:
    """Create (or complete) a course folder and register it; returns its config path."""
    if not confparse.ID_RE.match(course_id):
        raise VmcheckerError(f"bad course id {course_id!r}: use letters, digits, '_', '-', '.'")
    root = Path(root).absolute()
    course_config = root / "config.yaml"
    glob = config.global_config_path(global_path)
    _check_registration(glob, course_id, course_config)  # refuse before creating anything
    declared = _existing_course_id(course_config) if course_config.exists() else None
    if declared is not None and declared != course_id:
        raise VmcheckerError(f"{course_config} is the config of course {declared!r}, not {course_id!r}")
    _mkdirs(root, ["repo", "tests"])
    _mkdirs(root, ["keys"], mode=0o700)
    _create(course_config, course_config_text(course_id))
    _create(root / "build.sh", template("build.sh"), 0o755)
    _create(root / "run.sh", template("run.sh"), 0o755)
    _ssh_key(root / "keys", course_id)
    _create(root / "keys" / "known_hosts", "")
    _register(glob, course_id, course_config)
    return course_config


# --------------------------------------------------------------------------- tester


def init_tester(root: Path, name: str = "tester", user: str | None = None, storer_key: Path | None = None) -> Path:
    """Create (or complete) a tester folder and publish its identity; with ``user``, set
    up that account for the storer as root, or print how. Returns its config path."""
    if not confparse.ID_RE.match(name):
        raise VmcheckerError(f"bad tester name {name!r}: use letters, digits, '_', '-', '.'")
    if user is not None and not config.USER_RE.match(user):
        raise VmcheckerError(f"bad user name {user!r}: lower-case letters, digits, '_' and '-'")
    key_line = _storer_key_line(storer_key) if storer_key else None
    root = Path(root).absolute()
    _mkdirs(root, ["queue", "tmpunzip", "done", "state"])
    path = root / "config.yaml"
    _create(path, Template(template("tester-config.yaml")).substitute(name=name))
    cfg = tester_config.load_tester(path)  # an edited, broken config is reported now
    print(f"wrote {cfg.publish_identity()} (name {cfg.tester.name}, {cfg.tester.slots} slot(s))")
    args = (user or "USER", root, cfg.queue_dir, cfg.done_dir, key_line)
    if user is not None and os.geteuid() == 0:
        lines = account.set_up(*args)
    else:
        lines = account.recipe(*args)
    print("\n".join(lines))
    return path


def _storer_key_line(path: Path) -> str:
    """The authorized_keys line for the course's public key in ``path`` (SFTP only)."""
    try:
        public = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise VmcheckerError(f"--storer-key {path}: {exc.strerror}") from None
    parts = public.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise VmcheckerError(f"--storer-key {path}: not an OpenSSH public key (the course's keys/id_ed25519.pub)")
    return testers_admin.authorized_keys_line(public)


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Create the folders and a commented config of a course (storer) or a tester.")
    sub = p.add_subparsers(dest="kind", required=True, metavar="{storer,tester}")
    storer = sub.add_parser("storer", help="a course folder on the storer, registered in the global config")
    storer.add_argument("dir", metavar="DIR", type=Path)
    storer.add_argument("--course-id", required=True, metavar="ID")
    storer.add_argument("--add-tester", nargs=4, metavar=("NAME", "HOST[:PORT]", "USER", "QUEUE"),
                        help="also add a tester: record its SSH host key in keys/known_hosts, learn its slots"
                             " from it (its name there must be NAME), add it under testers: and to each machine"
                             " with no testers, and print the public key to install on it")
    tester = sub.add_parser("tester", help="a tester's folder (queue, work, done, state)")
    tester.add_argument("dir", metavar="DIR", type=Path)
    tester.add_argument("--name", default="tester",
                        help="the tester's name, as the course's testers: entry names it (default: tester)")
    tester.add_argument("--user", metavar="NAME",
                        help="the account the storer logs in as: as root, create it if missing, unlock it for"
                             " key logins, install --storer-key, give it queue/ and done/; otherwise print"
                             " the commands")
    tester.add_argument("--storer-key", metavar="FILE", type=Path,
                        help="the course's public key (keys/id_ed25519.pub on the storer), for the account's"
                             " authorized_keys, restricted to SFTP")
    return p


def work(args: argparse.Namespace) -> int:
    if args.kind == "storer":
        path = init_storer(args.dir, args.course_id, args.config)
        config.load_course(path)  # an edited, broken config is reported now
        if args.add_tester:
            name, address, user, queue = args.add_tester
            try:
                host, port = confparse.parse_host_port(address, default_port=22)
            except ValueError as exc:
                raise VmcheckerError(f"--add-tester: {exc}") from None
            print(testers_admin.add_tester(path.parent, name, host, port, user, queue))
        print(f"course {args.course_id} is ready: edit {path}")  # last: a command that failed never says it
    else:
        path = init_tester(args.dir, args.name, args.user, args.storer_key)
        print(f"tester is ready: edit {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
