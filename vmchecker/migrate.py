"""Translate an original vmchecker INI course config into our YAML course config.

The original (POLITEHNICA vmchecker) kept a course in one INI file read with
RawConfigParser: option names are case-insensitive, ``[DEFAULT]`` applies to every
section, and ``[assignment DEFAULT]`` / ``[tester DEFAULT]`` to every assignment /
tester. Sections:

* ``[vmchecker]``: root, repository, CourseName, UploadActiveFrom/Until, Holidays with
  HolidayStart/HolidayFinish (``a , b`` lists), PublicResults, AdminList and, in old
  files, PenaltyWeights/PenaltyLimit for every assignment;
* ``[storer]``: Hostname, Username, SSHId, KnownHostsFile;
* ``[tester ID]``: Hostname, Username, QueuePath (and VMware server settings);
* ``[assignment ID]``: Deadline, Machine, Timeout, TotalPoints, PenaltyWeights, ...;
* any other section is a machine: Type, VMPath, Testers, GuestUser, ...

Dates were ``YYYY.MM.DD HH:MM:SS``. Where the original's default differs from ours
(PublicResults and ShowGradesBeforeDeadline defaulted to yes) the YAML says so
explicitly, so the migrated course behaves as before. Every key that has no YAML
counterpart, or that we do not know, comes back as a warning: nothing is dropped
silently.
"""

from __future__ import annotations

import configparser
import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmchecker.confparse import DATE_FORMAT, ID_RE
from vmchecker.errors import ConfigError

log = logging.getLogger(__name__)

OLD_DATE_FORMATS = ("%Y.%m.%d %H:%M:%S", DATE_FORMAT, "%Y.%m.%d %H:%M", "%Y-%m-%d %H:%M")
_NO_DEFAULT = "\x00no default section"


_MISSING = object()


class _Bad(ValueError):
    """A value that does not convert. Private: it never leaves this module, where it becomes
    a warning naming the key and the raw text is copied as is (not an error a user sees)."""


# --------------------------------------------------------------------------- values


def _date(text: str) -> str:
    for fmt in OLD_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text.strip(), fmt).strftime(DATE_FORMAT)
        except ValueError:
            continue
    raise _Bad(f"bad date {text!r}: expected YYYY.MM.DD HH:MM:SS")


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _Bad(f"expected an integer, got {text!r}") from None


