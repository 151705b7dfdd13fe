"""The storer's shell tools run as real processes: exit codes, messages, --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, make_targz, make_zip
from vmchecker import config, tester_config
from vmchecker.config import CourseConfig
from vmchecker.repo import Repository

ROOT = Path(__file__).resolve().parents[1]
IN_WINDOW = "2026-02-20 10:00:00"


def run(module: str, *args: str | Path, env_config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if env_config is not None:
        env["VMCHECKER_CONFIG"] = str(env_config)
    return subprocess.run([sys.executable, "-m", f"vmchecker.cli.{module}", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def glob(course: CourseConfig) -> Path:
    return course.root.parent / "global.yaml"


@pytest.mark.parametrize("module, words", [
    ("submit", ["--skip-time-checks", "--upload-time", "COURSE", "ASSIGNMENT", "ACCOUNT", "ARCHIVE"]),
    ("resubmit", ["--account", "--assignment", "--all", "--dry-run", "COURSE"]),
    ("init_course", ["storer", "tester"]),
])
def test_help(module: str, words: list[str]) -> None:
    done = run(module, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: vmchecker-")
    for word in words:
        assert word in done.stdout


def test_init_course_subcommand_help() -> None:
    done = run("init_course", "storer", "--help")
    assert done.returncode == 0 and "--course-id" in done.stdout


def test_bin_wrappers_exist() -> None:
    for name in ("vmchecker-submit", "vmchecker-resubmit", "vmchecker-init-course"):
        path = ROOT / "bin" / name
        assert os.access(path, os.X_OK)
        assert f"from vmchecker.cli.{name.removeprefix('vmchecker-').replace('-', '_')} import main" in path.read_text()


# --------------------------------------------------------------------------- submit


def test_submit_saves(course: CourseConfig, glob: Path, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    done = run("submit", "--upload-time", IN_WINDOW, "so", "1-hello", "bob", archive, env_config=glob)
    assert done.returncode == 0, done.stderr
    folder = course.repository / "1-hello" / "bob" / "2026.02.20 10.00.00"
    assert str(folder) in done.stdout and "status: saved" in done.stdout
    assert (folder / "archive.zip").read_bytes() == archive.read_bytes()
    assert (folder / "files/hello.c").read_text() == HELLO_C


def test_submit_refusals_exit_3_with_the_reason(course: CourseConfig, glob: Path, tmp_path: Path) -> None:
    good = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    hostile = make_targz(tmp_path / "evil.tgz", {"../../etc/cron.d/x": "* * * * * root id"})
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [
        (["--upload-time", "2026-07-02 00:00:00", "so", "1-hello", "bob", good], "closed at 2026-06-30 23:59:00"),
        (["--upload-time", IN_WINDOW, "so", "1-hello", "bob", text], "not a zip or tar.gz archive"),
        (["--upload-time", IN_WINDOW, "so", "2-none", "bob", good], "has no assignment '2-none'"),
        # last: an archive refused while unpacking counts toward the minimum interval
        (["--upload-time", IN_WINDOW, "so", "1-hello", "bob", hostile], "archive refused: archive member"),
    ]
    for args, message in cases:
        done = run("submit", *args, env_config=glob)
        assert done.returncode == 3, (args, done.stderr)
        assert done.stderr.startswith("vmchecker-submit: ") and message in done.stderr
    assert not (course.repository / "1-hello" / "bob").exists()


def test_submit_skip_time_checks(course: CourseConfig, glob: Path, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    done = run("submit", "--skip-time-checks", "--upload-time", "2026-09-01 08:00:00",
               "so", "1-hello", "bob", archive, env_config=glob)
    assert done.returncode == 0, done.stderr
    assert (course.repository / "1-hello/bob/2026.09.01 08.00.00").is_dir()


def test_submit_usage_and_lookup_errors(course: CourseConfig, glob: Path, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    bad_time = run("submit", "--upload-time", "yesterday", "so", "1-hello", "bob", archive, env_config=glob)
    assert bad_time.returncode == 2 and "YYYY-MM-DD HH:MM:SS" in bad_time.stderr
    no_course = run("submit", "--upload-time", IN_WINDOW, "xx", "1-hello", "bob", archive, env_config=glob)
    assert no_course.returncode == 4 and "no course 'xx'" in no_course.stderr
    no_file = run("submit", "--upload-time", IN_WINDOW, "so", "1-hello", "bob", tmp_path / "nope.zip",
                  env_config=glob)
    assert no_file.returncode == 4 and "no such file" in no_file.stderr
    explicit = run("submit", "--config", glob, "--upload-time", IN_WINDOW, "so", "1-hello", "bob", archive,
                   env_config=tmp_path / "missing.yaml")
    assert explicit.returncode == 0, explicit.stderr


def test_concurrent_submit_processes_lose_nothing(course: CourseConfig, glob: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VMCHECKER_CONFIG": str(glob)}
    procs = []
    for i in range(6):
        archive = make_zip(tmp_path / f"a{i}.zip", {"who": str(i)})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vmchecker.cli.submit", "--skip-time-checks", "--upload-time", IN_WINDOW,
             "so", "1-hello", "bob", str(archive)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=120), p.communicate()) for p in procs]
    assert [rc for rc, _ in results] == [0] * 6, results
    repo = Repository(course)
    history = repo.history("1-hello", "bob")
    assert sorted((s.files_dir / "who").read_text() for s in history) == [str(i) for i in range(6)]
    assert sorted(s.name for s in history) == ["2026.02.20 10.00.00"] + [f"2026.02.20 10.00.00.{n}" for n in range(1, 6)]
    assert repo.current("1-hello", "bob") == history[-1]


# --------------------------------------------------------------------------- resubmit


@pytest.fixture
def stored(tmp_path: Path) -> tuple[CourseConfig, Path]:
    """A course with two assignments and three accounts' current submissions."""
    from tests.util import write_course

    extra = {"assignments": {"2-shell": {"deadline": "2026-04-01 23:55:00", "machine": "linux"}}}
    path = write_course(tmp_path, extra=extra)
    glob = tmp_path / "global.yaml"
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    for assignment, account in [("1-hello", "bob"), ("1-hello", "carol"), ("2-shell", "bob")]:
        done = run("submit", "--upload-time", IN_WINDOW, "so", assignment, account, archive, env_config=glob)
        assert done.returncode == 0, done.stderr
    return config.load_course(path), glob


