"""Helpers for the web tests: a course open for uploads, a password file, results
written as a tester would, and ``vmchecker-web`` in its own process."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

from tests.util import HELLO_C, HELLO_MAKEFILE, free_port, stop_process, wait_for_port, write_course
from vmchecker import config
from vmchecker.repo import Submission
from vmchecker.storer.web.passwords import hash_password

HELLO = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
PASSWORDS = {"student": "student-pw", "bob": "bob-pw", "alice": "alice-pw"}  # alice is the admin
STUDENTS = ["student", "bob", "carol", "Erin"]   # the course's students (carol, Erin: from LDAP)
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "screenshots"
SERVER_WAIT = 30.0


def open_course(root: Path, daemon_url: str, *, testers: dict | None = None,
                **assignment: object) -> config.CourseConfig:
    """Course ``so`` open for uploads until 2099: ``1-hello`` (deadline far ahead, no minimum
    interval), ``0-past`` (deadline passed), ``9-hidden`` (hidden). Registered in root/global.yaml.
    Its students: ``student``, ``bob`` and the LDAP tests' ``carol`` and ``Erin``; ``alice`` is its admin.
    ``testers`` is merged into the course's testers (t1 on 127.0.0.1 by default)."""
    extra = {
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00",
                   "admins": ["alice"], "students": STUDENTS, "public_results": True},
        "storer": {"daemon": daemon_url},
        "assignments": {
            "1-hello": {"title": "Hello, world", "deadline": "2099-03-01 23:55:00", "machine": "linux",
                        "statement": "https://example.org/1-hello", "min_interval": 0,
                        "ignored_vmrs": ["secret-checker.vmr"], **assignment},
            "0-past": {"title": "Warm-up", "deadline": "2020-03-01 23:55:00", "machine": "linux",
                       "min_interval": 0, "order": -1},
            "9-hidden": {"title": "Not yet", "deadline": "2099-05-01 23:55:00", "machine": "linux",
                         "hidden": True, "order": 9},
        },
    }
    if testers:
        extra["testers"] = testers
    return config.load_course(write_course(root, extra=extra))


@functools.cache
def _hashed(name: str) -> str:
    return hash_password(PASSWORDS[name])


def write_users(path: Path, names=tuple(PASSWORDS)) -> Path:
    path.write_text("".join(f"{n}:{_hashed(n)}\n" for n in names))
    return path


def write_results(sub: Submission, files: dict[str, str], grade: str = "done\n") -> None:
    """Stand in for the tester and the daemon: put .vmr files and grade.vmr in results/."""
    sub.results_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (sub.results_dir / name).write_text(text)
    (sub.results_dir / "grade.vmr").write_text(grade)


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


class WebServer:
    """``python -m vmchecker.cli.web`` on a free loopback port (``extra``: more options),
    stopped by ``stop()``."""

    def __init__(self, global_config: Path, users: Path, secret: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(global_config.parent / "web.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmchecker.cli.web", "--config", str(global_config),
             "--listen", f"127.0.0.1:{self.port}", "--users", str(users), "--secret-file", str(secret), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for_port(self.proc, self.port, SERVER_WAIT, "vmchecker-web")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {(global_config.parent / 'web.log').read_text()}") from None

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
