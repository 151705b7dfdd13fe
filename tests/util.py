"""Small helpers shared by the tests: course folders and archives built on the spot,
waiting for a condition, a free port, servers started and stopped, and whether a
process runs (``pid_alive``: the code's own check, re-exported; a zombie is not alive)."""

from __future__ import annotations

import io
import socket
import subprocess
import tarfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import yaml

from vmchecker.executor.hostcmds import pid_alive  # noqa: F401  (the one check; tests import it from here)

COURSE_YAML = textwrap.dedent("""\
    course:
      id: {course_id}
      name: Operating Systems
      repository: repo
      upload_active_from: 2026-02-16 00:00:00
      upload_active_until: 2026-06-30 23:59:00
      holidays: [{{start: 2026-04-10 00:00:00, end: 2026-04-20 00:00:00}}]
      admins: [alice]
      students: [bob, carol]
      public_results: true
    storer:
      ssh_key: keys/id_ed25519
      known_hosts: keys/known_hosts
    testers:
      t1: {{host: 127.0.0.1, port: 22, user: vmchecker, queue: /srv/vmchecker-tester/queue, slots: 2}}
    machines:
      linux:
        type: lxc
        testers: [t1]
        vm: vmchecker-base
        limits: {{memory_mb: 512, pids: 256, cpus: 1, output_kb: 1024}}
    assignments:
      defaults:
        timeout: 90
        total_points: 10
        penalty_weights: [0.5, 0.5, 1]
        penalty_limit: 4
        min_interval: 120
        max_submission_size: 10M
      1-hello:
        title: Hello, world
        deadline: 2026-03-01 23:55:00
        machine: linux
        order: 1
    """)


def write_course(root: Path, course_id: str = "so", extra: dict | None = None) -> Path:
    """Write a course folder (config, build/run scripts, tests) and register it in a
    global config next to it. ``extra`` is deep-merged into the course YAML.
    Returns the course config path; the global config is ``root/global.yaml``."""
    course = root / course_id
    course.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(COURSE_YAML.format(course_id=course_id))
    for section, body in (extra or {}).items():
        if isinstance(body, dict) and isinstance(data.get(section), dict):
            for k, v in body.items():
                if isinstance(v, dict) and isinstance(data[section].get(k), dict):
                    data[section][k].update(v)
                else:
                    data[section][k] = v
        else:
            data[section] = body
    path = course / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (course / "build.sh").write_text("#!/bin/bash\nmake\n")
    (course / "run.sh").write_text("#!/bin/bash\nvmchecker-run ./hello\n")
    (course / "tests").mkdir(exist_ok=True)
    glob = root / "global.yaml"
    courses = {}
    if glob.exists():
        courses = (yaml.safe_load(glob.read_text()) or {}).get("courses") or {}
    courses[course_id] = str(path)
    glob.write_text(yaml.safe_dump({"courses": courses}))
    return path


def make_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    """A zip archive with the given members (name -> content)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def zip_bytes(members: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_targz(path: Path, members: dict[str, bytes | str]) -> Path:
    """A tar.gz archive with regular-file members (name -> content)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


HELLO_C = '#include <stdio.h>\nint main(void) { puts("Hello, world!"); return 0; }\n'
HELLO_MAKEFILE = "hello: hello.c\n\tgcc -Wall -o hello hello.c\n"


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.05) -> T:
    """Poll until ``predicate()`` returns something true, and return it.

    A guard against a hang, never a measure: the timeout is generous, no test asserts on
    how soon the condition came, and a test that needs an order makes it happen (a file,
    a barrier) instead of sleeping. The failure names ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what} (last seen: {value!r})")
        time.sleep(interval)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``address`` (bound, then closed), for a server
    that must be told its port before it starts."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, timeout: float, what: str, host: str = "127.0.0.1") -> None:
    """Wait until ``proc`` listens on ``host:port``; RuntimeError if it exits or is late."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_for(listening, f"{what} to listen on {host}:{port}", timeout)
    except AssertionError:
        raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout} s") from None


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hung_up(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (what it answered first is read and dropped)."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def status_line(sock: socket.socket) -> bytes:
    """Read an HTTP answer until its first line ends; that line (b"" if the server hung
    up first)."""
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n", 1)[0]


def side_by_side(job: Callable[[str], T], names: Iterable[str], barrier: threading.Barrier | None = None) -> dict[str, T]:
    """Run ``job(name)`` for each of ``names`` at once, each in a thread of its own, and
    wait for all. Each ends by aborting ``barrier``: its partner is past it already, or
    must not wait for a job that failed. A job that raised has no entry in the result."""
    results: dict[str, T] = {}

    def one(name: str) -> None:
        try:
            results[name] = job(name)
        finally:
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
