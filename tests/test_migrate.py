"""vmchecker-migrate-config: original INI course configs become YAML that loads."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmchecker import config, migrate
from vmchecker.cli.migrate_config import migrate_config
from vmchecker.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# A course config in the original format, as a course of the original would have it.
SO_INI = textwrap.dedent(r"""
    # vim: set ft=dosini:
    [DEFAULT]
    Course = SO

    [vmchecker]
    root = /home/so/vmchecker-root
    repository = /home/so/vmchecker-root/repo
    CourseName = Sisteme de operare
    PublicResults = no
    AdminList = alice, bob

    Holidays = 1
    HolidayStart = 2026.04.10 00:00:00 , 2026.04.30 00:00:00
    HolidayFinish = 2026.04.20 00:00:00 , 2026.05.02 00:00:00

    UploadActiveFrom  = 2026.02.16 00:00:00
    UploadActiveUntil = 2026.06.30 23:59:00
    Colour = blue

    [storer]
    Hostname = elf.cs.pub.ro
    Username = so
    SSHId = /home/so/.ssh/id_rsa
    KnownHostsFile = /home/so/.ssh/known_hosts

    [tester DEFAULT]
    Username = vmchecker
    QueuePath = /home/vmchecker/queue

    [tester sanctuary]
    Hostname = sanctuary.cs.pub.ro
    VmwareUrl = https://vc.example.org/sdk
    VmwareUsername = vc
    VmwarePassword = secret

    [tester grid]
    Hostname = 10.0.0.3
    Username = grader

    [assignment DEFAULT]
    # minimum time (in seconds) between two successive submissions
    Timedelta = 180
    KernelMessages = 0
    Timeout = 120
    TotalPoints = 10
    PenaltyWeights = 0.5 0.5 1
    PenaltyLimit = 4
    MaxSubmissionSize = 5m
    Submit = local/submit_ssh.sh
    Include storer = examples/.vmcheckerrc

    [assignment 1-minishell-linux]
    AssignmentTitle = Minishell (Linux)
    StatementLink = https://ocw.cs.pub.ro/so/teme/1
    OrderNumber = 1
    Deadline = 2026.03.31 23:59:00
    Machine = so-linux
    DeadlineIsHard = yes
    IgnoredVmrs = run-km.vmr vmchecker-stderr.vmr

    [assignment 2-minishell-windows]
    AssignmentTitle = Minishell (Windows)
    OrderNumber = 2
    Deadline = 2026.04.14 23:59:00
    Machine = so-win
    Timeout = 300
    Hidden = 1
    ShowGradesBeforeDeadline = no
    AssignmentStorage = normal
    Flavour = vanilla

    [so-linux]
    Type = lxc
    VMPath = so-debian
    Testers = grid, sanctuary
    GuestUser = root
    GuestBasePath = /root/vmchecker
    GuestShellPath = /bin/bash
    GuestHomeInBash = /root/vmchecker
    BuildScript = build.sh
    RunScript = run.sh

    [so-win]
    VMPath = [datastore1] so-win/so-win.vmx
    Testers = sanctuary
    GuestUser = Administrator
    GuestPassword = so
    GuestBasePath = C:\cygwin\home\Administrator
    GuestShellPath = C:\cygwin\bin\bash.exe
    BuildScript = build-win.sh
    RunScript = run-win.sh
    """)

# The oldest layout: penalty in [vmchecker], one [tester], machines without Type/Testers.
OLD_INI = textwrap.dedent("""
    [vmchecker]
    root = /srv/cpl
    repository = /srv/cpl/repo
    PenaltyWeights = 0.25
    PenaltyLimit = 3
    Holidays = 0
    HolidayStart = 2009.03.31 23:59:00
    HolidayFinish = 2009.04.02 23:59:00

    [tester]
    Hostname = sanctuary.cs.pub.ro
    Username = so
    QueuePath = vmchecker/2010/queue

    [assignment DEFAULT]
    Course = CPL
    Timedelta = 180
    Timeout = 120
    TotalPoints = 10

    [assignment 1-lexer]
    Deadline = 2009.03.31 23:59:00
    Machine = cpl-linux

    [cpl-linux]
    VMPath = /home/so/vmware/cpl/faust.vmx
    GuestUser = so
    GuestBasePath = /home/so/
    GuestShellPath = /bin/bash
    """)


def _migrate(tmp_path: Path, text: str, name: str = "so.config", course_id: str | None = None):
    old = tmp_path / name
    old.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    result = migrate_config(str(old), course_id, out=out, err=err)
    new = tmp_path / "migrated" / "config.yaml"
    new.parent.mkdir(exist_ok=True)
    new.write_text(out.getvalue())
    return result, new, err.getvalue()


def test_realistic_config_migrates_and_loads(tmp_path):
    _, new, err = _migrate(tmp_path, SO_INI)
    course = config.load_course(new)
    assert "does not load" not in err

    info = course.course
    assert (info.id, info.name, info.repository) == ("so", "Sisteme de operare", "repo")
    assert info.upload_active_from == dt.datetime(2026, 2, 16)
    assert info.upload_active_until == dt.datetime(2026, 6, 30, 23, 59)
    assert [(h.start, h.end) for h in info.holidays] == [
        (dt.datetime(2026, 4, 10), dt.datetime(2026, 4, 20)),
        (dt.datetime(2026, 4, 30), dt.datetime(2026, 5, 2))]
    assert info.public_results is False and info.admins == ["alice", "bob"]
    assert course.storer.ssh_key == "/home/so/.ssh/id_rsa"
    assert course.storer.known_hosts == "/home/so/.ssh/known_hosts"

    # [tester DEFAULT] applies to each tester unless it says otherwise
    grid, sanctuary = course.testers["grid"], course.testers["sanctuary"]
    assert (grid.host, grid.user, grid.queue) == ("10.0.0.3", "grader", "/home/vmchecker/queue")
    assert (sanctuary.host, sanctuary.user) == ("sanctuary.cs.pub.ro", "vmchecker")

    linux, win = course.machines["so-linux"], course.machines["so-win"]
    assert (linux.type, linux.vm, linux.testers) == ("lxc", "so-debian", ["grid", "sanctuary"])
    # the original's /root/vmchecker is closed to the student user: the default instead, said
    assert (linux.guest_user, linux.guest_base_path, linux.guest_shell) == ("root", "/vmchecker", "/bin/bash")
    assert "[so-linux] guestbasepath: /root/vmchecker is inside /root" in err
    assert "admits only its admins until its students are listed" in err
    assert win.type == "vmware"                                   # the original's default type
    assert win.vm == "[datastore1] so-win/so-win.vmx"
    assert (win.build_script, win.run_script) == ("build-win.sh", "run-win.sh")
    assert win.guest_shell == r"C:\cygwin\bin\bash.exe"
    # the tester's VMware server settings reach the vmware machine it serves
    assert (win.vmware_url, win.vmware_user, win.vmware_credentials) == ("https://vc.example.org/sdk", "vc", "")
    # ... but not its password: no YAML holds one; the sysadmin is told where it goes
    assert "secret" not in new.read_text()
    assert "vmwarepassword: not copied into the YAML" in err and "vmware_credentials" in err

    a1, a2 = course.assignment("1-minishell-linux"), course.assignment("2-minishell-windows")
    assert a1.deadline == dt.datetime(2026, 3, 31, 23, 59) and a1.machine == "so-linux"
    assert (a1.title, a1.statement, a1.order) == ("Minishell (Linux)", "https://ocw.cs.pub.ro/so/teme/1", 1)
    assert (a1.timeout, a1.min_interval, a1.total_points) == (120, 180, 10.0)
    assert (a1.penalty_weights, a1.penalty_limit) == ([0.5, 0.5, 1.0], 4.0)
    assert a1.max_submission_size == 5 * 1024 * 1024
    assert a1.hard_deadline is True and a1.ignored_vmrs == ["run-km.vmr", "vmchecker-stderr.vmr"]
    assert a1.show_grades_before_deadline is True                 # the original's default
    assert (a2.timeout, a2.hidden, a2.show_grades_before_deadline, a2.order) == (300, True, False, 2)


def test_unknown_and_dropped_keys_are_reported(tmp_path):
    result, _, err = _migrate(tmp_path, SO_INI)
    assert "[vmchecker] colour: unknown key" in err
    assert "[assignment 2-minishell-windows] flavour: unknown key" in err
    assert "[so-win] guestpassword: not migrated" in err
    assert "[storer] hostname: not migrated" in err
    assert "[assignment DEFAULT] include storer: not migrated" in err
    # values that lose nothing are dropped quietly; inherited keys are reported once
    assert "kernelmessages" not in err and "assignmentstorage" not in err
    assert err.count("submit: not migrated") == 1
    assert "[DEFAULT] course" not in err                           # Course is a known old key
    assert all(line.startswith("vmchecker-migrate-config: warning: ") for line in err.splitlines())
    assert len(result.warnings) == len(err.splitlines())


def test_default_section_is_inherited_and_its_unknown_keys_reported_once(tmp_path):
    text = "[DEFAULT]\nTimeout = 45\nGizmo = 1\n" + OLD_INI
    _, new, err = _migrate(tmp_path, text, name="cpl.config")
    course = config.load_course(new)
    assert course.assignment("1-lexer").timeout == 120          # [assignment DEFAULT] wins over [DEFAULT]
    assert err.count("gizmo") == 1 and "[DEFAULT] gizmo: unknown key" in err

    _, new, _ = _migrate(tmp_path, text.replace("Timeout = 120\n", ""), name="cpl.config")
    assert config.load_course(new).assignment("1-lexer").timeout == 45


def test_oldest_layout(tmp_path):
    _, new, err = _migrate(tmp_path, OLD_INI, name="cpl.config")
    course = config.load_course(new)
    assert course.id == "cpl" and course.course.repository == "repo"
    assert course.course.holidays == []                            # Holidays = 0 turns them off
    assert course.course.public_results is True                    # the original's default
    a = course.assignment("1-lexer")
    assert (a.penalty_weights, a.penalty_limit) == ([0.25], 3.0)   # from [vmchecker]
    assert list(course.testers) == ["tester"]
    m = course.machines["cpl-linux"]
    assert (m.type, m.testers, m.vm) == ("vmware", ["tester"], "/home/so/vmware/cpl/faust.vmx")
    assert "[cpl-linux] testers: missing; served by every tester: tester" in err


def test_problems_that_stop_loading_are_named(tmp_path):
    text = SO_INI.replace("Type = lxc", "Type = one").replace("2026.03.31 23:59:00", "31/03/2026")
    _, _, err = _migrate(tmp_path, text)
    assert "[so-linux] type: machine type 'one' is not supported" in err
    assert "[assignment 1-minishell-linux] deadline: bad date '31/03/2026'" in err
    assert "the YAML does not load as is: " in err


def test_course_id_option_and_guess(tmp_path):
    _, new, _ = _migrate(tmp_path, SO_INI, course_id="so2026")
    assert config.load_course(new).id == "so2026"
    assert migrate.course_id_from("/etc/vmchecker/pa.config") == "pa"
    assert migrate.course_id_from("/x/.vmcheckerrc") == "vmcheckerrc"
    assert migrate.course_id_from("/x/+++") is None


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    ("[vmchecker\nroot = x\n", "not a valid INI file"),
    ("just some text\n", "not a valid INI file"),
    ("# only a comment\n", "no sections"),
])
def test_unreadable_files_are_errors(tmp_path, content, reason):
    path = tmp_path / "so.config"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=reason) as info:
        migrate.migrate(path)
    assert str(path) in info.value.message


# --------------------------------------------------------------------------- command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmchecker.cli.migrate_config", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_prints_yaml_and_warns(tmp_path):
    old = tmp_path / "so.config"
    old.write_text(SO_INI)
    proc = _cli(str(old))
    assert proc.returncode == 0, proc.stderr
    new = tmp_path / "config.yaml"
    new.write_text(proc.stdout)
    assert config.load_course(new).assignment("2-minishell-windows").hidden is True
    assert "warning: " in proc.stderr and "flavour" in proc.stderr
    assert "warning" not in proc.stdout


def test_cli_errors_and_help(tmp_path):
    proc = _cli(str(tmp_path / "missing.config"))
    assert proc.returncode == 2 and "missing.config: no such file" in proc.stderr
    assert proc.stdout == ""
    proc = _cli("--help")
    assert proc.returncode == 0 and "OLD_CONFIG" in proc.stdout and "--course-id" in proc.stdout
