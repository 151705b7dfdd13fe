"""``vmchecker-teams COURSE add|remove|list``: make and change a course's teams.

The command rewrites ``teams.yaml`` beside the course config (atomically, one edit at a
time under ``.teams.lock``), so no one edits YAML by hand; teams written under ``teams:``
in the config itself are listed but changed only there. Every change is checked as the
course's loading checks it (:mod:`vmchecker.teams`) before it is written.

What a change does to stored submissions, which never move:

* ``add`` makes a team, or adds members to one. An account that already uploaded on its
  own to an assignment the team covers is refused (from then on it would see the team's
  submissions and grade instead of its own, which stay in the repository ungraded):
  limit the team with ``--assignment``, or ``--force``. A new team whose name already
  holds submissions in the repository (a team removed and made again) takes them over
  only with ``--force``.
* ``remove TEAM MEMBER...`` takes members out: they no longer see the team's submissions
  nor get its grade. A member who uploaded one of the team's submissions is refused
  unless ``--force``. Taking the last member out removes the team.
* ``remove TEAM`` removes a team. A team with submissions is refused unless ``--force``:
  its submissions stay in the repository under the team's name (graders see them, and
  the grades list them under that name), no member sees them or gets their grade.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vmchecker.cli import common
from vmchecker.errors import NotFound, Refused

if TYPE_CHECKING:
    from pathlib import Path

    from vmchecker.config import CourseConfig
    from vmchecker.repo import Submission
    from vmchecker.teams import Team

log = logging.getLogger(__name__)

PROG = "vmchecker-teams"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Make, change and list a course's teams: the members of a team submit as one"
                            " account (any member's upload is the team's; the interval, late days and the grade"
                            " are the team's, the grade counts for every member).")
    p.add_argument("course", metavar="COURSE", help="course id from the global config")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make TEAM, or add members to it",
                             description="Make TEAM with these members, or add them to TEAM.")
    add.add_argument("team", metavar="TEAM", help="the team's name: stored as an account, so no one's login")
    add.add_argument("members", metavar="MEMBER", nargs="+", help="accounts of the course's students")
    add.add_argument("--assignment", metavar="X", action="append", default=[],
                     help="the team submits together for X only (repeat for several; default: every assignment);"
                          " only when making a team")
    add.add_argument("--force", action="store_true",
                     help="add a member who already uploaded on their own to an assignment the team covers (those"
                          " uploads stay, no longer graded), or take over stored submissions under TEAM's name")
    add.add_argument("--not-listed", action="store_true",
                     help="accept members not listed as students (members of the course's LDAP group, which"
                          " this command cannot look up)")
    remove = actions.add_parser("remove", help="remove TEAM, or members from it",
                                description="Remove members from TEAM, or TEAM itself when no member is named.")
    remove.add_argument("team", metavar="TEAM")
    remove.add_argument("members", metavar="MEMBER", nargs="*")
    remove.add_argument("--force", action="store_true",
                        help="remove even a member who uploaded for the team, or a team with submissions: the"
                             " submissions stay in the repository under the team's name")
    show = actions.add_parser("list", help="list the teams", description="List the course's teams.")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    return p


# --------------------------------------------------------------------------- the work


def add_team(course: CourseConfig, name: str, members: list[str], assignments: list[str] | None = None,
             force: bool = False, not_listed: bool = False) -> list[str]:
    """Make team ``name`` or add ``members`` to it; the lines that say what changed."""
    from vmchecker.teams import Team

    with _editing(course) as (written, config_teams):
        old = _own_team(course, written, config_teams, name, must_exist=False)
        if old is not None and assignments:
            raise Refused(f"team {name} exists and covers {old.describe_assignments()}; --assignment is only for"
                          f" making a team (remove it and make it again to change that)")
        if old is None:
            old = Team(name, (), tuple(dict.fromkeys(assignments or ())), str(_file(course)))
            made = "made"
        else:
            made = "changed"
        added = [m for m in dict.fromkeys(members) if m not in old.members]
        for member in added:
            _check_member(course, member, not_listed)
        team = old.with_members((*old.members, *added))
        if not added:
            return [f"team {name}: {', '.join(team.members)} already; nothing changed"]
        _validate(course, {**written, name: team}, config_teams)
        if not old.members:
            _check_name_unused(course, team, force)
        for member in added:
            _check_solo_uploads(course, team, member, force)
        written[name] = team
    return [f"team {name} {made}: {', '.join(team.members)} ({team.describe_assignments()}) in {_file(course)}",
            f"{', '.join(added)}: uploads for {team.describe_assignments()} are the team's from now on;"
            " each member sees them and gets their grade"]


def remove_team(course: CourseConfig, name: str, members: list[str] | None = None, force: bool = False) -> list[str]:
    """Remove ``members`` from team ``name``, or the team; the lines that say what changed."""
    with _editing(course) as (written, config_teams):
        team = _own_team(course, written, config_teams, name, must_exist=True)
        assert team is not None
        leaving = list(dict.fromkeys(members or team.members))
        for member in leaving:
            if member not in team.members:
                raise NotFound(f"{member} is not a member of team {name} ({', '.join(team.members)})")
        uploads = _team_uploads(course, team)
        staying = tuple(m for m in team.members if m not in leaving)
        if not staying:
            if uploads and not force:
                raise Refused(f"team {name} has {_count(uploads)}: removed, its members ({', '.join(team.members)})"
                              " would no longer see them nor get their grades. Run again with --force to remove it"
                              f" anyway (the submissions stay in the repository under {name})")
            del written[name]
            kept = f"; its {_count(uploads)} stay in the repository under {name}" if uploads else ""
            return [f"team {name} removed from {_file(course)}{kept}"]
        for member in leaving:
            mine = [sub for sub in uploads if sub.submitted_by == member]
            if mine and not force:
                raise Refused(f"{member} uploaded {_count(mine)} of team {name} (the first: {mine[0].assignment}"
                              f" {mine[0].name}): removed, {member} would no longer see them nor get their grade."
                              " Run again with --force to remove them anyway (the submissions stay the team's)")
        written[name] = team.with_members(staying)
    lost = f"; they no longer see its {_count(uploads)} nor get their grade" if uploads else ""
    return [f"team {name}: {', '.join(leaving)} removed, {', '.join(staying)} stay{lost}"]


def list_teams(course: CourseConfig) -> list[Team]:
    """Every team of the course, from both files, by name."""
    return list(course.teams)


# --------------------------------------------------------------------------- checks


def _file(course: CourseConfig) -> Path:
    from vmchecker import teams

    return teams.teams_file(course.path)


@contextlib.contextmanager
def _editing(course: CourseConfig) -> Iterator[tuple[dict[str, Team], dict[str, Team]]]:
    """Under ``.teams.lock``: the teams of ``teams.yaml`` as read now (a dict the body
    changes) and those of the config; written back when the body ends without error."""
    from vmchecker import fsutil, teams

    with fsutil.locked(course.root / teams.LOCK_FILE):
        written = teams.read_teams_file(_file(course))
        before = dict(written)
        config_teams = {t.name: t for t in course.teams if t.source != str(_file(course))}
        yield written, config_teams
        if written != before:
            teams.save(_file(course), written.values())


def _own_team(course: CourseConfig, written: dict[str, Team], config_teams: dict[str, Team], name: str,
              must_exist: bool) -> Team | None:
    from vmchecker.repo import check_account

    check_account(name)
    if name in config_teams:
        raise Refused(f"team {name} is defined under teams: in {course.path}: change it there")
    if must_exist and name not in written:
        known = ", ".join(sorted({*written, *config_teams})) or "none"
        raise NotFound(f"course {course.id} has no team {name!r} (teams: {known})")
    return written.get(name)


def _validate(course: CourseConfig, written: dict[str, Team], config_teams: dict[str, Team]) -> None:
    """The checks of the course's loading, on the teams as they would be."""
    from vmchecker import teams

    teams.check([*written.values(), *config_teams.values()], course.assignments,
                {*course.course.admins, *course.listed_students})


