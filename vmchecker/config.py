"""The configuration schema: which keys each file has, and how the files fit together.

Three kinds of file (docs/ARCHITECTURE.md, "On disk"):

* the global file (``$VMCHECKER_CONFIG``, default ``/etc/vmchecker/config.yaml``)
  maps course ids to course config files;
* a course config (storer side): ``course``, ``storer``, ``testers``, ``machines``,
  ``assignments`` with a ``defaults`` block (:mod:`vmchecker.assignments`); who takes
  part in the course is checked and asked by :mod:`vmchecker.course_access`, who submits
  together by :mod:`vmchecker.teams` (``teams``, merged with ``teams.yaml`` beside it);
* a tester config: ``tester`` and per-machine instance overrides
  (:mod:`vmchecker.tester_config`).

Each file is loaded once into typed, frozen objects. The dataclasses here are the
schema; :mod:`vmchecker.confparse` fills them from safe YAML and names the file and key
path of any problem. The checks here are the ones a type cannot say: ids, references
between sections, ranges. Key names are part of the contract: add keys, never rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmchecker import course_access, teams
from vmchecker.assignments import Assignment, load_assignments
from vmchecker.confparse import Size, When, build, check_id, parse_host_port, read_yaml
from vmchecker.course_access import GroupCheck
from vmchecker.errors import ConfigError, NotFound

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

DEFAULT_GLOBAL_CONFIG = "/etc/vmchecker/config.yaml"
MACHINE_TYPES = ("lxc", "kvm", "vmware", "docker")
VMWARE_REVERTS = ("snapshot", "linked-clone")
SCHEDULERS = ("estimate", "fewest")   # storer.scheduler: how the daemon picks a tester (storer/scheduler.py)
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # a guest user name, as useradd takes it


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Holiday:
    """A break in ``course.holidays``: time inside it does not count toward a submission's lateness."""
    start: When
    end: When


@dataclass(frozen=True)
class CourseInfo:
    """The ``course`` section: who the course is, when it takes uploads, who takes part."""
    id: str
    name: str = ""
    repository: str = "repo"
    upload_active_from: When | None = None
    upload_active_until: When | None = None
    holidays: list[Holiday] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)
    public_results: bool = False
    # Who takes part (sees the course, uploads): the admins and the students named by
    # the next three keys; nobody else, unless open_to_all_users (course_access.admits).
    students: list[str] = field(default_factory=list)
    students_file: str = ""             # one account per line, relative to the course folder
    students_ldap_group: str = ""       # a group's DN, looked up through vmchecker-web's LDAP
    open_to_all_users: bool = False
    # Disk one account's submissions may take in this course, all assignments together
    # (archives, unpacked files, results); 0: no limit. Checked at every upload.
    max_account_storage: Size = Size(0)


@dataclass(frozen=True)
class StorerSettings:
    """The ``storer`` section: how the course's daemon reaches and picks its testers."""
    # Where testers call notify() and local commands queue_task(). Empty (the default):
    # the URL of the global file's daemon.listen, so the address is written in one place;
    # the daemon refuses a course whose value does not reach its listen address.
    daemon: str = ""
    ssh_key: str = "keys/id_ed25519"
    known_hosts: str = "keys/known_hosts"
    queue_task_from: list[str] = field(default_factory=list)
    max_attempts: int = 3
    retry_delay: float = 30.0
    failure_penalty_factor: float = 10.0
    notify_margin: int = 60
    # How a tester is picked: estimate (the tester expected to finish the job first, from
    # measured times) or fewest (the fewest jobs in flight, as the original vmchecker did).
    scheduler: str = "estimate"


@dataclass(frozen=True)
class Tester:
    """A tester under ``testers``: the host that runs jobs, its queue folder and slots."""
    name: str
    host: str
    user: str
    queue: str
    port: int = 22
    slots: int = 1
    done: str = ""


@dataclass(frozen=True)
class Limits:
    """A machine's ``limits``: what one job may use in its guest."""
    memory_mb: int = 512
    pids: int = 256
    cpus: float = 1.0
    output_kb: int = 1024
    disk_mb: int = 1024          # what one job may write in its guest (clone, overlay)


