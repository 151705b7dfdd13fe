"""Adding a tester to a course (vmchecker/storer/testers_admin.py): the config edit that
keeps an admin's comments, the host key recorded from a real sshd, the key line the
admin installs, and the refusals."""

from __future__ import annotations

import pytest
import yaml

from tests.lab import sshd
from tests.util import write_course
from vmchecker import config
from vmchecker.errors import ConfigError, TransportError
from vmchecker.storer import testers_admin, transport  # TesterLink not by name: pytest collects "Test*"

BUNDLE = "so_1-hello_alice_17.zip"

COMMENTED = """\
# The course config, with comments an admin wrote.
course:
  id: so
  repository: repo
storer:
  ssh_key: keys/id_ed25519   # the key testers trust
  known_hosts: keys/known_hosts
testers:
  # the first tester
  t1: {host: 127.0.0.1, port: 22, user: vmchecker, queue: /srv/q, slots: 2}

# machines follow
machines:
  linux: {type: lxc, vm: base, testers: [t1]}
"""


def test_add_tester_records_key_edits_config_and_works(ssh_server, tmp_path):
    root = tmp_path / "so"
    root.mkdir()
    (root / "config.yaml").write_text(COMMENTED)
    queue = ssh_server.make_dir("queue")

    text = testers_admin.add_tester(root, "t2", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))

    new_text = (root / "config.yaml").read_text()
    assert new_text.startswith(COMMENTED.split("\n\n")[0])  # comments and layout kept
    assert "# machines follow" in new_text and "# the key testers trust" in new_text
    assert not list(root.glob("config.yaml.bak*"))
    course = config.load_course(root / "config.yaml")
    t2 = course.testers["t2"]
    assert (t2.host, t2.port, t2.user, t2.queue) == (ssh_server.address, ssh_server.port, ssh_server.user, str(queue))
    assert ssh_server.host_key_line() in (root / "keys" / "known_hosts").read_text().splitlines()

    line = next(x for x in text.splitlines() if x.startswith(testers_admin.AUTHORIZED_KEY_OPTIONS))
    assert line.split()[2] == (root / "keys" / "id_ed25519.pub").read_text().split()[1]
    ssh_server.authorize(line)  # exactly what the admin is told to install
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(b"zip")
    with transport.TesterLink.from_config(course, "t2") as link:
        link.send_bundle(bundle, t2.queue, BUNDLE)
    assert (queue / BUNDLE).read_bytes() == b"zip"

    # the same host under another name: its key is already there, nothing duplicated
    testers_admin.add_tester(root, "t3", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))
    assert (root / "keys" / "known_hosts").read_text().count(ssh_server.known_hosts_entry + " ") == 1
    assert set(config.load_course(root / "config.yaml").testers) == {"t1", "t2", "t3"}

    with pytest.raises(ConfigError, match="already exists"):
        testers_admin.add_tester(root, "t2", ssh_server.address, ssh_server.port, ssh_server.user, str(queue))


def test_add_tester_refuses_to_replace_a_different_key(ssh_server, tmp_path):
    path = write_course(tmp_path)
    kh = path.parent / "keys" / "known_hosts"
    kh.parent.mkdir()
    kh.write_text(sshd.foreign_host_key_line(tmp_path, ssh_server.known_hosts_entry) + "\n")
    before = (path.read_text(), kh.read_text())
    with pytest.raises(TransportError) as err:
        testers_admin.add_tester(path.parent, "t2", ssh_server.address, ssh_server.port, "u", "/q")
    assert "refusing to replace" in err.value.message and str(kh) in err.value.message
    assert (path.read_text(), kh.read_text()) == before


def test_add_tester_rewrites_a_flow_style_block_with_a_backup(ssh_server, tmp_path):
    root = tmp_path / "so"
    root.mkdir()
    original = COMMENTED.replace(
        "testers:\n  # the first tester\n  t1: {host: 127.0.0.1, port: 22, user: vmchecker, queue: /srv/q, slots: 2}\n",
        "testers: {t1: {host: 127.0.0.1, port: 22, user: vmchecker, queue: /srv/q}}\n")
    (root / "config.yaml").write_text(original)
    text = testers_admin.add_tester(root, "t2", ssh_server.address, ssh_server.port, ssh_server.user, "/q")
    assert "rewritten" in text
    assert (root / "config.yaml.bak").read_text() == original
    assert set(config.load_course(root / "config.yaml").testers) == {"t1", "t2"}


@pytest.mark.parametrize("before", [
    "course: {id: so}\n",
    "course: {id: so}\ntesters: {}  # none yet\nmachines: {}\n",
    "course: {id: so}\ntesters:\nmachines: {}\n",
    "course: {id: so}\ntesters:\n    t1: {host: h, user: u, queue: /q}\n    # t9: retired\n\n# next\nmachines: {}\n",
    "course: {id: so}\ntesters:\n  t1:\n    host: h\n    user: u  # nested\n    queue: /q\nmachines: {}",
])
def test_insert_tester_text_keeps_the_rest(before):
    body = {"host": "10.231.1.2", "port": 22, "user": "vmchecker", "queue": "/srv/q", "slots": 1}
    after = testers_admin.insert_tester_text(before, "t2", body)
    data, new = yaml.safe_load(before), yaml.safe_load(after)
    assert new["testers"]["t2"] == body
    assert {k: v for k, v in new.items() if k != "testers"} == {k: v for k, v in data.items() if k != "testers"}
    assert {k: v for k, v in new["testers"].items() if k != "t2"} == (data.get("testers") or {})
    for line in before.splitlines():
        if "#" in line:
            assert line.split("#", 1)[1] in after
