"""Teams: a course's teams from its config and teams.yaml, checked at load; a member's
upload is the team's (one folder, the interval, late days and the grade once per team,
listed for every member); vmchecker-teams add/remove/list and what a change does to
stored submissions."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, write_course, zip_bytes
from vmchecker import config, fsutil, grades, teams
from vmchecker.cli import grades as cli_grades
from vmchecker.cli import resubmit as cli_resubmit
from vmchecker.cli import teams as cli_teams
from vmchecker.contract import GRADE_VMR
from vmchecker.errors import ConfigError, Refused, SubmissionRefused
from vmchecker.repo import Repository
from vmchecker.storer.web import model
from vmchecker.submit import submit

T = dt.datetime(2026, 2, 20, 10, 0, 0)          # before 1-hello's deadline (2026-03-01 23:55)
DEADLINE = dt.datetime(2026, 3, 1, 23, 55)
DAY = dt.timedelta(days=1)
STUDENTS = ["ana", "bob", "carol", "dan"]


def make_course(tmp_path: Path, team_section: object = None, teams_file: str | None = None) -> Path:
    """Course ``so`` with students ana, bob, carol, dan, assignments 1-hello and 2-shell
    (min_interval 120 s), ``teams:`` in its config and ``teams.yaml`` beside it as given."""
    extra: dict = {"course": {"students": STUDENTS},
                   "assignments": {"2-shell": {"deadline": "2026-04-09 00:00:00", "machine": "linux", "order": 2}}}
    if team_section is not None:
        extra["teams"] = team_section
    path = write_course(tmp_path, extra=extra)
    if teams_file is not None:
        (path.parent / teams.TEAMS_FILE).write_text(teams_file)
    return path


def load(tmp_path: Path, team_section: object = None, teams_file: str | None = None) -> config.CourseConfig:
    return config.load_course(make_course(tmp_path, team_section, teams_file))


@pytest.fixture
def red(tmp_path: Path) -> config.CourseConfig:
    """Team red (ana, bob) for every assignment; carol and dan alone."""
    return load(tmp_path, {"red": ["ana", "bob"]})


def upload(course: config.CourseConfig, account: str, when: dt.datetime, assignment: str = "1-hello",
           grade: str | None = None):
    sub = submit(course, assignment, account, zip_bytes({"hello.c": HELLO_C}), upload_time=when)
    if grade is not None:
        fsutil.write_atomic(sub.results_dir / GRADE_VMR, grade)
    return sub


# --------------------------------------------------------------------------- loading


def test_teams_of_the_config_and_of_teams_yaml_are_merged(tmp_path):
    course = load(tmp_path, {"red": ["ana", "bob"]},
                  "teams:\n  blue: {members: [carol, dan], assignments: [2-shell]}\n")
    assert [t.name for t in course.teams] == ["blue", "red"]
    assert course.teams.owner("1-hello", "ana") == "red" and course.teams.owner("2-shell", "bob") == "red"
    assert course.teams.owner("2-shell", "carol") == "blue"
    assert course.teams.owner("1-hello", "carol") == "carol"        # blue covers 2-shell only
    assert course.teams.accounts_of("2-shell", "blue") == ("carol", "dan")
    assert course.teams.accounts_of("1-hello", "carol") == ("carol",)
    assert course.teams.get("blue").source == str(tmp_path / "so" / "teams.yaml")


def test_no_teams_everyone_submits_alone(course):
    assert not course.teams and course.teams.owner("1-hello", "bob") == "bob"


@pytest.mark.parametrize("section, teams_file, key, words", [
    ({"red": ["ana", "bob"], "blue": ["bob", "carol"]}, None, "teams.red",
     ["bob is in team blue", "and in team red", "1-hello, 2-shell"]),
    ({"red": ["ana", "bob"]}, "teams:\n  blue: [carol, bob]\n", "teams.red",
     ["bob is in team blue", "teams.yaml", "and in team red", "config.yaml"]),
    ({"red": ["ana", "bob"]}, "teams:\n  red: [carol]\n", "teams.red", ["also defined in", "define it once"]),
    ({"carol": ["ana", "bob"]}, None, "teams.carol", ["is also an account of the course"]),
    ({"alice": ["ana"]}, None, "teams.alice", ["is also an account of the course"]),      # the admin
    ({"red": ["ana"], "ana2": ["red"]}, None, "teams.red", ["is also an account"]),        # a team's name as a member
    ({"red": {"members": ["ana"], "assignments": ["9-nope"]}}, None, "teams.red.assignments[0]",
     ["9-nope", "known: 1-hello, 2-shell"]),
    ({"red": []}, None, "teams.red.members", ["at least one member"]),
    ({"red": ["ana", "ana"]}, None, "teams.red.members[1]", ["listed twice"]),
    ({"red": ["ana/.."]}, None, "teams.red.members[0]", ["bad member name"]),
    ({"../red": ["ana"]}, None, "teams.../red", ["bad team name"]),
    ({"red": {"members": ["ana"], "size": 2}}, None, "teams.red.size", ["unknown key"]),
    ({"red": "ana"}, None, "teams.red", ["expected a list of members"]),
    (["ana", "bob"], None, "teams", ["expected a mapping of team names"]),
    (None, "groups: {}\n", "", ["the one key teams"]),
])
def test_invalid_teams_are_refused_at_load(tmp_path, section, teams_file, key, words):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, section, teams_file)
    assert err.value.key == key
    for word in words:
        assert word in err.value.message


def test_one_account_in_two_teams_for_different_assignments(tmp_path):
    course = load(tmp_path, {"red": {"members": ["ana", "bob"], "assignments": ["1-hello"]},
                             "blue": {"members": ["ana", "carol"], "assignments": ["2-shell"]}})
    assert course.teams.owner("1-hello", "ana") == "red" and course.teams.owner("2-shell", "ana") == "blue"


# --------------------------------------------------------------------------- uploads


def test_a_members_upload_is_the_teams_and_both_see_it(red):
    sub = upload(red, "ana", T)
    assert sub.account == "red" and sub.submitted_by == "ana"
    assert sub.path.parent == red.repository / "1-hello" / "red"
    assert yaml.safe_load(sub.config_path.read_text())["submitted_by"] == "ana"
    repo = Repository(red)
    for member in ("ana", "bob"):
        assert repo.current("1-hello", red.teams.owner("1-hello", member)) == sub
        assert model.can_see_account(red, member, "red")               # the web's access check
    assert not model.can_see_account(red, "carol", "red")
    assert model.can_see_account(red, "alice", "red")                   # the admin
    assert not (red.repository / "1-hello" / "ana").exists()


def test_the_interval_applies_per_team(red):
    upload(red, "ana", T)
    with pytest.raises(SubmissionRefused) as err:
        upload(red, "bob", T + dt.timedelta(seconds=60))
    assert "ana of your team red uploaded 1-hello at 2026-02-20 10:00:00" in err.value.message
    assert "the team's uploads must be 120 s apart: wait 60 more seconds" in err.value.message
    upload(red, "carol", T + dt.timedelta(seconds=60))                  # alone: her own interval
    later = upload(red, "bob", T + dt.timedelta(seconds=120))
    assert later.account == "red" and later.submitted_by == "bob"
    assert [s.submitted_by for s in Repository(red).history("1-hello", "red")] == ["ana", "bob"]


def test_a_student_in_no_team_submits_alone(red):
    sub = upload(red, "carol", T)
    assert sub.account == "carol" and sub.submitted_by == "carol"
    assert not model.can_see_account(red, "ana", "carol")


def test_a_team_covers_only_its_assignments(tmp_path):
    course = load(tmp_path, {"red": {"members": ["ana", "bob"], "assignments": ["2-shell"]}})
    assert upload(course, "ana", T).account == "ana"
    assert upload(course, "ana", T, assignment="2-shell").account == "red"


def test_the_teams_name_cannot_upload(red):
    with pytest.raises(SubmissionRefused, match="'red' is a team of course so, not an account: upload as one"
                                                " of its members \\(ana, bob\\)"):
        upload(red, "red", T)
    assert not (red.repository / "1-hello" / "red").exists()


# --------------------------------------------------------------------------- grades


def test_the_grade_counts_for_every_member(red):
    upload(red, "ana", T, grade="-2: leak\n")
    upload(red, "carol", T, grade="done\n")
    rows = {(r.assignment, r.account): r for r in grades.rebuild(red)}
    assert sorted(rows) == [("1-hello", "ana"), ("1-hello", "bob"), ("1-hello", "carol")]
    assert rows["1-hello", "ana"].grade == rows["1-hello", "bob"].grade == 8
    assert rows["1-hello", "ana"].team == rows["1-hello", "bob"].team == "red"
    assert rows["1-hello", "carol"].team == "" and rows["1-hello", "carol"].grade == 10
    assert [r.account for r in grades.rows(red, account="red")] == ["ana", "bob"]
    assert [r.account for r in grades.rows(red, account="bob")] == ["bob"]
    out = io.StringIO()
    cli_grades.render(grades.rows(red), "csv", out)
    exported = [(r["account"], r["team"], r["grade"]) for r in csv.DictReader(io.StringIO(out.getvalue()))]
    assert exported == [("ana", "red", "8"), ("bob", "red", "8"), ("carol", "", "10")]
    out = io.StringIO()
    cli_grades.render(grades.rows(red), "table", out)
    assert out.getvalue().splitlines()[0].split()[:3] == ["account", "team", "assignment"]
    assert out.getvalue().splitlines()[1].split()[:3] == ["ana", "red", "1-hello"]


def test_late_days_are_counted_once_per_team(red):
    """Both members upload late; the team's current submission (bob's, two days late) is
    what counts, for both: two late days each, not one plus two."""
    upload(red, "ana", DEADLINE + dt.timedelta(hours=1), grade="done\n")
    sub = upload(red, "bob", DEADLINE + DAY + dt.timedelta(hours=1), grade="done\n")
    rows = grades.rebuild(red)
    assert [(r.account, r.late_days, r.penalty, r.grade, r.submission) for r in rows] == [
        ("ana", 2, 1.0, 9.0, sub.name), ("bob", 2, 1.0, 9.0, sub.name)]
    row = grades.update(red, sub)
    assert (row.account, row.team, row.late_days) == ("ana", "red", 2)
    assert len(grades.rows(red)) == 2


def test_a_members_earlier_upload_of_their_own_is_no_longer_graded(tmp_path):
    """A team written into the config by hand after a member uploaded alone: the member's
    grade is the team's, the earlier upload stays in the repository, ungraded."""
    own = upload(load(tmp_path / "before"), "ana", T, grade="done\n")
    path = make_course(tmp_path / "before", {"red": ["ana", "bob"]})
    course = config.load_course(path)
    team = upload(course, "bob", T, grade="-5: nope\n")
    rows = grades.rebuild(course)
    assert [(r.account, r.team, r.grade) for r in rows] == [("ana", "red", 5.0), ("bob", "red", 5.0)]
    assert grades.update(course, own).grade == 10 and len(grades.rows(course)) == 2   # stored nowhere
    assert own.path.is_dir() and team.account == "red"


