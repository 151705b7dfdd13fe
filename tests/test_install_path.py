"""INSTALL's path, as a new sysadmin follows it: a course ``so`` with one tester on the
same machine, set up with the commands of INSTALL sections 2 and 3 as written, graded
end to end on a real LXC guest (10 points for a correct hello).

The commands are those of INSTALL word for word (:data:`STEPS`; the test first checks
that each still stands in INSTALL, so the two cannot drift apart), run from a fresh
folder in /tmp with ``$VMCHECKER_CONFIG`` pointing at a global file there. Only the
names a real machine would have are mapped to this test's own (:func:`mapped`): the
folders, the two accounts (pid-suffixed, removed afterwards), the tester's address and
the daemon's port. What a sysadmin edits by hand is done as a sysadmin would (the global
file's daemon section, the course's students and tests). Where this lab differs:

* ``lxc-resources/build-base.sh`` is not run: the lab's base container exists (``make base``);
* sshd is not the system's but one of the test's own on loopback (tests/lab/sshd.py's way),
  configured as Debian's is where it matters (authorized_keys in the account's home with
  sshd's StrictModes, UsePAM no: a locked account is refused);
* the storer's processes run as root, not as the service user: this lab's Python lives
  under /root, which a system account cannot reach (``runuser -u vmchecker --`` is dropped).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import lxc_unusable, netns, skip_unless_lab, sshd
from tests.util import free_port, make_zip, pid_alive, wait_for

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "INSTALL"
BIN = Path(sys.executable).parent          # the venv's commands, as INSTALL section 1 installs them
BASE = "vmchecker-base"
USER_PREFIX = "vmck-"                      # with s (storer) or t (tester), and the test's pid

# INSTALL sections 2 and 3, in the order a sysadmin runs them; "&" marks the ones that
# keep running (the queue manager, the daemon).
STEPS = {
    "storer": [
        "useradd --system --create-home --home-dir /var/lib/vmchecker --shell /usr/sbin/nologin vmchecker",
        "vmchecker-init-course storer /srv/vmchecker/so --course-id so",
        "chown -R vmchecker: /srv/vmchecker/so",
    ],
    "tester": [
        "vmchecker-init-course tester /srv/vmchecker-tester --name t1 --user vmchecker-tester --storer-key /root/so.pub",
        "& vmchecker-queue-manager /srv/vmchecker-tester",
    ],
    "add tester": [
        "vmchecker-init-course storer /srv/vmchecker/so --course-id so --add-tester t1 10.0.0.2:22 vmchecker-tester"
        " /srv/vmchecker-tester/queue",
        "chown -R vmchecker: /srv/vmchecker/so",
        "& vmchecker-storer-daemon",
    ],
    "check": [
        "runuser -u vmchecker -- vmchecker-submit so 1-hello alice hello.zip",
        "vmchecker-status so",
    ],
}
SKIPPED = ["lxc-resources/build-base.sh vmchecker-base"]   # the lab's base container exists

HELLO = {"main.c": '#include <stdio.h>\nint main(void) { puts("Hello, world!"); return 0; }\n',
         "Makefile": "main: main.c\n\tgcc -Wall -o main main.c\n"}
TESTS = {"tests/1.in": "", "tests/1.out": "Hello, world!\n"}   # what the template's run.sh compares


def install_commands() -> list[str]:
    """Every command line of INSTALL (two-space indented, comment dropped)."""
    return [line.strip().split("  #")[0].strip() for line in INSTALL.read_text().splitlines()
            if line.startswith("  ") and not line.startswith("   ")]


def test_install_lists_these_commands():
    """The test runs INSTALL's own commands: each is there word for word."""
    written = install_commands()
    for command in [c.removeprefix("& ") for group in STEPS.values() for c in group] + SKIPPED:
        assert command in written, f"INSTALL no longer says {command!r}: update the test with it"


class Lab:
    """The names a real machine has, and this test's own."""

    def __init__(self, top: Path):
        pid = os.getpid()
        self.top = top
        self.course = top / "srv" / "so"
        self.tester = top / "tester"
        self.state = top / "state"
        self.glob = top / "etc" / "config.yaml"
        self.service_user = f"{USER_PREFIX}s{pid}"
        self.tester_user = f"{USER_PREFIX}t{pid}"
        self.ssh_port = free_port("127.0.0.1")
        self.daemon_port = free_port("127.0.0.1")
        self.env = {**os.environ, "VMCHECKER_CONFIG": str(self.glob), "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.logs: list = []
        self.procs: list[subprocess.Popen] = []

    def mapped(self, command: str) -> list[str]:
        """INSTALL's command with this lab's names (word by word)."""
        words = {"vmchecker": self.service_user, "vmchecker:": f"{self.service_user}:",
                 "vmchecker-tester": self.tester_user, "10.0.0.2:22": f"127.0.0.1:{self.ssh_port}",
                 "/root/so.pub": str(self.top / "so.pub"), "hello.zip": str(self.top / "hello.zip")}
        paths = {"/srv/vmchecker/so": self.course, "/srv/vmchecker-tester": self.tester,
                 "/var/lib/vmchecker": self.state}
        argv = []
        for word in shlex.split(command):
            for real, ours in paths.items():
                if word == real or word.startswith(real + "/"):
                    word = str(ours) + word[len(real):]
            argv.append(words.get(word, word))
        if argv[:4] == ["runuser", "-u", self.service_user, "--"]:
            argv = argv[4:]   # this lab's Python is closed to system accounts (module docstring)
        return argv

    def run(self, command: str) -> str:
        argv = self.mapped(command)
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, command: str) -> subprocess.Popen:
        argv = self.mapped(command)
        log = open(self.top / f"{Path(argv[0]).name}.log", "ab")
        self.logs.append(log)
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(proc)
        return proc

    def step(self, name: str) -> list[str]:
        outputs = []
        for command in STEPS[name]:
            if command.startswith("& "):
                self.start(command[2:])
            else:
                outputs.append(self.run(command))
        return outputs

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.top.glob("*.log"))

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for log in self.logs:
            log.close()
        for user in (self.tester_user, self.service_user):
            remove_user(user)
        shutil.rmtree(self.top, ignore_errors=True)