def _check_member(course: CourseConfig, member: str, not_listed: bool) -> None:
    from vmchecker.repo import check_account

    check_account(member)
    if course.admits(member) or (not_listed and course.course.students_ldap_group):
        return
    hint = (f"; if {member} is in the course's LDAP group {course.course.students_ldap_group}, run again with"
            " --not-listed" if course.course.students_ldap_group else
            f": add it to course.students or course.students_file in {course.path}")
    raise Refused(f"{member!r} is not a student of course {course.id}{hint}")


def _check_solo_uploads(course: CourseConfig, team: Team, member: str, force: bool) -> None:
    from vmchecker.repo import Repository

    repo = Repository(course)
    own = [(task, len(repo.history(task, member))) for task in sorted(course.assignments) if team.covers(task)]
    own = [(task, n) for task, n in own if n]
    if own and not force:
        where = ", ".join(f"{task} ({n} upload{'s' * (n > 1)})" for task, n in own)
        raise Refused(f"{member} already uploaded on their own to {where}, which team {team.name} covers: in the"
                      f" team, {member} would see the team's submissions and grade there instead, and their own"
                      " uploads would stay in the repository ungraded. Limit the team to other assignments"
                      " (--assignment) or run again with --force")


def _check_name_unused(course: CourseConfig, team: Team, force: bool) -> None:
    from vmchecker.repo import Repository

    repo = Repository(course)
    held = [task for task in sorted(course.assignments) if team.covers(task) and repo.history(task, team.name)]
    if held and not force:
        raise Refused(f"the repository holds submissions under the name {team.name} ({', '.join(held)}): a team"
                      f" {team.name} would take them over. Pick another name, or run again with --force if that"
                      " is what you want (a team removed and made again)")


