"""What the storer says about a tester it cannot use, against a real sshd (loopback and a
tester namespace): a tester whose own name or slots disagree with the course's is
refused with both values (by the link, by the daemon at start-up, by --add-tester); a
locked account, a missing or closed queue folder and a closed port each get words a
sysadmin can act on; vmchecker-status shows them."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.lab import sshd
from tests.util import free_port, write_course
from vmchecker import config
from vmchecker.cli import status as status_cli
from vmchecker.cli.init_course import init_storer
from vmchecker.contract import TESTER_INFO
from vmchecker.errors import ConfigError, TransportError, VmcheckerError
from vmchecker.storer import testers_admin, transport  # TesterLink not by name: pytest collects "Test*"
from vmchecker.storer.courses import with_daemon_address
from vmchecker.storer.daemon import StorerDaemon

pytestmark = pytest.mark.usefixtures("no_lab_leftovers")


def publish(queue: Path, name: str, slots: int) -> None:
    """What a tester's queue manager writes at start-up."""
    (queue / TESTER_INFO).write_text(json.dumps({"name": name, "slots": slots, "config": "/srv/t/config.yaml"}))


def course_on(server: sshd.SshServer, root: Path, *, name: str = "t1", slots: int = 2) -> config.CourseConfig:
    """Course ``so`` with one tester on ``server`` (the course key authorized there)."""
    queue = server.make_dir("queue")
    path = write_course(root, extra={"testers": {name: {"host": server.address, "port": server.port,
                                                        "user": server.user, "queue": str(queue), "slots": slots}},
                                     "machines": {"linux": {"testers": [name]}}})
    course = config.load_course(path)
    public = testers_admin.ensure_course_key(course.resolve(course.storer.ssh_key), "vmchecker-so")
    server.authorize(testers_admin.authorized_keys_line(public))
    course.resolve(course.storer.known_hosts).write_text(server.host_key_line() + "\n")
    return course


@pytest.mark.parametrize(("theirs", "expected"), [
    (("t1", 3), "the course gives it 2 slot(s) but it runs 3 (tester.slots in /srv/t/config.yaml)"),
    (("fast", 2), "the course calls it 't1' but it calls itself 'fast' (tester.name in /srv/t/config.yaml)"),
])
def test_a_tester_that_disagrees_is_refused_with_both_values(ssh_server, tmp_path, theirs, expected):
    course = course_on(ssh_server, tmp_path)
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(b"zip")
    publish(ssh_server.files / "queue", *theirs)
    with transport.TesterLink.from_config(course, "t1") as link:
        with pytest.raises(TransportError) as err:
            link.send_bundle(bundle, course.testers["t1"].queue, "so_1-hello_a_1.zip")
        assert expected in err.value.message and link.mismatch == err.value.message
        assert not (ssh_server.files / "queue/so_1-hello_a_1.zip").exists()   # nothing sent to it

    # the daemon refuses to start, saying the same
    daemon = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    with pytest.raises(VmcheckerError, match="refusing to start") as err:
        daemon.serve()
    assert expected in err.value.message

    publish(ssh_server.files / "queue", "t1", 2)   # made to agree: used
    with transport.TesterLink.from_config(course, "t1") as link:
        link.send_bundle(bundle, course.testers["t1"].queue, "so_1-hello_a_1.zip")
        assert link.mismatch is None


def test_add_tester_on_a_fresh_course_learns_the_slots_and_serves_the_machine(ssh_server, tmp_path):
    root = init_storer(tmp_path / "os101", "os101", tmp_path / "g.yaml").parent
    queue = ssh_server.make_dir("queue")
    publish(queue, "t1", 3)
    public = (root / "keys/id_ed25519.pub").read_text().strip()
    ssh_server.authorize(testers_admin.authorized_keys_line(public))   # the tester was set up first

    text = testers_admin.add_tester(root, "t1", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))

    course = config.load_course(root / "config.yaml")
    assert course.testers["t1"].slots == 3 and "slots learned from the tester" in text
    assert course.machines["linux"].testers == ["t1"]
    assert "# One entry per tester machine" in (root / "config.yaml").read_text()   # comments kept
    with pytest.raises(ConfigError, match="a tester of this name already exists"):
        testers_admin.add_tester(root, "t1", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))


def test_add_tester_refuses_a_tester_that_calls_itself_otherwise(ssh_server, tmp_path):
    root = init_storer(tmp_path / "os101", "os101", tmp_path / "g.yaml").parent
    queue = ssh_server.make_dir("queue")
    publish(queue, "tester", 2)
    ssh_server.authorize(testers_admin.authorized_keys_line((root / "keys/id_ed25519.pub").read_text().strip()))
    before = (root / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="calls itself 'tester', not 't1'"):
        testers_admin.add_tester(root, "t1", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))
    assert (root / "config.yaml").read_text() == before


