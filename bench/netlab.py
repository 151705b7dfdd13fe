"""The two-tester namespace lab the lab benchmarks share (bench/chaos.py, bench/scheduler_lab.py).

Built like tests/test_end_to_end.py's lab, whose ``Storer`` and ``LabTester`` it uses: the
storer daemon on our bridge's address, one namespace per tester with its own sshd and
queue manager, a course whose testers are those namespaces, submissions through
``vmchecker-submit``. The caller says which machines and assignments the course has and
how each tester is made (a ``LabTester`` or a subclass, with its own machine overrides).

Network rule: before the course is written, each tester's address is checked to be
reached through the lab's bridge, and the storer's address through each tester's eth0.
Everything made is removed by :meth:`Lab.close`, also on failure: the queue managers,
sshds, namespaces (through the testers), the daemon, and job clones a killed queue
manager of ours left behind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.lab import netns
from tests.test_end_to_end import RUN_SH, LabTester, Storer
from tests.util import free_port
from vmchecker import config

COURSE = "e2e"   # the course id tests/test_end_to_end.py's Storer makes

# (network, name, daemon URL, the course's public key, logs folder) -> a started sshd's tester
TesterFactory = Callable[[netns.LabNetwork, str, str, str, Path], LabTester]


class Lab:
    """The storer and the testers named ``names`` (in the course's order), each made by
    ``make_tester``; :meth:`build` writes the course, :meth:`start` starts the processes."""

    def __init__(self, network: netns.LabNetwork, root: Path, retry_delay: float = 1.0,
                 names: Sequence[str] = ("t1", "t2"), make_tester: TesterFactory = LabTester):
        self.network, self.root, self.retry_delay = network, root, retry_delay
        self.names, self.make_tester = list(names), make_tester
        self.storer = Storer(root, network.gateway, free_port(network.gateway))
        self.testers: list[LabTester] = []
        self.qm_pids: set[int] = set()
        self.course_dir: Path | None = None

    def build(self, machines: dict[str, dict[str, Any]], assignments: dict[str, dict[str, Any]],
              build_sh: str = "#!/bin/bash\nset -e\nmake\n", run_sh: str = RUN_SH,
              storer: dict[str, Any] | None = None) -> Path:
        """The course (``machines`` without ``testers`` serve every tester), the testers'
        sshds, and the checked routes between them. Returns the course folder."""
        network, root = self.network, self.root
        course_dir = self.course_dir = self.storer.init_course()
        pub = (course_dir / "keys" / "id_ed25519.pub").read_text().strip()
        for name in self.names:
            self.testers.append(self.make_tester(network, name, self.storer.url, pub, root))
        for t in self.testers:
            network.check_route(t.host.address)
            t.host.check_route(network.gateway)
        (course_dir / "keys" / "known_hosts").write_text("".join(t.ssh.host_key_line() + "\n" for t in self.testers))
        (course_dir / "build.sh").write_text(build_sh)
        (course_dir / "run.sh").write_text(run_sh)
        data = yaml.safe_load((course_dir / "config.yaml").read_text())
        data["storer"].update(daemon=self.storer.url, retry_delay=self.retry_delay, **(storer or {}))
        data["course"]["open_to_all_users"] = True   # its students are made on the spot
        data["testers"] = {t.name: t.course_entry() for t in self.testers}
        data["machines"] = {name: {"testers": list(self.names), **body} for name, body in machines.items()}
        data["assignments"] = {"defaults": {"timeout": 30, "min_interval": 0}, **assignments}
        self._write(data)
        return course_dir

    def edit_course(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the course config in place (``change`` edits its data): the daemon takes
        the edit at its next look at the course, with the estimates it journaled."""
        assert self.course_dir is not None, "build() first"
        data = yaml.safe_load((self.course_dir / "config.yaml").read_text())
        change(data)
        self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        assert self.course_dir is not None
        path = self.course_dir / "config.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        config.load_course(tmp)   # a bad edit fails here, not in the daemon
        tmp.replace(path)

    def start(self) -> None:
        self.storer.start()
        for t in self.testers:
            self.start_qm(t)

    def start_qm(self, t: LabTester) -> None:
        t.start()
        assert t.proc is not None
        self.qm_pids.add(t.proc.pid)

    def tester(self, name: str) -> LabTester:
        return next(t for t in self.testers if t.name == name)

    def submit(self, assignment: str, archive: Path, account: str) -> Path:
        """Upload ``archive`` as ``account`` through ``vmchecker-submit``; the submission's folder."""
        done = subprocess.run([sys.executable, "-m", "vmchecker.cli.submit", "--skip-time-checks", COURSE,
                               assignment, account, str(archive)], env=self.storer.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"vmchecker-submit {assignment} {account}: {done.stderr.strip()}")
        return self.storer.submission(assignment, account).path

    def close(self) -> None:
        for t in self.testers:
            try:
                t.close()
            except Exception as exc:   # keep closing the rest
                print(f"closing tester {t.name}: {exc}", file=sys.stderr)
        self.storer.close()
        destroy_our_clones(self.qm_pids)


def report_leftovers(root: Path, keep: bool) -> None:
    """At a benchmark's end: name what the lab left (it should be nothing), then keep its
    logs in ``root`` or remove them."""
    from tests.lab import sshd

    left = netns.leftovers() + sshd.leftovers()
    if left:
        print(f"left behind: {left}", file=sys.stderr)
    if keep:
        print(f"logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def destroy_our_clones(owners: set[int]) -> None:
    """Job clones a killed queue manager of ours left (their name carries its pid)."""
    names = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True).stdout.split()
    ours = [n for n in names if (m := re.match(r"^vmck-[A-Za-z0-9]*-(\d+)-[0-9a-f]+$", n)) and int(m[1]) in owners]
    if not ours:
        return
    from vmchecker.executor.lxc import LxcHost

    host = LxcHost()
    for name in ours:
        print(f"removing job clone {name} left by a killed queue manager", file=sys.stderr)
        try:
            host.destroy_clone(name)
        except Exception as exc:
            print(f"could not remove {name}: {exc}", file=sys.stderr)