def _number(text: str) -> int | float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _Bad(f"expected a number, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _bool(text: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    try:
        return states[text.strip().lower()]
    except KeyError:
        raise _Bad(f"expected yes/no, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text.strip()) if w]


def _numbers(text: str) -> list[int | float]:
    return [_number(w) for w in _words(text)]


def _vmrs(text: str) -> list[str]:
    return re.findall(r"[\w-]+\.vmr", text)


def _str(text: str) -> str:
    return text.strip()


# --------------------------------------------------------------------------- key tables

@dataclass(frozen=True)
class Key:
    """Where an old key goes: ``target`` (a key name in our section) and a converter."""

    target: str
    convert: Callable[[str], Any] = _str


@dataclass(frozen=True)
class Drop:
    """An old key with no YAML counterpart, and why; ``quiet`` values (such as
    ``KernelMessages = 0``) lose nothing, so they are dropped without a warning."""

    reason: str
    quiet: tuple[str, ...] = ()


# keys read together with others (Holidays + HolidayStart + HolidayFinish, the old
# [vmchecker] penalty, a tester's VMware server): consumed by hand, never reported
_HANDLED = Drop("handled with related keys")
_INCLUDE = Drop("bundles are built by the storer")

_VMCHECKER: dict[str, Key | Drop] = {
    "root": Drop("the course root is the folder of the YAML file"),
    "coursename": Key("name"),
    "repository": Key("repository"),
    "uploadactivefrom": Key("upload_active_from", _date),
    "uploadactiveuntil": Key("upload_active_until", _date),
    "publicresults": Key("public_results", _bool),
    "adminlist": Key("admins", _words),
    "holidays": _HANDLED,
    "holidaystart": _HANDLED,
    "holidayfinish": _HANDLED,
    "penaltyweights": _HANDLED,
    "penaltylimit": _HANDLED,
    "rootqueue": Drop("belongs to the tester's config (tester.queue)"),
    "executortimeout": Drop("belongs to the tester's config (tester.executor_timeout)"),
    "numworkers": Drop("belongs to the tester's config (tester.slots)"),
    "duplicatedvms": Drop("belongs to the tester's config"),
}
_STORER: dict[str, Key | Drop] = {
    "hostname": Drop("the storer is the machine that runs the course"),
    "username": Drop("the storer is the machine that runs the course"),
    "sshid": Key("ssh_key"),
    "knownhostsfile": Key("known_hosts"),
}
_VMWARE_SERVER = {"vmwareurl": "vmware_url", "vmwareusername": "vmware_user"}
# The password goes into no YAML: the sysadmin puts it in a file on each tester (vmware_credentials).
_VMWARE_PASSWORD = "vmwarepassword"
_TESTER: dict[str, Key | Drop] = {
    "hostname": Key("host"),
    "port": Key("port", _int),
    "username": Key("user"),
    "queuepath": Key("queue"),
    "slots": Key("slots", _int),
    "vmstorepath": Drop("large (per-student VM) assignments are not supported"),
    "vmtype": Drop("the machine's type says which backend runs it"),
    "vmwarehostname": Drop("use machines.<m>.vmware_url"),
    "vmwareport": Drop("use machines.<m>.vmware_url"),
    "vmwaredatastorename": Drop("VMware VMs are named by machines.<m>.vm"),
    "vmwaredatastorepath": Drop("VMware VMs are named by machines.<m>.vm"),
    "vmwareregunreg": Drop("VMs are not registered per job any more"),
    **dict.fromkeys(_VMWARE_SERVER, _HANDLED),     # copied to the vmware machines it serves
    _VMWARE_PASSWORD: _HANDLED,                     # never copied: a warning says where it goes
}
_MACHINE: dict[str, Key | Drop] = {
    "type": Key("type", lambda s: s.strip().lower()),
    "testers": Key("testers", _words),
    "vmpath": Key("vm"),
    "guestuser": Key("guest_user"),
    "guestbasepath": Key("guest_base_path"),
    "guestshellpath": Key("guest_shell"),
    "buildscript": Key("build_script"),
    "runscript": Key("run_script"),
    "guestpassword": Drop("guests are reached without a password"),
    "guesthomeinbash": Drop("the guest folder is given once, as guest_base_path"),
    "customrunner": Drop("custom runners are not supported; use build_script/run_script"),
    "onecredentials": Drop("OpenNebula is not supported"),
    "oneserver": Drop("OpenNebula is not supported"),
    "onevmhostname": Drop("OpenNebula is not supported"),
    "onevmid": Drop("OpenNebula is not supported"),
}
_STORAGE = Drop("large (per-student VM) assignments are not supported", quiet=("", "normal"))
_ASSIGNMENT: dict[str, Key | Drop] = {
    "assignmenttitle": Key("title"),
    "deadline": Key("deadline", _date),
    "machine": Key("machine"),
    "statementlink": Key("statement"),
    "ordernumber": Key("order", _int),
    "timeout": Key("timeout", _int),
    "totalpoints": Key("total_points", _number),
    "penaltyweights": Key("penalty_weights", _numbers),
    "penaltylimit": Key("penalty_limit", _number),
    "timedelta": Key("min_interval", _int),
    "maxsubmissionsize": Key("max_submission_size", lambda s: s.strip().upper()),
    "deadlineishard": Key("hard_deadline", _bool),
    "submitonly": Key("submit_only", _bool),
    "hidden": Key("hidden", _bool),
    "showgradesbeforedeadline": Key("show_grades_before_deadline", _bool),
    "ignoredvmrs": Key("ignored_vmrs", _vmrs),
    "course": Drop("the course id comes from the global course list"),
    "submit": Drop("bundles are sent by the storer daemon"),
    "kernelmessages": Drop("set machines.<m>.kernel_messages to the host commands that capture them",
                           quiet=("", "0", "no", "false", "off")),
    "reverttosnapshot": Drop("guests are always reverted (machines.<m>.snapshot)",
                             quiet=("1", "yes", "true", "on")),
    "delaybetweentoolsandtests": Drop("use machines.<m>.boot_timeout"),
    "waitforvmwaretoolstimeout": Drop("use machines.<m>.boot_timeout"),
    "assignmentstorage": _STORAGE,
    "assignmentstoragehost": _STORAGE,
    "assignmentstoragebasepath": _STORAGE,
    "assignmentstoragequeryuser": _STORAGE,
}


# --------------------------------------------------------------------------- migration


@dataclass
class Migration:
    """The YAML document (as data) and what could not be carried over."""

    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True, width=100)


class _Converter:
    """One pass over a parsed INI file; collects warnings as it goes."""

    def __init__(self, parser: configparser.ConfigParser, source: str):
        self.parser = parser
        self.source = source
        self.warnings: list[str] = []
        self.defaults = self.own("DEFAULT")      # the INI [DEFAULT], applied to every section
        self.default_used: set[str] = set()

    def warn(self, section: str, key: str, reason: str) -> None:
        self.warnings.append(f"{self.source}: [{section}]{' ' + key if key else ''}: {reason}")

    def own(self, section: str) -> dict[str, str]:
        """The keys written in ``section`` itself (empty if there is no such section)."""
        return dict(self.parser[section]) if self.parser.has_section(section) else {}

    def convert(self, section: str, table: dict[str, Key | Drop], values: dict[str, str],
                inherited: dict[str, str] | None = None) -> dict[str, Any]:
        """Map a section's keys through ``table``: its own ``values`` over ``inherited``
        ones (``[assignment DEFAULT]``) over the INI ``[DEFAULT]``.

        Only keys written in this section are reported here; inherited ones are
        reported where they were written, and ``[DEFAULT]`` keys once, at the end,
        if no section could use them."""
        merged = {**self.defaults, **(inherited or {}), **values}
        out: dict[str, Any] = {}
        for key, raw in merged.items():
            rule = table.get(key) or (_INCLUDE if key.startswith("include ") else None)
            if key not in values and key not in (inherited or {}) and rule is not None:
                self.default_used.add(key)
            if rule is None or isinstance(rule, Drop):
                if key in values and rule is not _HANDLED and (rule is None or raw.strip().lower() not in rule.quiet):
                    self.warn(section, key, f"not migrated: {rule.reason}" if rule else "unknown key, not migrated")
                continue
            try:
                out[rule.target] = rule.convert(raw)
            except _Bad as exc:
                if key in values or key not in (inherited or {}):
                    self.warn(section, key, f"{exc}; copied as is")
                out[rule.target] = raw
        order = [r.target for r in table.values() if isinstance(r, Key)]
        return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))

    def report_defaults(self) -> None:
        for key in self.defaults:
            if key not in self.default_used:
                self.warn("DEFAULT", key, "unknown key, not migrated")