def test_add_tester_before_the_key_is_installed_writes_the_default_and_says_so(ssh_server, tmp_path):
    root = init_storer(tmp_path / "os101", "os101", tmp_path / "g.yaml").parent
    queue = ssh_server.make_dir("queue")
    text = testers_admin.add_tester(root, "t1", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))
    assert config.load_course(root / "config.yaml").testers["t1"].slots == 2
    assert "could not read the tester's settings yet" in text and "authentication refused" in text
    assert "which the daemon checks once it can" in text


def test_queue_missing_or_closed_is_named(ssh_server, tmp_path):
    course = course_on(ssh_server, tmp_path)
    queue = ssh_server.files / "queue"
    with transport.TesterLink.from_config(course, "t1") as link:
        link.probe()                                   # fine as set up
        queue.chmod(0o555)
        os.chown(queue, 0, 0)
        with pytest.raises(TransportError, match=f"{ssh_server.user} may not write in the queue folder {queue}"):
            link.probe()
        queue.rmdir()
        with pytest.raises(TransportError, match=f"the queue folder {queue} does not exist on the tester"):
            link.probe()


def test_status_says_why_a_tester_is_unreachable(tmp_path, running_daemon, capsys):
    closed = free_port()
    course = config.load_course(write_course(tmp_path, extra={"testers": {"t1": {"host": "127.0.0.1", "port": closed}}}))
    testers_admin.ensure_course_key(course.resolve(course.storer.ssh_key), "vmchecker-so")
    course.resolve(course.storer.known_hosts).write_text("")
    daemon = running_daemon(tmp_path / "global.yaml")
    daemon.daemon.check_testers()
    assert status_cli.main(["--url", daemon.url, "so"]) == 0
    out = capsys.readouterr().out
    assert "unreachable: tester t1 (vmchecker@127.0.0.1:" in out
    assert "is sshd running on the tester, on this address and port?" in out


@pytest.mark.sshd
def test_a_locked_account_gets_the_unlock_hint(tmp_path):
    """A ``useradd`` account is locked ('!'): sshd refuses it and the storer is told how
    to unlock it (an account of its own, so no other test's logins are touched)."""
    user = f"vmck-l{os.getpid()}"[:32]
    try:
        with sshd.SshServer(user=user) as server:
            course = course_on(server, tmp_path)
            subprocess.run(["usermod", "-p", "!", user], check=True)       # as useradd leaves it
            with transport.TesterLink.from_config(course, "t1") as link, pytest.raises(TransportError) as err:
                link.ping()
            assert "authentication refused" in err.value.message
            assert f"if sshd logs 'account is locked', unlock the account for key logins with: usermod -p '*' {user}" \
                in err.value.message
            assert "account is locked" in server.log_path.read_text()       # what sshd saw
            subprocess.run(["usermod", "-p", "*", user], check=True)
            with transport.TesterLink.from_config(course, "t1") as link:
                link.ping()
    finally:
        try:
            pwd.getpwnam(user)
            subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)
        except KeyError:
            pass


def test_a_course_whose_daemon_url_is_not_the_daemons_stops_the_start(tmp_path):
    write_course(tmp_path, extra={"storer": {"daemon": "http://127.0.0.1:1/"}})
    glob = tmp_path / "global.yaml"
    glob.write_text(yaml.safe_dump({**yaml.safe_load(glob.read_text()), "daemon": {"listen": "127.0.0.1:0"}}))
    with pytest.raises(ConfigError, match=r"storer.daemon: is http://127.0.0.1:1/, but the storer daemon listens"
                                          r" on 127.0.0.1:\d+ \(daemon.listen in"):
        StorerDaemon(glob, state_dir=tmp_path / "state")


def test_a_course_takes_the_daemons_address_unless_it_names_the_same(tmp_path):
    course = config.load_course(write_course(tmp_path))
    glob = tmp_path / "global.yaml"
    assert with_daemon_address(course, ("127.0.0.1", 4242), glob).storer.daemon == "http://127.0.0.1:4242/"
    named = config.with_daemon_url(course, "http://localhost:4242/")      # another name, same address
    assert with_daemon_address(named, ("127.0.0.1", 4242), glob).storer.daemon == "http://localhost:4242/"
    assert with_daemon_address(named, ("0.0.0.0", 4242), glob).storer.daemon == "http://localhost:4242/"
    with pytest.raises(ConfigError, match="is http://localhost:4242/, but the storer daemon listens on 127.0.0.1:4243"):
        with_daemon_address(named, ("127.0.0.1", 4243), glob)
    with pytest.raises(ConfigError, match="storer.daemon: is not set, and the daemon's 0.0.0.0:4242 listens on every"):
        with_daemon_address(course, ("0.0.0.0", 4242), glob)
