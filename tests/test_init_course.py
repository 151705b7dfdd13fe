"""vmchecker-init-course: folders, configs that load as is, keys, registration, reruns."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from tests.util import free_port
from vmchecker import config, tester_config
from vmchecker.cli.init_course import course_config_text, init_storer, init_tester, main
from vmchecker.contract import TESTER_INFO
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
    assert yaml.safe_load(glob.read_text()) == {
        "daemon": {"listen": "127.0.0.1:19999", "state": "/var/lib/vmchecker"}, "courses": {"so": str(path)}}
    assert "# The one place for the daemon's address" in glob.read_text()   # the commented template
    assert config.find_course("so", glob).path == path
    # one address: the course names none, and takes the daemon's from the global file
    assert course.storer.daemon == "" and config.find_course("so", glob).storer.daemon == "http://127.0.0.1:19999/"
    assert course.testers == {} and course.machines["linux"].testers == []   # --add-tester fills them
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
    init_storer(tmp_path / "os", "os", glob)     # a second course: one more line, comments kept
    assert list(yaml.safe_load(glob.read_text())["courses"]) == ["pc", "so", "os"]
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


def test_global_daemon_listen_gives_every_course_its_url(tmp_path: Path) -> None:
    glob = tmp_path / "g.yaml"
    init_storer(tmp_path / "so", "so", glob)
    glob.write_text(glob.read_text().replace("listen: 127.0.0.1:19999", "listen: 10.0.0.1:20000"))
    assert config.find_course("so", glob).storer.daemon == "http://10.0.0.1:20000/"
    glob.write_text(glob.read_text().replace("listen: 10.0.0.1:20000", "listen: 0.0.0.0:20000"))
    with pytest.raises(ConfigError, match="daemon.listen: 0.0.0.0:20000 listens on every address"):
        _ = config.load_global(glob).daemon_url


def test_a_failed_add_tester_never_says_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "g.yaml"))
    closed = free_port()   # nothing listens there
    code = main(["storer", str(tmp_path / "os101"), "--course-id", "os101",
                 "--add-tester", "t1", f"127.0.0.1:{closed}", "vmchecker-tester", "/srv/vmchecker-tester/queue"])
    out, err = capsys.readouterr()
    assert code != 0 and "ready" not in out
    assert "cannot connect to 127.0.0.1" in err and "Connection refused" in err
    assert config.load_course(tmp_path / "os101/config.yaml").testers == {}   # unchanged


def test_tester_without_user_prints_the_account_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKMe0iOIMIhB41kwaIv vmchecker-so\n")
    init_tester(tmp_path / "t", name="t1", storer_key=pub)
    out = capsys.readouterr().out
    assert "useradd --system --create-home --shell /usr/sbin/nologin USER" in out
    assert "usermod -p '*' USER" in out                       # the lock sshd would refuse
    assert 'restrict,command="internal-sftp" ssh-ed25519 AAAA' in out
    assert f"chown USER: {tmp_path / 't/queue'}" in out
    info = json.loads((tmp_path / "t/queue" / TESTER_INFO).read_text())
    assert (info["name"], info["slots"]) == ("t1", 2)


def test_tester_storer_key_must_be_a_public_key(tmp_path: Path) -> None:
    bad = tmp_path / "id_ed25519"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(VmcheckerError, match="not an OpenSSH public key"):
        init_tester(tmp_path / "t", storer_key=bad)
    assert not (tmp_path / "t").exists()
