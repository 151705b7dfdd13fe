"""vmchecker-init-course: folders, configs that load as is, keys, registration, reruns."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import yaml

from vmchecker import config, tester_config
from vmchecker.cli.init_course import course_config_text, init_storer, init_tester
from vmchecker.errors import ConfigError, VmcheckerError


def test_storer_creates_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    glob = tmp_path / "etc" / "vmchecker" / "config.yaml"  # neither file nor folder exist
    path = init_storer(tmp_path / "so", "so", glob)
    root = tmp_path / "so"
    assert path == root / "config.yaml"
    for folder in ("repo", "tests", "keys"):
        assert (root / folder).is_dir()
    assert stat.S_IMODE((root / "keys").stat().st_mode) == 0o700
    course = config.load_course(path)
    assert course.id == "so" and course.repository == root / "repo"
    assert "1-hello" in course.assignments and course.assignments["1-hello"].machine in course.machines
    assert "#" in path.read_text()  # commented
    for script in ("build.sh", "run.sh"):
        assert os.access(root / script, os.X_OK)
        assert (root / script).read_text().startswith("#!/bin/bash")
    key, pub = root / "keys/id_ed25519", root / "keys/id_ed25519.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in key.read_text()
    assert pub.read_text().startswith("ssh-ed25519 ") and pub.read_text().strip().endswith("vmchecker-so")
    assert course.resolve(course.storer.known_hosts).read_text() == ""
    assert course.resolve(course.storer.ssh_key) == key
    assert yaml.safe_load(glob.read_text()) == {"courses": {"so": str(path)}}
    assert config.find_course("so", glob).path == path
    assert "registered so" in capsys.readouterr().out


def test_storer_twice_keeps_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    glob = tmp_path / "global.yaml"
    root = tmp_path / "so"
    init_storer(root, "so", glob)
    (root / "config.yaml").write_text((root / "config.yaml").read_text().replace("name: \"so\"", "name: Mine"))
    (root / "build.sh").write_text("#!/bin/bash\necho custom\n")
    (root / "keys/known_hosts").write_text("tester ssh-ed25519 AAAA\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    global_before = glob.read_bytes()
    capsys.readouterr()

    init_storer(root, "so", glob)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert glob.read_bytes() == global_before
    out = capsys.readouterr().out
    assert f"kept existing {root / 'config.yaml'}" in out
    assert f"kept existing {root / 'keys/id_ed25519'}" in out
    assert config.load_course(root / "config.yaml").course.name == "Mine"


def test_missing_public_key_is_rebuilt_from_the_private_one(tmp_path: Path) -> None:
    root = tmp_path / "so"
    init_storer(root, "so", tmp_path / "g.yaml")
    pub = root / "keys/id_ed25519.pub"
    first = pub.read_text().split()[:2]
    pub.unlink()
    init_storer(root, "so", tmp_path / "g.yaml")
    assert pub.read_text().split()[:2] == first


def test_public_key_without_private_key_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "so"
    (root / "keys").mkdir(parents=True)
    (root / "keys/id_ed25519.pub").write_text("ssh-ed25519 AAAA old\n")
    with pytest.raises(VmcheckerError, match="without its private key"):
        init_storer(root, "so", tmp_path / "g.yaml")
    assert (root / "keys/id_ed25519.pub").read_text() == "ssh-ed25519 AAAA old\n"


def test_registration_keeps_other_courses(tmp_path: Path) -> None:
    glob = tmp_path / "global.yaml"
    glob.write_text(yaml.safe_dump({"courses": {"pc": "/srv/pc/config.yaml"}, "daemon": {"listen": "127.0.0.1:1"}}))
    init_storer(tmp_path / "so", "so", glob)
    data = yaml.safe_load(glob.read_text())
    assert data["courses"] == {"pc": "/srv/pc/config.yaml", "so": str(tmp_path / "so/config.yaml")}
    assert data["daemon"] == {"listen": "127.0.0.1:1"}
    assert config.load_global(glob).courses["so"] == tmp_path / "so/config.yaml"


def test_id_registered_elsewhere_is_refused_before_creating(tmp_path: Path) -> None:
    glob = tmp_path / "global.yaml"
    init_storer(tmp_path / "first", "so", glob)
    before = glob.read_bytes()
    with pytest.raises(ConfigError, match="already registered"):
        init_storer(tmp_path / "second", "so", glob)
    assert not (tmp_path / "second").exists()
    assert glob.read_bytes() == before


def test_config_of_another_course_is_refused(tmp_path: Path) -> None:
    init_storer(tmp_path / "so", "so", tmp_path / "g.yaml")
    with pytest.raises(VmcheckerError, match="config of course 'so'"):
        init_storer(tmp_path / "so", "pc", tmp_path / "g.yaml")
    assert "pc" not in yaml.safe_load((tmp_path / "g.yaml").read_text())["courses"]


@pytest.mark.parametrize("bad", ["", "../x", "a b", "-x"])
def test_bad_course_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(VmcheckerError, match="bad course id"):
        init_storer(tmp_path / "c", bad, tmp_path / "g.yaml")
    assert not (tmp_path / "c").exists() and not (tmp_path / "g.yaml").exists()


def test_course_template_dates_follow_today(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(course_config_text("os-2026", dt.date(2026, 2, 16)))
    course = config.load_course(path)
    assert course.id == "os-2026"
    assert course.course.upload_active_from == dt.datetime(2026, 2, 16)
    assert course.assignments["1-hello"].deadline == dt.datetime(2026, 3, 2, 23, 55)
    assert course.course.upload_active_until > course.assignments["1-hello"].deadline


def test_tester_creates_folders_and_config(tmp_path: Path) -> None:
    path = init_tester(tmp_path / "t")
    tester = tester_config.load_tester(path)
    for folder in (tester.queue_dir, tester.work_dir, tester.done_dir, tester.state_dir):
        assert folder.is_dir() and folder.parent == tmp_path / "t"
    assert tester.tester.slots >= 1 and tester.machines == {}
    assert "#" in path.read_text()


def test_tester_twice_keeps_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = init_tester(tmp_path / "t", name="t1")
    path.write_text(path.read_text().replace("slots: 2", "slots: 5"))
    (tmp_path / "t/queue/job.zip").write_text("bundle")
    init_tester(tmp_path / "t", name="t1")
    assert tester_config.load_tester(path).tester.slots == 5
    assert tester_config.load_tester(path).tester.name == "t1"
    assert (tmp_path / "t/queue/job.zip").read_text() == "bundle"
    assert f"kept existing {path}" in capsys.readouterr().out
