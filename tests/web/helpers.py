"""Helpers for the web tests: a course open for uploads, a password file, a stand-in
storer daemon (a real XML-RPC server on loopback) and results written as a tester would."""

from __future__ import annotations

import functools
import re
import socket
import threading
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

from tests.util import HELLO_C, HELLO_MAKEFILE, write_course
from vmchecker import config
from vmchecker.repo import Submission
from vmchecker.storer.web.passwords import hash_password

HELLO = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
PASSWORDS = {"student": "student-pw", "bob": "bob-pw", "alice": "alice-pw"}  # alice is the admin
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_course(root: Path, daemon_url: str, **assignment: object) -> config.CourseConfig:
    """Course ``so`` open for uploads until 2099: ``1-hello`` (deadline far ahead, no minimum
    interval), ``0-past`` (deadline passed), ``9-hidden`` (hidden). Registered in root/global.yaml."""
    extra = {
        "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00",
                   "admins": ["alice"], "public_results": True},
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


class FakeDaemon:
    """A real XML-RPC server on loopback answering ``status()`` and ``queue_task()`` as the
    storer daemon does; ``jobs`` is what status() reports, ``queued`` what was queued."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.queued: list[tuple[str, str, str, str]] = []
        self.server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
        self.server.register_function(self.status, "status")
        self.server.register_function(self.queue_task, "queue_task")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def status(self) -> dict:
        return {"jobs": self.jobs, "testers": []}

    def queue_task(self, course: str, assignment: str, account: str, submission: str) -> str:
        self.queued.append((course, assignment, account, submission))
        return f"job-{len(self.queued)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
