"""Teams: students who submit together, as the original's team manager grouped them.

For the assignments a team covers (every assignment, or those its ``assignments`` list
names: the original activated a team per assignment), the team is one account in the
repository, the original's "mutual account": any member's upload is stored under
``<repository>/<assignment>/<team>/`` with the member in ``submitted_by``. Everything the
repository keys by account folder (the minimum interval, the disk quota, late days, the
penalty, the grade) therefore applies once per team, and every member sees the team's
submissions and results and gets its grade (:meth:`Teams.owner` is the one question the
upload, the pages and the commands ask). A student in no team submits alone.

Two files define a course's teams, merged when the course loads:

* ``teams:`` in the course config, written by hand;
* ``teams.yaml`` beside it, which ``vmchecker-teams`` rewrites atomically, so a team can
  be made or changed without touching the config.

Both spell a team the same way::

    teams:
      red: {members: [ana, bogdan], assignments: [2-shell, 3-fs]}
      blue: [carol, dan]                  # shorthand: every assignment

Checked at load, each error naming the file, the key and the reason: names are account
names and a team is defined once; a team has members and names known assignments; a
team's name is nobody's account (no admin, listed student or team member); no account is
in two teams that share an assignment (the error names both). This module reads no
repository: what changing a team does to stored submissions is the command's concern
(:mod:`vmchecker.cli.teams`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmchecker import fsutil
from vmchecker.confparse import read_yaml, safe_dump
from vmchecker.contract import ACCOUNT_RE
from vmchecker.errors import ConfigError, SubmissionRefused

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

TEAMS_FILE = "teams.yaml"          # beside the course config; vmchecker-teams writes it
LOCK_FILE = ".teams.lock"          # beside it: one vmchecker-teams edit at a time
HEADER = ("# The course's teams, written by vmchecker-teams (edit them with it); merged with\n"
          "# teams: in config.yaml. Members submit as one account for the assignments listed\n"
          "# (none listed: every assignment).\n")


@dataclass(frozen=True)
class Team:
    """A team: its members submit as one account (``name``) for the assignments it covers."""

    name: str
    members: tuple[str, ...]
    assignments: tuple[str, ...] = ()   # empty: every assignment of the course
    source: str = ""                    # the file that defines it (for messages)

    def covers(self, assignment: str) -> bool:
        return not self.assignments or assignment in self.assignments

    def describe_assignments(self) -> str:
        return ", ".join(self.assignments) if self.assignments else "every assignment"

    def with_members(self, members: Iterable[str]) -> Team:
        return dataclasses.replace(self, members=tuple(members))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"members": list(self.members)}
        if self.assignments:
            data["assignments"] = list(self.assignments)
        return data


@dataclass(frozen=True)
class Teams:
    """A course's teams, by name; what every front end asks of them."""

    by_name: Mapping[str, Team] = field(default_factory=dict)

    def __iter__(self):
        return iter(sorted(self.by_name.values(), key=lambda t: t.name))

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def get(self, name: str) -> Team | None:
        return self.by_name.get(name)

    def team_of(self, assignment: str, account: str) -> Team | None:
        """The team ``account`` submits with for ``assignment``, None when alone."""
        for team in self.by_name.values():
            if account in team.members and team.covers(assignment):
                return team
        return None

    def owner(self, assignment: str, account: str) -> str:
        """The repository account ``account``'s work for ``assignment`` lives under: its
        team's name, or the account itself."""
        team = self.team_of(assignment, account)
        return team.name if team else account

    def team_for(self, assignment: str, owner: str) -> Team | None:
        """The team whose folder ``owner`` is, for ``assignment`` (None: an account's own)."""
        team = self.by_name.get(owner)
        return team if team is not None and team.covers(assignment) else None

    def accounts_of(self, assignment: str, owner: str) -> tuple[str, ...]:
        """Whose work ``owner``'s folder is: a team's members, or the account itself."""
        team = self.team_for(assignment, owner)
        return team.members if team else (owner,)

    def may_see(self, user: str, owner: str) -> bool:
        """May ``user`` (no admin) see the submissions in ``owner``'s folders? Its own,
        and those of a team it is in; a login that happens to be a team's name sees
        nothing of that team."""
        team = self.by_name.get(owner)
        return user in team.members if team is not None else user == owner

    def check_uploader(self, assignment: str, account: str, course_id: str) -> str:
        """The owner an upload by ``account`` is stored under; SubmissionRefused for a
        team's name, which is no one's login (``vmchecker-submit`` names a member)."""
        team = self.by_name.get(account)
        if team is not None:
            raise SubmissionRefused(
                f"{account!r} is a team of course {course_id}, not an account: upload as one of its"
                f" members ({', '.join(team.members)}); the upload is then the team's")
        return self.owner(assignment, account)