def _team_uploads(course: CourseConfig, team: Team) -> list[Submission]:
    """Every stored submission of the team, for the assignments it covers."""
    from vmchecker.repo import Repository

    repo = Repository(course)
    return [sub for task in sorted(course.assignments) if team.covers(task) for sub in repo.history(task, team.name)]


def _count(subs: list[Submission]) -> str:
    return f"{len(subs)} submission{'s' * (len(subs) != 1)}"


# --------------------------------------------------------------------------- the command


def render(found: list[Team], as_json: bool) -> str:
    if as_json:
        import json

        return json.dumps([{"team": t.name, "members": list(t.members), "assignments": list(t.assignments),
                            "defined_in": t.source} for t in found], indent=2)
    if not found:
        return "(no teams)"
    width = max(len(t.name) for t in found)
    return "\n".join(f"{t.name.ljust(width)}  {', '.join(t.members)}  ({t.describe_assignments()}; {t.source})"
                     for t in found)


def work(args: argparse.Namespace) -> int:
    from vmchecker.config import find_course

    course = find_course(args.course, args.config)
    if args.action == "list":
        print(render(list_teams(course), args.json))
        return 0
    if args.action == "add":
        lines = add_team(course, args.team, args.members, args.assignment, args.force, args.not_listed)
    else:
        lines = remove_team(course, args.team, args.members, args.force)
    print("\n".join(lines))
    _refresh_grades(args)
    return 0


def _refresh_grades(args: argparse.Namespace) -> None:
    """The grades database lists members: make it again with the new teams (a cache,
    so a failure only means the next ``vmchecker-grades`` does it)."""
    from vmchecker import grades
    from vmchecker.config import find_course
    from vmchecker.errors import VmcheckerError

    try:
        grades.rebuild(find_course(args.course, args.config))
    except VmcheckerError as exc:
        log.warning("the grades database was not rebuilt: %s", exc.message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