def remove_user(user: str) -> None:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(user)
        subprocess.run(["userdel", "--remove", user], capture_output=True, check=False)


def remove_dead_users() -> None:
    """Accounts an earlier run of this test left (its pid is gone)."""
    for entry in pwd.getpwall():
        match = re.fullmatch(rf"{USER_PREFIX}[st](\d+)", entry.pw_name)
        if match and not pid_alive(int(match.group(1))):
            remove_user(entry.pw_name)


class SshdOfTheTester(sshd.SshServer):
    """The tester's sshd on loopback, with the system's way of finding keys: the
    account's own ~/.ssh/authorized_keys under StrictModes. The account is the one
    INSTALL's commands made: this server neither creates nor unlocks it."""

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key_path}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin no\n"
            f"AllowUsers {self.user}\nUseDNS no\nLogLevel INFO\nSubsystem sftp internal-sftp\n")


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch, no_lab_leftovers) -> Iterator[Lab]:
    skip_unless_lab()
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    remove_dead_users()
    top = Path(tempfile.mkdtemp(prefix=f"vmck-install-{os.getpid()}-"))
    top.chmod(0o755)   # the tester's account must reach its queue/ below
    lab = Lab(top)
    monkeypatch.setattr(sshd, "ensure_user", pwd.getpwnam)   # the account is INSTALL's, as made
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.sshd
@pytest.mark.lxc
def test_install_path_grades_a_submission_end_to_end(lab: Lab):
    netns.check_route("127.0.0.1", "lo")   # loopback only

    # -- section 2: the service user and the course; the sysadmin's edits
    lab.step("storer")
    assert pwd.getpwnam(lab.service_user).pw_dir == str(lab.state)
    assert lab.course.stat().st_uid == pwd.getpwnam(lab.service_user).pw_uid
    text = lab.glob.read_text()
    assert "listen: 127.0.0.1:19999" in text and "state: /var/lib/vmchecker" in text   # the global's daemon section
    lab.glob.write_text(text.replace("127.0.0.1:19999", f"127.0.0.1:{lab.daemon_port}")
                        .replace("/var/lib/vmchecker", str(lab.state)))
    config_text = (lab.course / "config.yaml").read_text()
    (lab.course / "config.yaml").write_text(config_text.replace("  students: []", "  students: [alice]", 1))
    make_zip(lab.course / "tests" / "1-hello.zip", TESTS)
    shutil.copy(lab.course / "keys" / "id_ed25519.pub", lab.top / "so.pub")   # copied to the tester
    make_zip(lab.top / "hello.zip", HELLO)

    # -- section 3: the tester, its account made as INSTALL says, sshd for it
    out, = lab.step("tester")[:1]
    assert "done: usermod -p '*'" in out and "warning" not in out
    assert pwd.getpwnam(lab.tester_user).pw_shell == "/usr/sbin/nologin"
    with SshdOfTheTester(port=lab.ssh_port, user=lab.tester_user) as server:
        out, _ = lab.step("add tester")[:2]
        assert "slots learned from the tester" in out and "2 slot(s)" in out
        assert "Listed under the testers of machine linux" in out
        assert "ready" in out.splitlines()[-1]
        wait_for(lambda: _answers(lab), "the storer daemon to answer", 30)

        # -- the check: a correct hello, graded 10 on a real LXC guest
        submitted, status = lab.step("check")
        assert "tester so/t1: " in status and "unreachable" not in status, status
        row = wait_for(lambda: _final(lab), "the submission to be graded", 300, interval=1.0)
        assert row["status"] == "done" and row["grade"] == 10, f"{row}\n{lab.log_text()}"
        results = lab.course / "repo" / "1-hello" / "alice" / "current" / "results"
        assert (results / "run-stdout.vmr").read_text() == "test 1: passed\n"   # the template's run.sh graded it
        assert server.accepted_logins() >= 1
    for proc in lab.procs:
        assert proc.poll() is None, f"{proc.args[0]} ended early:\n{lab.log_text()}"


def _answers(lab: Lab) -> bool:
    try:
        xmlrpc.client.ServerProxy(f"http://127.0.0.1:{lab.daemon_port}/").status()
        return True
    except OSError:
        assert all(p.poll() is None for p in lab.procs), lab.log_text()
        return False


def _final(lab: Lab) -> dict | None:
    done = subprocess.run([str(BIN / "vmchecker-grades"), "so", "--format", "json", "--account", "alice"],
                          env=lab.env, capture_output=True, text=True)
    rows = json.loads(done.stdout or "[]") if done.returncode == 0 else []
    if rows and rows[0]["status"] in ("done", "error"):
        return rows[0]
    for proc in lab.procs:
        assert proc.poll() is None, f"{proc.args[0]} ended:\n{lab.log_text()}"
    return None
