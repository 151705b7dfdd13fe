"""The SFTP transport against a real OpenSSH server, on loopback and in a tester
namespace: atomic bundle delivery, result fetching with refusals, host key
checking, connection reuse and recovery, dead testers."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import paramiko
import pytest

from tests.lab import netns, skip_unless_lab, sshd
from tests.storer.sftp_helpers import known_hosts, link_to, make_job, refused_fetch
from vmchecker.errors import ResultRefused, TransportError
from vmchecker.storer import testers_admin, transport  # TesterLink not by name: pytest collects "Test*"
from vmchecker.storer.transport import fetch_host_key

pytestmark = pytest.mark.usefixtures("no_lab_leftovers")

BUNDLE = "so_1-hello_alice_17.zip"


# --------------------------------------------------------------------------- bundles


def test_bundle_lands_whole_under_its_final_name(server, tmp_path, course_key):
    queue = server.make_dir("queue")
    (queue / f"{BUNDLE}.part").write_bytes(b"stale half upload")
    bundle = tmp_path / "bundle.zip"
    content = os.urandom(12 * 1024 * 1024)
    bundle.write_bytes(content)

    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def watch() -> None:  # what a queue manager polling queue/ could observe
        while not done.is_set():
            for entry in os.scandir(queue):
                try:
                    seen.append((entry.name, entry.stat().st_size))
                except FileNotFoundError:
                    pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with link_to(server, tmp_path, course_key) as link:
            remote = link.send_bundle(bundle, str(queue), BUNDLE)
    finally:
        done.set()
        watcher.join()

    assert remote == f"{queue}/{BUNDLE}"
    assert os.listdir(queue) == [BUNDLE]
    assert (queue / BUNDLE).read_bytes() == content
    assert {name for name, _ in seen} <= {BUNDLE, f"{BUNDLE}.part"}
    assert all(size == len(content) for name, size in seen if name == BUNDLE)


def test_resend_replaces_the_bundle(server, tmp_path, course_key):
    queue = server.make_dir("queue")
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    first.write_bytes(b"first")
    second.write_bytes(b"second version")
    with link_to(server, tmp_path, course_key) as link:
        link.send_bundle(first, str(queue), BUNDLE)
        link.send_bundle(second, str(queue), BUNDLE)
    assert os.listdir(queue) == [BUNDLE]
    assert (queue / BUNDLE).read_bytes() == b"second version"
    assert (queue / BUNDLE).stat().st_mode & 0o777 == 0o600   # it holds the job's key


def test_send_to_a_missing_queue_is_a_transport_error(server, tmp_path, course_key):
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(b"x")
    with link_to(server, tmp_path, course_key) as link, pytest.raises(TransportError) as err:
        link.send_bundle(bundle, str(server.files / "no-such-queue"), BUNDLE)
    assert "no-such-queue" in err.value.message and "tester t1" in err.value.message


# --------------------------------------------------------------------------- results


def test_results_are_fetched(server, tmp_path, course_key):
    files = {"build-stdout.vmr": b"gcc ok\n", "run-stdout.vmr": b"Hello, world!\n", "result.json": b"{}"}
    job = make_job(server, files)
    results = tmp_path / "sub" / "results"
    with link_to(server, tmp_path, course_key) as link:
        paths = link.fetch_results(str(job), list(files), results)
    assert paths == [results / name for name in files]
    assert {p.name: p.read_bytes() for p in results.iterdir()} == files
    assert os.listdir(results.parent) == ["results"]  # no staging folder left


@pytest.mark.parametrize("name", ["../grade.vmr", "a/b.vmr", "/etc/passwd", "x\0y", "", ".", "..", "a..b"])
def test_path_like_names_are_refused_before_connecting(tmp_path, course_key, name):
    link = transport.TesterLink("t1", "127.0.0.1", 1, "nobody", course_key[0], tmp_path / "known_hosts")
    with pytest.raises(ResultRefused):
        link.fetch_results("/srv/done/17", ["ok.vmr", name], tmp_path / "results")
    assert link.connects == 0
    assert not (tmp_path / "results").exists()


def test_symlink_is_refused(server, tmp_path, course_key):
    job = make_job(server, {"ok.vmr": b"fine"})
    (job / "evil.vmr").symlink_to("/etc/shadow")
    assert "symbolic link" in refused_fetch(server, tmp_path, course_key, job, ["ok.vmr", "evil.vmr"])


def test_directory_and_fifo_are_refused(server, tmp_path, course_key):
    job = make_job(server, {"ok.vmr": b"fine"})
    (job / "dir.vmr").mkdir()
    os.mkfifo(job / "fifo.vmr")
    for name in ("dir.vmr", "fifo.vmr"):
        assert "not a regular file" in refused_fetch(server, tmp_path, course_key, job, ["ok.vmr", name])


def test_missing_file_is_refused(server, tmp_path, course_key):
    job = make_job(server, {"ok.vmr": b"fine"})
    assert "no such file" in refused_fetch(server, tmp_path, course_key, job, ["ok.vmr", "ghost.vmr"])


def test_oversize_file_and_total_are_refused(server, tmp_path, course_key):
    job = make_job(server, {"ok.vmr": b"a" * 600, "big.vmr": b"b" * 1001, "more.vmr": b"c" * 600})
    message = refused_fetch(server, tmp_path, course_key, job, ["ok.vmr", "big.vmr"], max_file_size=1000)
    assert "big.vmr" in message and "over the limit" in message
    message = refused_fetch(server, tmp_path, course_key, job, ["ok.vmr", "more.vmr"],
                            max_file_size=1000, max_total_size=1000)
    assert "more.vmr" in message


# --------------------------------------------------------------------------- trust


def test_unknown_host_is_refused(server, tmp_path, course_key):
    kh = known_hosts(tmp_path)  # empty
    with link_to(server, tmp_path, course_key) as link, pytest.raises(TransportError) as err:
        link.ping()
    assert server.known_hosts_entry in err.value.message and str(kh) in err.value.message
    assert "not in" in err.value.message
    assert kh.read_text() == ""  # nothing learned
    assert server.accepted_logins() == 0


def test_mismatching_host_key_is_refused(server, tmp_path, course_key):
    kh = known_hosts(tmp_path, sshd.foreign_host_key_line(tmp_path, server.known_hosts_entry))
    with link_to(server, tmp_path, course_key) as link, pytest.raises(TransportError) as err:
        link.ping()
    assert "mismatch" in err.value.message and str(kh) in err.value.message
    assert server.known_hosts_entry in err.value.message
    assert server.accepted_logins() == 0


def test_missing_known_hosts_file(server, tmp_path, course_key):
    link = transport.TesterLink("t1", server.address, server.port, server.user, course_key[0], tmp_path / "nope")
    with pytest.raises(TransportError, match="known_hosts file .*nope does not exist"):
        link.ping()


def test_key_not_authorized(ssh_server, tmp_path, course_key):
    with link_to(ssh_server, tmp_path, course_key) as link, pytest.raises(TransportError) as err:
        link.ping()
    assert "refused the course key" in err.value.message and str(course_key[0]) in err.value.message


# --------------------------------------------------------------------------- connection


def test_connection_is_reused_and_reopened_after_sshd_restarts(server, tmp_path, course_key):
    queue = server.make_dir("queue")
    job = make_job(server, {"a.vmr": b"a"})
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(b"zip")
    with link_to(server, tmp_path, course_key) as link:
        link.ping()
        link.send_bundle(bundle, str(queue), BUNDLE)
        link.fetch_results(str(job), ["a.vmr"], tmp_path / "r1")
        assert link.connects == 1 and server.accepted_logins() == 1

        server.restart()  # every session dies with it: the link's connection is broken
        link.fetch_results(str(job), ["a.vmr"], tmp_path / "r2")
        link.ping()
        assert link.connects == 2 and server.accepted_logins() == 2
        assert link.health()["ok"] is True


def test_a_dead_connection_that_looks_alive_is_reopened_once(server, tmp_path, course_key, monkeypatch):
    with link_to(server, tmp_path, course_key) as link:
        link.ping()
        dead = link._client.get_transport()
        server.restart()
        monkeypatch.setattr(dead, "is_active", lambda: True)  # as if paramiko had not noticed yet
        link.ping()
        assert link.connects == 2 and link._client.get_transport() is not dead


def test_operations_reuse_an_idle_sftp_channel_but_never_a_failed_or_a_busy_one(server, tmp_path, course_key,
                                                                                  monkeypatch):
    """Each operation has a channel of its own; one that ended cleanly serves the next
    (three round trips less on a job's send and fetch), one that failed is closed."""
    opened: list[int] = []
    real_open = paramiko.SSHClient.open_sftp
    monkeypatch.setattr(paramiko.SSHClient, "open_sftp", lambda self: opened.append(1) or real_open(self))
    job = make_job(server, {"a.vmr": b"a"})
    with link_to(server, tmp_path, course_key) as link:
        for i in range(3):
            link.fetch_results(str(job), ["a.vmr"], tmp_path / f"r{i}")
        assert len(opened) == 1, "one after the other, the operations share one channel"
        with pytest.raises(ResultRefused, match="no such file"):
            link.fetch_results(str(job), ["ghost.vmr"], tmp_path / "r-ghost")
        link.fetch_results(str(job), ["a.vmr"], tmp_path / "r-after")
        assert len(opened) == 2, "the channel of a failed operation is not used again"

        both_in = threading.Barrier(2, timeout=60)
        channels: list[object] = []

        def hold(sftp):   # two operations at once, each holding its channel until both are in
            channels.append(sftp)
            both_in.wait()
            return sftp.listdir(str(job))

        threads = [threading.Thread(target=link._run, args=("list", hold)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(channels) == 2 and channels[0] is not channels[1], "a busy channel is never shared"
    assert (tmp_path / "r-after" / "a.vmr").read_bytes() == b"a"


def test_threads_share_one_link(server, tmp_path, course_key):
    queue = server.make_dir("queue")
    bundles = []
    for i in range(6):
        path = tmp_path / f"{i}.zip"
        path.write_bytes(os.urandom(256 * 1024))
        bundles.append(path)
    errors: list[BaseException] = []
    with link_to(server, tmp_path, course_key) as link:
        def send(path: Path) -> None:
            try:
                link.send_bundle(path, str(queue), f"job{path.stem}.zip")
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
        threads = [threading.Thread(target=send, args=(p,)) for p in bundles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert link.connects == 1
    assert sorted(os.listdir(queue)) == sorted(f"job{p.stem}.zip" for p in bundles)
    for p in bundles:
        assert (queue / f"job{p.stem}.zip").read_bytes() == p.read_bytes()


def test_a_stopped_tester_fails_at_once(server, tmp_path, course_key):
    with link_to(server, tmp_path, course_key, connect_timeout=2) as link:
        link.ping()
        server.stop()
        with pytest.raises(TransportError) as err:
            link.ping()
        assert "cannot connect" in err.value.message and link.health()["ok"] is False
        server.start()
        link.ping()
        assert link.health()["ok"] is True


@pytest.mark.netns
@pytest.mark.sshd
def test_an_unplugged_tester_host_times_out(lab_network, tmp_path, course_key):
    host = lab_network.add_host("t1")
    with sshd.SshServer(host) as server:
        server.authorize(testers_admin.authorized_keys_line(course_key[1]))
        with link_to(server, tmp_path, course_key, connect_timeout=1) as link:
            link.ping()
            link.close()
            host.link_down()
            with pytest.raises(TransportError, match="cannot connect"):
                link.ping()
            host.link_up()


def test_a_silent_tester_times_out(tmp_path, course_key):
    """A tester that accepts TCP but never speaks SSH (hung sshd) gives up after the timeout."""
    skip_unless_lab()
    netns.check_route("127.0.0.1", "lo")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        known_hosts(tmp_path)
        link = transport.TesterLink("t1", "127.0.0.1", port, "x", course_key[0], tmp_path / "keys" / "known_hosts",
                          connect_timeout=0.5)
        with pytest.raises(TransportError, match="cannot connect"):
            link.ping()
        with pytest.raises(TransportError, match="cannot read the SSH host key"):
            fetch_host_key("127.0.0.1", port, timeout=0.5)