@dataclass(frozen=True)
class Machine:
    """One kind of guest. The storer only reads ``type`` and ``testers``; the rest
    travels in the bundle to the tester's executor."""

    name: str
    type: str
    vm: str = ""                            # required by every type but docker (which names an image)
    testers: list[str] = field(default_factory=list)
    snapshot: str = "clean"
    guest_user: str = "root"
    guest_base_path: str = "/vmchecker"     # job/, course/, results/ below it (executor/payload.py)
    guest_shell: str = "/bin/bash"
    # The unprivileged guest user that runs the build and every program the tests
    # start: student code never runs as the identity that owns the course's files.
    student_user: str = "student"
    build_script: str = "build.sh"
    run_script: str = "run.sh"
    # Optional: a script run on the tester after the guest is gone, sandboxed, that
    # reads the run's outputs and writes the grade lines (courses whose tests need
    # root in the guest). Empty: no check step.
    check_script: str = ""
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    kernel_messages: list[str] = field(default_factory=list)
    host_commands: list[str] = field(default_factory=list)
    boot_timeout: int = 120
    # kvm only
    domain_type: str = "auto"
    revert: str = "snapshot"
    keep_failed: bool = False
    channel: str = "agent"
    base_image: str = ""
    # vmware only (revert: snapshot | linked-clone, keep_failed too; executor/vmware.py).
    # The password is never in a config: vmware_credentials names a file on the tester
    # (mode 0600) whose first line is the vSphere password and whose second line, if
    # any, is guest_user's password in the guest (for the guest operations).
    vmware_url: str = ""                    # https://vcenter.example.org/sdk
    vmware_user: str = ""
    vmware_credentials: str = ""
    vms: list[str] = field(default_factory=list)   # revert: snapshot: one VM per slot; empty: [vm]
    # docker only: the image each job's fresh container is made from
    image: str = ""


@dataclass(frozen=True)
class CourseConfig:
    """A whole course config; paths in it are relative to ``root``."""

    path: Path
    course: CourseInfo
    storer: StorerSettings
    testers: dict[str, Tester]
    machines: dict[str, Machine]
    assignments: dict[str, Assignment]
    # course.students and the accounts of course.students_file, read when the config loads
    listed_students: frozenset[str] = frozenset()
    # teams: of this file and teams.yaml beside it (vmchecker.teams): who submits together
    teams: teams.Teams = field(default_factory=teams.Teams)

    @property
    def id(self) -> str:
        return self.course.id

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the course folder unless absolute."""
        return self.root / relative

    @property
    def repository(self) -> Path:
        return self.resolve(self.course.repository)

    @property
    def database(self) -> Path:
        return self.root / "vmchecker.db"

    def tests_archive(self, assignment: str) -> Path:
        return self.root / "tests" / f"{assignment}.zip"

    def assignment(self, assignment_id: str) -> Assignment:
        try:
            return self.assignments[assignment_id]
        except KeyError:
            raise NotFound(
                f"course {self.id!r} has no assignment {assignment_id!r}"
                f" (known: {', '.join(sorted(self.assignments)) or 'none'})"
            ) from None

    def is_admin(self, account: str) -> bool:
        return account in self.course.admins

    def admits(self, account: str, in_group: GroupCheck | None = None) -> bool:
        """May ``account`` see this course and upload to it (:func:`course_access.admits`)?"""
        return course_access.admits(self.course, self.listed_students, account, in_group)


@dataclass(frozen=True)
class DaemonSettings:
    """The global file's ``daemon`` section: where the storer daemon listens and keeps state."""
    listen: str = "127.0.0.1:19999"
    state: str = "/var/lib/vmchecker"
    # HOST:PORT to serve Prometheus metrics on (vmchecker/storer/metrics.py), apart from
    # listen; empty: no metrics. No authentication: loopback or an internal address.
    metrics_listen: str = ""


@dataclass(frozen=True)
class GlobalConfig:
    """The global file: the registered courses and the daemon."""
    path: Path
    courses: dict[str, Path]
    daemon: DaemonSettings

    @property
    def daemon_url(self) -> str:
        """The daemon's URL, from ``daemon.listen``: what a course without
        ``storer.daemon`` uses."""
        try:
            return daemon_url(self.daemon.listen)
        except ValueError as exc:
            raise ConfigError(self.path, "daemon.listen", str(exc)) from None

    def course_path(self, course_id: str) -> Path:
        try:
            return self.courses[course_id]
        except KeyError:
            raise NotFound(
                f"{self.path}: no course {course_id!r}"
                f" (known: {', '.join(sorted(self.courses)) or 'none'})"
            ) from None