def _holidays(conv: _Converter, values: dict[str, str]) -> list[dict[str, str]]:
    count = values.get("holidays", "").strip()
    if count in ("", "0"):
        return []
    starts = [s.strip() for s in values.get("holidaystart", "").split(",") if s.strip()]
    ends = [s.strip() for s in values.get("holidayfinish", "").split(",") if s.strip()]
    if len(starts) != len(ends):
        conv.warn("vmchecker", "holidaystart", f"{len(starts)} starts but {len(ends)} finishes; extra ones dropped")
    holidays = []
    for start, end in zip(starts, ends, strict=False):
        try:
            holidays.append({"start": _date(start), "end": _date(end)})
        except _Bad as exc:
            conv.warn("vmchecker", "holidaystart", f"{exc}; holiday {start} - {end} dropped")
    return holidays


def _split_sections(parser: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    kinds: dict[str, dict[str, str]] = {"tester": {}, "assignment": {}, "machine": {}}
    for section in parser.sections():
        if section in ("DEFAULT", "vmchecker", "storer"):
            continue
        head, _, name = section.partition(" ")
        if head in ("tester", "assignment") and name.strip():
            kinds[head][name.strip()] = section
        elif section == "tester":            # the oldest files had a single [tester]
            kinds["tester"]["tester"] = section
        else:
            kinds["machine"][section] = section
    return kinds


def convert(parser: configparser.ConfigParser, course_id: str, source: str = "<ini>") -> Migration:
    """Build the YAML course config from a parsed INI file."""
    conv = _Converter(parser, source)
    kinds = _split_sections(parser)

    vm_values = conv.own("vmchecker")
    course: dict[str, Any] = {"id": course_id}
    course.update(conv.convert("vmchecker", _VMCHECKER, vm_values))
    root = {**conv.defaults, **vm_values}.get("root", "").strip()
    repository = course.get("repository")
    if root and isinstance(repository, str) and repository.startswith(root.rstrip("/") + "/"):
        course["repository"] = repository[len(root.rstrip("/")) + 1:]
    holidays = _holidays(conv, {**conv.defaults, **vm_values})
    if holidays:
        course["holidays"] = holidays
    course.setdefault("public_results", True)          # the original's default
    conv.warn("vmchecker", "", "the original let every authenticated user submit; the migrated course admits"
                               " only its admins until its students are listed (course.students,"
                               " students_file or students_ldap_group) or open_to_all_users is set")

    storer = conv.convert("storer", _STORER, conv.own("storer"))

    testers: dict[str, dict[str, Any]] = {}
    vmware_by_tester: dict[str, dict[str, str]] = {}
    with_password: list[str] = []
    tester_defaults = conv.own("tester DEFAULT")
    for name, section in sorted(kinds["tester"].items()):
        if name == "DEFAULT":
            continue
        values = conv.own(section)
        testers[name] = conv.convert(section, _TESTER, values, tester_defaults)
        merged = {**conv.defaults, **tester_defaults, **values}
        vmware_by_tester[name] = {v: merged[k].strip() for k, v in _VMWARE_SERVER.items() if k in merged}
        if merged.get(_VMWARE_PASSWORD, "").strip():
            with_password.append(section)
    if with_password:
        conv.warn(with_password[0], _VMWARE_PASSWORD, "not copied into the YAML: on each tester, put the password"
                  " in a file only root can read (chmod 600) and set vmware_credentials to its path in the"
                  " tester's config.yaml (machines: <m>: vmware_credentials: /etc/vmchecker/vmware.cred)")

    machines = {}
    for name, section in sorted(kinds["machine"].items()):
        machines[name] = _machine(conv, section, testers, vmware_by_tester)

    assignments = _assignments(conv, kinds["assignment"], vm_values)
    conv.report_defaults()
    data = {"course": course, "storer": storer, "testers": testers, "machines": machines,
            "assignments": assignments}
    return Migration(data, conv.warnings)


def _machine(conv: _Converter, section: str, testers: dict, vmware_by_tester: dict) -> dict[str, Any]:
    machine = conv.convert(section, _MACHINE, conv.own(section))
    machine.setdefault("type", "vmware")                 # the original's default
    if machine["type"] not in ("lxc", "kvm", "vmware"):
        conv.warn(section, "type", f"machine type {machine['type']!r} is not supported (lxc, kvm, vmware);"
                                   " the YAML will not load until it is changed")
    if "vm" not in machine:
        machine["vm"] = section
        conv.warn(section, "vmpath", f"missing; using the machine name {section!r} as the VM name")
    base = machine.get("guest_base_path", "")
    if base == "/root" or base.startswith("/root/"):
        del machine["guest_base_path"]   # closed to the student user, who builds there now
        conv.warn(section, "guestbasepath", f"{base} is inside /root, which the unprivileged student user"
                                            " cannot enter; the default guest_base_path (/vmchecker) is used")
    if "testers" not in machine:
        machine["testers"] = sorted(testers)
        if testers:
            conv.warn(section, "testers", f"missing; served by every tester: {', '.join(sorted(testers))}")
    if machine["type"] == "vmware":
        for tester in machine["testers"]:
            for key, value in vmware_by_tester.get(tester, {}).items():
                if machine.setdefault(key, value) != value:
                    conv.warn(section, key, f"testers disagree on {key}; kept {machine[key]!r}")
    return machine


def _assignments(conv: _Converter, names: dict[str, str], vm_values: dict[str, str]) -> dict[str, Any]:
    # old files put the penalty in [vmchecker]; [assignment DEFAULT] wins over it
    legacy = {k: v for k, v in {**conv.defaults, **vm_values}.items() if k in ("penaltyweights", "penaltylimit")}
    default_values = {**legacy, **conv.own("assignment DEFAULT")}
    defaults = conv.convert("assignment DEFAULT", _ASSIGNMENT, default_values)
    defaults.setdefault("show_grades_before_deadline", True)   # the original's default
    out: dict[str, Any] = {"defaults": defaults}
    for name, section in sorted(names.items()):
        if name == "DEFAULT":
            continue
        if not ID_RE.match(name):
            conv.warn(section, "", f"assignment name {name!r} is not a valid id; the YAML will not load")
        out[name] = conv.convert(section, _ASSIGNMENT, conv.own(section), default_values)
        # keys equal to the defaults block are noise in the YAML
        out[name] = {k: v for k, v in out[name].items() if defaults.get(k, _MISSING) != v}
    return out


def read_ini(path: Path | str) -> configparser.ConfigParser:
    """Parse an original config the way the original did (no interpolation,
    case-insensitive keys), keeping ``[DEFAULT]`` as a plain section so each
    section's own keys can be told from inherited ones."""
    path = Path(path)
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT, strict=False)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(path, "", f"not a valid INI file: {exc}") from None
    if not parser.sections():
        raise ConfigError(path, "", "no sections: not an original vmchecker course config")
    return parser


def course_id_from(path: Path | str) -> str | None:
    """A course id guessed from the file name (``so.config`` -> ``so``), if valid."""
    name = Path(path).name.lstrip(".").split(".")[0]
    return name if ID_RE.match(name) else None


def migrate(path: Path | str, course_id: str | None = None) -> Migration:
    """Read an original INI course config and return its YAML equivalent."""
    parser = read_ini(path)
    cid = course_id or course_id_from(path)
    if cid is None:
        raise ConfigError(path, "", "cannot guess a course id from the file name: pass --course-id")
    return convert(parser, cid, str(path))