# --------------------------------------------------------------------------- loading


def teams_file(config_path: Path) -> Path:
    return Path(config_path).parent / TEAMS_FILE


def load(section: Any, config_path: Path, assignments: Collection[str], accounts: Collection[str]) -> Teams:
    """The course's teams: ``section`` (``teams:`` of the config at ``config_path``) merged
    with ``teams.yaml`` beside it, checked against the course's ``assignments`` and the
    ``accounts`` it names (admins, listed students)."""
    found = parse(section, config_path, "teams")
    extra = read_teams_file(teams_file(config_path))
    for name, team in extra.items():
        if name in found:
            raise ConfigError(team.source, f"teams.{name}",
                              f"team {name!r} is also defined in {config_path} (teams.{name}): define it once")
        found[name] = team
    check(found.values(), assignments, accounts)
    return Teams(found)


def read_teams_file(path: Path) -> dict[str, Team]:
    """The teams of a ``teams.yaml`` (none when it does not exist)."""
    if not path.exists():
        return {}
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"teams"}:
        raise ConfigError(path, "", "expected a mapping with the one key teams")
    return parse(data.get("teams"), path, "teams")


def parse(section: Any, file: Path, key: str) -> dict[str, Team]:
    """The teams of one ``teams:`` mapping, each checked on its own."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(file, key, f"expected a mapping of team names to members, got {section!r}")
    out = {}
    for name, body in section.items():
        name = str(name)
        where = f"{key}.{name}"
        if not ACCOUNT_RE.match(name):
            raise ConfigError(file, where, f"bad team name {name!r}: a team is stored as an account, so use"
                                           " letters, digits, '_', '-', '.', '@'")
        if isinstance(body, list):
            body = {"members": body}
        if not isinstance(body, dict):
            raise ConfigError(file, where, f"expected a list of members or a mapping with members (and"
                                           f" assignments), got {body!r}")
        unknown = set(body) - {"members", "assignments"}
        if unknown:
            raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key (known keys here: members, assignments)")
        members = _names(body.get("members"), file, f"{where}.members", "member")
        if not members:
            raise ConfigError(file, f"{where}.members", "a team needs at least one member")
        tasks = _names(body.get("assignments"), file, f"{where}.assignments", "assignment")
        out[name] = Team(name, members, tasks, str(file))
    return out


def _names(value: Any, file: Path, key: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(file, key, f"expected a list of {what}s, got {value!r}")
    names: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not ACCOUNT_RE.match(item):
            raise ConfigError(file, f"{key}[{i}]", f"bad {what} name {item!r}")
        if item in names:
            raise ConfigError(file, f"{key}[{i}]", f"{item} is listed twice")
        names.append(item)
    return tuple(names)


def check(teams: Iterable[Team], assignments: Collection[str], accounts: Collection[str]) -> None:
    """The rules between teams: known assignments, team names that are nobody's account,
    no account in two teams sharing an assignment."""
    teams = sorted(teams, key=lambda t: t.name)
    members = {m: t for t in teams for m in t.members}
    for team in teams:
        for i, task in enumerate(team.assignments):
            if task not in assignments:
                raise ConfigError(team.source, f"teams.{team.name}.assignments[{i}]",
                                  f"names assignment {task!r}, which the course does not have"
                                  f" (known: {', '.join(sorted(assignments)) or 'none'})")
        if team.name in accounts or team.name in members:
            raise ConfigError(team.source, f"teams.{team.name}",
                              f"{team.name!r} is also an account of the course; a team's submissions are"
                              " stored under its name, so pick a name no one logs in as (such as team-"
                              f"{team.name})")
    for i, first in enumerate(teams):
        for second in teams[i + 1:]:
            shared = set(first.members) & set(second.members)
            if not shared:
                continue
            both = [a for a in sorted(assignments) if first.covers(a) and second.covers(a)]
            if both:
                who = sorted(shared)[0]
                raise ConfigError(second.source, f"teams.{second.name}",
                                  f"{who} is in team {first.name} ({first.source}) and in team {second.name}"
                                  f" ({second.source}), both for {', '.join(both)}: an account submits with"
                                  " one team per assignment")


# --------------------------------------------------------------------------- writing


def save(path: Path, teams: Iterable[Team]) -> None:
    """Rewrite ``teams.yaml`` with ``teams``, atomically (readers see the old or the new)."""
    data = {"teams": {t.name: t.to_data() for t in sorted(teams, key=lambda t: t.name)}}
    fsutil.write_atomic(path, HEADER + safe_dump(data, sort_keys=False, default_flow_style=None))
    log.info("%s: %d teams written", path, len(data["teams"]))
