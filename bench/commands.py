"""How long the storer's shell commands take to start and to do one real call.

``vmchecker-submit`` and ``vmchecker-status`` are what a grader (or a script looping over
a class) types; most of their time is the interpreter and the imports, not the work. Each
command is run N times as a fresh process, exactly as installed (the venv's entry point
next to this interpreter, else ``bin/``):

* ``--help``: the start-up floor of the command itself (arguments parsed, nothing read);
* a real call against a real daemon (XML-RPC on loopback, its durable journal, the
  dispatcher not started, as in bench/dispatch.py): ``vmchecker-submit`` stores a small
  archive for a new account and queues it, ``vmchecker-status COURSE`` asks the daemon.

The same upload through ``vmchecker-web``'s API (a running app, Flask's test client, no
network) is timed per request: the web path must cost no more than the command's.

A bare ``python -c pass`` of the same interpreter is timed too: the floor no import work
can go below. The commands run with their bytecode compiled, as after ``pip install``
(into a temporary ``PYTHONPYCACHEPREFIX``, warmed by one run of each command, so the tree
is left alone and ``PYTHONDONTWRITEBYTECODE`` in the caller's environment does not turn
every run into a compile). Figures are medians of wall time in milliseconds. Ends with one line:
``submit_start_ms=... status_start_ms=... submit_call_ms=... status_call_ms=... web_upload_ms=...
python_ms=...``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.util import HELLO_C, free_port, make_zip, write_course  # noqa: E402
from vmchecker.storer.daemon import StorerDaemon  # noqa: E402


def command(name: str) -> list[str]:
    """The installed entry point of ``name``, run by this interpreter."""
    installed = Path(sys.executable).parent / name
    return [sys.executable, str(installed if installed.exists() else REPO / "bin" / name)]


def compiled_env(cache: Path) -> dict[str, str]:
    """The environment of an installed command: bytecode written once and read after."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def run(args: list[str], env: dict[str, str]) -> float:
    """Seconds one process took. A failing run stops the benchmark: a figure of a command
    that did not work is no figure."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def median_ms(runs: int, argv: Callable[[int], list[str]], env: dict[str, str]) -> float:
    """Median wall time of ``runs`` fresh processes; ``argv(i)`` is the i-th command line."""
    return statistics.median(run(argv(i), env) for i in range(runs)) * 1000


def web_upload_ms(runs: int, glob: Path, archive: Path) -> float:
    """Median time of one upload through the web API of an app already running: the
    course looked up, the account checked, the archive stored and queued."""
    from vmchecker.storer.web import create_app
    from vmchecker.storer.web.passwords import hash_password

    users = glob.parent / "users"
    users.write_text(f"grader:{hash_password('grader-pw')}\n")
    client = create_app(glob, users, secret_key="bench-secret-key-0123456789").test_client()
    login = client.post("/api/login", json={"username": "grader", "password": "grader-pw"})
    headers = {"X-CSRF-Token": login.get_json()["csrf_token"]}
    data = archive.read_bytes()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = client.post("/api/courses/so/assignments/1-hello/upload", headers=headers,
                             data={"archive": (io.BytesIO(data), archive.name)}, content_type="multipart/form-data")
        times.append(time.perf_counter() - start)
        if answer.status_code != 201 or not answer.get_json()["queued"]:
            raise SystemExit(f"web upload failed ({answer.status_code}): {answer.get_data(as_text=True)}")
    return statistics.median(times) * 1000


def course_with_daemon(root: Path) -> tuple[Path, StorerDaemon]:
    """A course any account may upload to now, and a daemon serving it on loopback."""
    write_course(root, extra={
        "course": {"open_to_all_users": True, "students": [], "upload_active_until": "2099-12-31 23:59:00"},
        "assignments": {"defaults": {"min_interval": 0}, "1-hello": {"deadline": "2099-12-31 23:55:00"}},
    })
    glob = root / "global.yaml"
    data = yaml.safe_load(glob.read_text())
    data["daemon"] = {"listen": f"127.0.0.1:{free_port()}", "state": str(root / "state")}
    glob.write_text(yaml.safe_dump(data))
    daemon = StorerDaemon(glob, state_dir=root / "state")
    threading.Thread(target=daemon.server.serve_forever, daemon=True).start()
    return glob, daemon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="processes per figure (default 20)")
    args = parser.parse_args()
    submit, status = command("vmchecker-submit"), command("vmchecker-status")

    with tempfile.TemporaryDirectory(prefix="vmck-bench-commands-") as tmp:
        root = Path(tmp)
        glob, daemon = course_with_daemon(root)
        archive = make_zip(root / "hello.zip", {"hello.c": HELLO_C})
        env = compiled_env(root / "pycache")
        call_submit = [*submit, "--config", str(glob), "so", "1-hello"]
        call_status = [*status, "--config", str(glob), "so"]
        try:
            for warm in ([*call_submit, "warm-up", str(archive)], call_status):
                run(warm, env)
            figures = {
                "submit_start_ms": median_ms(args.runs, lambda i: [*submit, "--help"], env),
                "status_start_ms": median_ms(args.runs, lambda i: [*status, "--help"], env),
                "submit_call_ms": median_ms(args.runs, lambda i: [*call_submit, f"u{i:04d}", str(archive)], env),
                "status_call_ms": median_ms(args.runs, lambda i: call_status, env),
                "web_upload_ms": web_upload_ms(args.runs, glob, archive),
                "python_ms": median_ms(args.runs, lambda i: [sys.executable, "-c", "pass"], env),
            }
            queued = sum(daemon.journal.counts().values()) - 1   # less the warm-up's
        finally:
            daemon.server.shutdown()
            daemon.server.server_close()
            daemon.journal.close()
    assert queued == 2 * args.runs, f"{queued} jobs journaled for {2 * args.runs} uploads"
    for name, value in figures.items():
        print(f"{name:16} {value:7.1f} ms (median of {args.runs})")
    print(" ".join(f"{name}={value:.1f}" for name, value in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