# --------------------------------------------------------------------------- loading


def machine_to_dict(machine: Machine) -> dict[str, Any]:
    """A machine as plain data (for the bundle's submission-config)."""
    return dataclasses.asdict(machine)


def parse_machine(data: Any, file: Path | str, key: str = "machine") -> Machine:
    """Validate a machine section (from a course config or a bundle)."""
    if isinstance(data, dict) and "vmware_password" in data:
        raise ConfigError(file, f"{key}.vmware_password",
                          "a password does not belong in a config: put it in a file on each tester"
                          " (chmod 600) and name that file in vmware_credentials (INSTALL, 'VMware')")
    machine = build(Machine, data, Path(file), key)
    if machine.type not in MACHINE_TYPES:
        raise ConfigError(file, f"{key}.type",
                          f"unknown machine type {machine.type!r} (known: {', '.join(MACHINE_TYPES)})")
    if not USER_RE.match(machine.student_user):
        raise ConfigError(file, f"{key}.student_user",
                          f"bad user name {machine.student_user!r}: lower-case letters, digits, '_' and '-'")
    if machine.type != "docker" and not machine.vm:
        raise ConfigError(file, f"{key}.vm", "missing required key")
    if machine.type == "docker" and not machine.image:
        raise ConfigError(file, f"{key}.image", "a docker machine needs the image its jobs run in"
                          " (such as vmchecker-base:latest, made by lxc-resources/docker-image.sh)")
    if machine.limits.disk_mb < 1:
        raise ConfigError(file, f"{key}.limits.disk_mb", "must be at least 1")
    if machine.type == "vmware" and machine.revert not in VMWARE_REVERTS:
        raise ConfigError(file, f"{key}.revert", f"a vmware machine reverts by {' or '.join(VMWARE_REVERTS)},"
                          f" not {machine.revert!r}")
    if machine.student_user in ("root", machine.guest_user or "root") and not machine.check_script:
        raise ConfigError(file, f"{key}.student_user",
                          f"{machine.student_user!r} is the trusted guest user: the student's code could write"
                          " its own grade; use an unprivileged user, or give the machine a check_script"
                          " (INSTALL, 'How a grade is earned')")
    return machine


def _named(cls: type, section: Any, file: Path, key: str, what: str) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(file, key, f"expected a mapping of {what} names, got {section!r}")
    out = {}
    for name, body in section.items():
        name = str(name)
        check_id(name, file, f"{key}.{name}", f"{what} name")
        if body is not None and not isinstance(body, dict):
            raise ConfigError(file, f"{key}.{name}", f"expected a mapping, got {body!r}")
        out[name] = build(cls, {**(body or {}), "name": name}, file, f"{key}.{name}")
    return out


def load_course(path: Path | str) -> CourseConfig:
    """Load and validate a course config."""
    path = Path(path).absolute()
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping with course, storer, testers, machines, assignments")
    known = ("course", "storer", "testers", "machines", "assignments", "teams")
    for k in data:
        if k not in known:
            raise ConfigError(path, str(k), f"unknown key (known keys here: {', '.join(known)})")
    if "course" not in data:
        raise ConfigError(path, "course", "missing required key")
    course = build(CourseInfo, data["course"], path, "course")
    check_id(course.id, path, "course.id", "course id")
    for i, h in enumerate(course.holidays):
        if h.end < h.start:
            raise ConfigError(path, f"course.holidays[{i}]", "end is before start")
    storer = build(StorerSettings, data.get("storer"), path, "storer")
    for i, entry in enumerate(storer.queue_task_from):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(path, f"storer.queue_task_from[{i}]",
                              f"{entry!r} is not an IP address or network (such as 10.0.0.5 or 10.0.0.0/24)") from None
    if storer.scheduler not in SCHEDULERS:
        raise ConfigError(path, "storer.scheduler",
                          f"unknown scheduler {storer.scheduler!r} (known: {', '.join(SCHEDULERS)})")
    testers = _named(Tester, data.get("testers"), path, "testers", "tester")
    for t in testers.values():
        if t.slots < 1:
            raise ConfigError(path, f"testers.{t.name}.slots", "must be at least 1")
    machines: dict[str, Machine] = {}
    section = data.get("machines") or {}
    if not isinstance(section, dict):
        raise ConfigError(path, "machines", f"expected a mapping of machine names, got {section!r}")
    for name, body in section.items():
        name = str(name)
        check_id(name, path, f"machines.{name}", "machine name")
        if body is not None and not isinstance(body, dict):
            raise ConfigError(path, f"machines.{name}", f"expected a mapping, got {body!r}")
        machine = parse_machine({**(body or {}), "name": name}, path, f"machines.{name}")
        for i, tester in enumerate(machine.testers):
            if tester not in testers:
                raise ConfigError(path, f"machines.{name}.testers[{i}]",
                                  f"names tester {tester!r}, which is not under testers")
        machines[name] = machine
    assignments = load_assignments(data.get("assignments"), path, machines)
    listed = course_access.load_students(course, path)
    course_teams = teams.load(data.get("teams"), path, assignments, {*course.admins, *listed})
    return CourseConfig(path, course, storer, testers, machines, assignments, listed, course_teams)