def test_resubmit_by_a_members_account_finds_the_teams_submission(red):
    sub = upload(red, "ana", T)
    upload(red, "carol", T)
    chosen = list(cli_resubmit.select(Repository(red), "bob", None))
    assert [s.path for s in chosen] == [sub.path]


# --------------------------------------------------------------------------- vmchecker-teams


def reload(course: config.CourseConfig) -> config.CourseConfig:
    return config.load_course(course.path)


def test_add_list_and_remove_teams(tmp_path, capsys):
    course = load(tmp_path)
    lines = cli_teams.add_team(course, "red", ["ana", "bob"])
    assert lines[0] == f"team red made: ana, bob (every assignment) in {tmp_path / 'so' / 'teams.yaml'}"
    course = reload(course)
    assert course.teams.owner("1-hello", "bob") == "red"
    assert cli_teams.add_team(course, "blue", ["carol"], ["2-shell"])[0].startswith("team blue made: carol (2-shell)")
    assert cli_teams.add_team(reload(course), "blue", ["dan", "carol"])[0].startswith("team blue changed: carol, dan")
    assert "nothing changed" in cli_teams.add_team(reload(course), "blue", ["dan"])[0]
    saved = yaml.safe_load((tmp_path / "so" / "teams.yaml").read_text())
    assert saved == {"teams": {"blue": {"members": ["carol", "dan"], "assignments": ["2-shell"]},
                               "red": {"members": ["ana", "bob"]}}}
    assert not list((tmp_path / "so").glob(".teams.yaml.*"))                # written atomically, no leftovers
    glob = str(tmp_path / "global.yaml")
    assert cli_teams.main(["--config", glob, "so", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:3] == ["blue", "carol,", "dan"] and "(2-shell;" in listed[0]
    assert listed[1].split()[:3] == ["red", "ana,", "bob"] and "(every assignment;" in listed[1]
    assert cli_teams.main(["--config", glob, "so", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[1] == {
        "team": "red", "members": ["ana", "bob"], "assignments": [], "defined_in": str(tmp_path / "so" / "teams.yaml")}
    assert cli_teams.main(["--config", glob, "so", "remove", "blue", "dan"]) == 0
    assert "team blue: dan removed, carol stay" in capsys.readouterr().out
    assert cli_teams.main(["--config", glob, "so", "remove", "blue"]) == 0
    assert [t.name for t in reload(course).teams] == ["red"]


@pytest.mark.parametrize("args, exit_code, words", [
    (["add", "green", "carol", "--assignment", "9-nope"], 2, ["9-nope", "known: 1-hello, 2-shell"]),
    (["add", "red", "mallory"], 1, ["'mallory' is not a student of course so", "course.students"]),
    (["add", "carol", "ana"], 2, ["'carol' is also an account of the course"]),
    (["add", "blue", "ana"], 2, ["ana is in team blue", "and in team red"]),
    (["add", "red", "carol", "--assignment", "1-hello"], 1, ["team red exists", "--assignment is only for making"]),
    (["add", "cfg", "dan"], 1, ["team cfg is defined under teams: in", "change it there"]),
    (["remove", "cfg"], 1, ["team cfg is defined under teams: in"]),
    (["remove", "green"], 4, ["course so has no team 'green' (teams: cfg, red)"]),
    (["remove", "red", "carol"], 4, ["carol is not a member of team red (ana, bob)"]),
    (["add", "../x", "ana"], 1, ["bad account name"]),
])
def test_the_command_refuses_bad_changes(tmp_path, capsys, args, exit_code, words):
    course = load(tmp_path, {"cfg": {"members": ["dan"], "assignments": ["2-shell"]}})
    cli_teams.add_team(course, "red", ["ana", "bob"])
    before = (tmp_path / "so" / "teams.yaml").read_text()
    assert cli_teams.main(["--config", str(tmp_path / "global.yaml"), "so", *args]) == exit_code
    err = capsys.readouterr().err
    for word in words:
        assert word in err
    assert (tmp_path / "so" / "teams.yaml").read_text() == before


def test_adding_a_member_who_uploaded_alone_needs_force(tmp_path):
    course = load(tmp_path)
    own = upload(course, "carol", T)
    with pytest.raises(Refused, match="carol already uploaded on their own to 1-hello \\(1 upload\\)"):
        cli_teams.add_team(course, "red", ["ana", "carol"])
    assert not reload(course).teams
    cli_teams.add_team(course, "red", ["ana", "carol"], ["2-shell"])    # other assignments: fine
    assert reload(course).teams.owner("1-hello", "carol") == "carol"
    cli_teams.remove_team(reload(course), "red")
    cli_teams.add_team(reload(course), "red", ["ana", "carol"], force=True)
    course = reload(course)
    assert course.teams.owner("1-hello", "carol") == "red" and own.path.is_dir()


def test_removing_a_member_who_uploaded_needs_force_and_keeps_history(tmp_path):
    course = load(tmp_path)
    cli_teams.add_team(course, "red", ["ana", "bob", "carol"])
    course = reload(course)
    sub = upload(course, "bob", T, grade="done\n")
    with pytest.raises(Refused, match="bob uploaded 1 submission of team red \\(the first: 1-hello"):
        cli_teams.remove_team(course, "red", ["bob"])
    lines = cli_teams.remove_team(course, "red", ["carol"])           # never uploaded: removed at once
    assert lines == ["team red: carol removed, ana, bob stay; they no longer see its 1 submission nor get their grade"]
    cli_teams.remove_team(reload(course), "red", ["bob"], force=True)
    course = reload(course)
    assert course.teams.get("red").members == ("ana",)
    assert Repository(course).current("1-hello", "red") == sub           # the history stays the team's
    assert sub.submitted_by == "bob"
    assert not model.can_see_account(course, "bob", "red") and model.can_see_account(course, "ana", "red")
    assert [(r.account, r.team) for r in grades.rebuild(course)] == [("ana", "red")]


def test_removing_a_team_with_submissions_needs_force(tmp_path):
    course = load(tmp_path)
    cli_teams.add_team(course, "red", ["ana", "bob"])
    course = reload(course)
    sub = upload(course, "ana", T, grade="done\n")
    with pytest.raises(Refused, match="team red has 1 submission: removed, its members \\(ana, bob\\) would no"):
        cli_teams.remove_team(course, "red")
    with pytest.raises(Refused, match="team red has 1 submission"):     # the last member too
        cli_teams.remove_team(course, "red", ["ana", "bob"])
    lines = cli_teams.remove_team(course, "red", force=True)
    assert lines[0].endswith("its 1 submission stay in the repository under red")
    course = reload(course)
    assert not course.teams and sub.path.is_dir()
    assert not model.can_see_account(course, "ana", "red")
    with pytest.raises(Refused, match="the repository holds submissions under the name red \\(1-hello\\)"):
        cli_teams.add_team(course, "red", ["ana", "bob"])
    cli_teams.add_team(course, "red", ["ana", "bob"], force=True)       # made again: takes them back
    assert Repository(reload(course)).current("1-hello", reload(course).teams.owner("1-hello", "bob")) == sub


def test_a_change_refreshes_the_grades_database(tmp_path, capsys):
    """The database lists members: ana's own upload leaves it when ana joins a team."""
    course = load(tmp_path)
    upload(course, "ana", T, grade="done\n")
    assert [(r.account, r.team) for r in grades.rebuild(course)] == [("ana", "")]
    glob = str(tmp_path / "global.yaml")
    assert cli_teams.main(["--config", glob, "so", "add", "red", "ana", "bob", "--force"]) == 0
    assert "ana, bob: uploads for every assignment are the team's from now on" in capsys.readouterr().out
    assert grades.rows(reload(course)) == []


def test_vmchecker_grade_finds_the_teams_submission_by_a_members_account(red, capsys):
    from vmchecker.cli import grade as cli_grade

    upload(red, "ana", T, grade="done\n")
    glob = str(red.path.parent.parent / "global.yaml")
    assert cli_grade.main(["--config", glob, "so", "1-hello", "bob", "--add", "-1: no README",
                           "--grader", "alice"]) == 0
    assert [(r.account, r.team, r.grade) for r in grades.rows(red)] == [("ana", "red", 9.0), ("bob", "red", 9.0)]
