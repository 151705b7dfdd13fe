"""Who takes part in a course: its access keys, checked when the course loads, and the
one question every front end asks of them (:func:`admits`).

Five keys of a course config's ``course`` section say who may see the course and upload
to it: ``admins``, ``students``, ``students_file``, ``students_ldap_group`` and
``open_to_all_users``. They live apart from the rest of the schema because they answer
to other rules: account names as the web's logins spell them, a file of their own, an
LDAP group that only vmchecker-web can ask. :mod:`vmchecker.config` keeps the keys (their
names are part of the contract) and calls this module when it loads a course; this
module reads them through :class:`AccessRules` and never imports the config, so the
imports go one way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import Path

from vmchecker.contract import ACCOUNT_RE
from vmchecker.errors import ConfigError

DN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*=[^=]")    # the start of an LDAP DN: attr=value
# (group DN, account) -> is the account a member: how vmchecker-web asks its LDAP
GroupCheck = Callable[[str, str], bool]


TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:   # only annotations name it: the type checker's view of a CourseInfo
    from typing import Protocol

    class AccessRules(Protocol):
        """The keys of a course's ``course`` section that say who takes part
        (:class:`vmchecker.config.CourseInfo` has them): a protocol, so this module need not
        import the schema that imports it."""

        @property
        def admins(self) -> list[str]: ...
        @property
        def students(self) -> list[str]: ...
        @property
        def students_file(self) -> str: ...
        @property
        def students_ldap_group(self) -> str: ...
        @property
        def open_to_all_users(self) -> bool: ...


def admits(rules: AccessRules, listed: Collection[str], account: str, in_group: GroupCheck | None = None) -> bool:
    """May ``account`` see the course and upload to it? Its admins and its ``listed``
    students may; so may the members of ``students_ldap_group`` when ``in_group`` can
    ask LDAP (vmchecker-web); everyone may with ``open_to_all_users``. Closed by default:
    a course that names no students admits its admins alone, not every account the
    web's password file or LDAP knows."""
    if rules.open_to_all_users or account in rules.admins or account in listed:
        return True
    group = rules.students_ldap_group
    return bool(group and in_group is not None and in_group(group, account))


def load_students(rules: AccessRules, path: Path) -> frozenset[str]:
    """The accounts ``students`` and ``students_file`` name, checked, with the other ways
    of saying who takes part: a bad name, a missing file or a group that is not a DN
    stops the course config at ``path`` here, not at a student's first upload."""
    for key, names in (("course.admins", rules.admins), ("course.students", rules.students)):
        for i, name in enumerate(names):
            _check_account(name, path, f"{key}[{i}]")
    group = rules.students_ldap_group
    if group and not DN_RE.match(group):
        raise ConfigError(path, "course.students_ldap_group",
                          f"{group!r} is not an LDAP DN: expected one such as cn=so-students,ou=groups,dc=example,dc=org")
    if rules.open_to_all_users and (rules.students or rules.students_file or group):
        raise ConfigError(path, "course.open_to_all_users",
                          "is true, so every account that can log in is a student and students, students_file"
                          " and students_ldap_group would be ignored: keep one or the other")
    listed = set(rules.students)
    if rules.students_file:
        listed |= read_students_file(path.parent / rules.students_file, path)
    return frozenset(listed)


def read_students_file(file: Path, config_file: Path | str) -> set[str]:
    """The accounts of a students file: one per line; blank lines and ``#`` comments
    are skipped. Errors name the config key, the file and the line."""
    key = "course.students_file"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(config_file, key, f"{file}: no such file (the path is relative to the course"
                                            " folder; write one account per line)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(config_file, key, f"{file}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    names = set()
    for number, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if name:
            _check_account(name, config_file, f"{key} ({file} line {number})")
            names.add(name)
    return names


def _check_account(name: str, file: Path | str, key: str) -> None:
    if not ACCOUNT_RE.match(name):
        raise ConfigError(file, key, f"bad account name {name!r}: use letters, digits, '_', '-', '.', '@'"
                                     " (the name as the account logs in)")