def _aside(course: CourseConfig) -> dict[str, list[str]]:
    repo = Repository(course)
    return {f"{s.assignment}/{s.account}": [p.name for p in s.earlier_results()] for s in repo.iter_current()}


def test_resubmit_selections(stored: tuple[CourseConfig, Path]) -> None:
    course, glob = stored
    done = run("resubmit", "so", "--account", "bob", "--assignment", "1-hello", env_config=glob)
    assert done.returncode == 0, done.stderr
    assert "rechecked so/1-hello/bob/" in done.stdout and "results.1" in done.stdout
    assert _aside(course) == {"1-hello/bob": ["results.1"], "1-hello/carol": [], "2-shell/bob": []}

    assert run("resubmit", "so", "--account", "bob", env_config=glob).returncode == 0
    assert _aside(course) == {"1-hello/bob": ["results.1", "results.2"], "1-hello/carol": [],
                              "2-shell/bob": ["results.1"]}

    assert run("resubmit", "so", "--assignment", "1-hello", env_config=glob).returncode == 0
    assert _aside(course) == {"1-hello/bob": ["results.1", "results.2", "results.3"], "1-hello/carol": ["results.1"],
                              "2-shell/bob": ["results.1"]}

    done = run("resubmit", "so", "--all", env_config=glob)
    assert done.returncode == 0 and done.stdout.count("rechecked") == 3
    assert _aside(course)["2-shell/bob"] == ["results.1", "results.2"]
    assert all(s.status().value == "saved" for s in Repository(course).iter_current())


def test_resubmit_dry_run_changes_nothing(stored: tuple[CourseConfig, Path]) -> None:
    course, glob = stored
    before = sorted(str(p) for p in course.repository.rglob("*"))
    done = run("resubmit", "so", "--all", "--dry-run", env_config=glob)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("would recheck") == 3
    assert sorted(str(p) for p in course.repository.rglob("*")) == before


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "say which submissions"),
    (["--all", "--account", "bob"], 2, "cannot be combined"),
    (["--account", "nobody"], 4, "nobody has no submission"),
    (["--assignment", "9-none"], 4, "no assignment '9-none'"),
])
def test_resubmit_errors(stored: tuple[CourseConfig, Path], args: list[str], code: int, message: str) -> None:
    _, glob = stored
    done = run("resubmit", "so", *args, env_config=glob)
    assert done.returncode == code and message in done.stderr, done.stderr


# --------------------------------------------------------------------------- init-course


def test_init_course_commands(tmp_path: Path) -> None:
    glob = tmp_path / "etc" / "vmchecker" / "config.yaml"
    first = run("init_course", "storer", tmp_path / "so", "--course-id", "so", env_config=glob)
    assert first.returncode == 0, first.stderr
    assert "registered so" in first.stdout
    assert yaml.safe_load(glob.read_text())["courses"]["so"] == str(tmp_path / "so/config.yaml")
    key = (tmp_path / "so/keys/id_ed25519").read_bytes()

    again = run("init_course", "storer", tmp_path / "so", "--course-id", "so", env_config=glob)
    assert again.returncode == 0, again.stderr
    assert "kept existing" in again.stdout and "created" not in again.stdout
    assert (tmp_path / "so/keys/id_ed25519").read_bytes() == key

    clash = run("init_course", "storer", tmp_path / "other", "--course-id", "so", env_config=glob)
    assert clash.returncode == 2 and "already registered" in clash.stderr

    tester = run("init_course", "tester", tmp_path / "t", env_config=glob)
    assert tester.returncode == 0, tester.stderr
    assert tester_config.load_tester(tmp_path / "t/config.yaml").queue_dir == tmp_path / "t/queue"

    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    stranger = run("submit", "--skip-time-checks", "so", "1-hello", "bob", archive, env_config=glob)
    assert stranger.returncode == 3 and "'bob' is not a student of course so" in stranger.stderr  # closed by default
    course_yaml = tmp_path / "so/config.yaml"
    course_yaml.write_text(course_yaml.read_text().replace("  students: []", "  students: [bob]", 1))
    saved = run("submit", "--skip-time-checks", "so", "1-hello", "bob", archive, env_config=glob)
    assert saved.returncode == 0, saved.stderr