def global_config_path(path: Path | str | None = None) -> Path:
    return Path(path or os.environ.get("VMCHECKER_CONFIG") or DEFAULT_GLOBAL_CONFIG).absolute()


def load_global(path: Path | str | None = None) -> GlobalConfig:
    """Load the global file: ``courses: {id: path}`` and optional ``daemon``."""
    path = global_config_path(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping with 'courses'")
    for k in data:
        if k not in ("courses", "daemon"):
            raise ConfigError(path, str(k), "unknown key (known keys here: courses, daemon)")
    courses_raw = data.get("courses") or {}
    if not isinstance(courses_raw, dict):
        raise ConfigError(path, "courses", f"expected a mapping of course id to config file, got {courses_raw!r}")
    courses = {}
    for cid, cpath in courses_raw.items():
        check_id(str(cid), path, f"courses.{cid}", "course id")
        if not isinstance(cpath, str):
            raise ConfigError(path, f"courses.{cid}", f"expected a path, got {cpath!r}")
        courses[str(cid)] = (path.parent / cpath)
    daemon = build(DaemonSettings, data.get("daemon"), path, "daemon")
    check_metrics_listen(daemon.metrics_listen, daemon.listen, path, "daemon")
    return GlobalConfig(path, courses, daemon)


def check_metrics_listen(value: str, other: str, file: Path, section: str) -> None:
    """A ``metrics_listen``: empty (no metrics) or a ``HOST:PORT`` other than ``other``
    (the daemon's XML-RPC address, which it would collide with)."""
    if not value:
        return
    key = f"{section}.metrics_listen"
    try:
        address = parse_host_port(value)
    except ValueError as exc:
        raise ConfigError(file, key, f"{exc} (or empty: no metrics)") from None
    with contextlib.suppress(ValueError):   # a bad listen is reported as such, elsewhere
        if other and address[1] and address == parse_host_port(other):
            raise ConfigError(file, key, f"{value} is {section}.listen too: give the metrics their own port")


def find_course(course_id: str, global_path: Path | str | None = None) -> CourseConfig:
    """Load the course registered as ``course_id`` in the global file."""
    glob = load_global(global_path)
    config = load_course(glob.course_path(course_id))
    if config.id != course_id:
        raise ConfigError(config.path, "course.id",
                          f"is {config.id!r} but {glob.path} registers this file as {course_id!r}")
    if not config.storer.daemon:
        try:
            config = with_daemon_url(config, glob.daemon_url)
        except ConfigError as exc:  # only a call to the daemon needs it, and fails saying so
            log.debug("course %s has no daemon URL: %s", course_id, exc.message)
    return config


# --------------------------------------------------------------------------- the daemon's address

WILDCARD_HOSTS = ("0.0.0.0", "::")


def daemon_url(listen: str) -> str:
    """``http://HOST:PORT/`` for a listen address ``HOST:PORT``. ValueError for a bad
    address or a wildcard host, which no client can call."""
    host, port = parse_host_port(listen)
    if host in WILDCARD_HOSTS:
        raise ValueError(f"{listen} listens on every address, so it does not say which one testers call:"
                         " listen on the address they reach, or set storer.daemon in each course")
    return f"http://{join_host_port(host, port)}/"


def join_host_port(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets: the inverse of parse_host_port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def with_daemon_url(config: CourseConfig, url: str) -> CourseConfig:
    """``config`` with ``storer.daemon`` set to ``url``."""
    return dataclasses.replace(config, storer=dataclasses.replace(config.storer, daemon=url))
