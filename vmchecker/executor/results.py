"""A job's results on the tester: capped ``.vmr`` writers, how each step ended, and
``result.json``.

Every ``.vmr`` is capped in size with a visible marker (:class:`CappedWriter`), so
gigabytes of student output never reach memory or disk. :class:`ResultFiles` owns the
job's ``results/`` folder: it takes the guest's ``*.vmr`` files in without letting them
overwrite ours, and writes ``result.json`` last and atomically: a killed executor never
leaves a ``result.json`` that claims success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vmchecker import fsutil
from vmchecker.contract import (
    GRADE_VMR,
    RESULT_JSON,
    RESULT_SUFFIX,
    RUN_KM,
    STEP_FILES,
    VMCHECKER_STDERR,
    ResultStatus,
    Stage,
)
from vmchecker.errors import ExecutorError

RESERVED = {VMCHECKER_STDERR, RUN_KM, *(n for pair in STEP_FILES.values() for n in pair)}
MAX_GUEST_VMRS = 32          # *.vmr files taken from the guest folder


class CappedWriter:
    """A ``.vmr`` file that keeps the first ``cap`` bytes written to it and counts the
    rest, so gigabytes of output never reach memory or disk; a visible line at the end
    says when something was cut. Thread-safe (several host commands share run-km.vmr)."""

    def __init__(self, path: Path, cap: int):
        self.path = Path(path)
        self.cap = cap
        self.written = 0
        self.dropped = 0
        # unbuffered: chunks come from pipes, and a live log (run-km) is readable as it grows
        self._file: IO[bytes] | None = open(self.path, "wb", buffering=0)
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            room = max(self.cap - self.written, 0)
            if self._file is not None and room:
                chunk = data[:room]
                self._file.write(chunk)
                self.written += len(chunk)
            self.dropped += max(len(data) - room, 0)

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            if self.dropped:
                self._file.write(truncation_line(self.cap, self.dropped))
            self._file.close()
            self._file = None


def truncation_line(cap: int, dropped: int | None = None) -> bytes:
    """The marker that ends a capped ``.vmr``."""
    more = f"; {dropped} more bytes were dropped" if dropped else ""
    return f"\n[vmchecker: output truncated at {cap // 1024} KiB{more}]\n".encode()


@dataclass
class StepResult:
    """How one step (build or run) ended. Fields a backend cannot tell stay None."""

    attempted: bool = True
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    timeout_s: float | None = None      # the limit it ran under
    oom_killed: bool | None = None      # None: the backend cannot tell
    wall_s: float | None = None
    cpu_s: float | None = None
    max_rss_kb: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.attempted and not self.timed_out and self.exit_code == 0


@dataclass
class JobResult:
    """What ``result.json`` holds. ``status`` stays ``error`` until the flow completes."""

    job_id: str
    backend: str
    status: ResultStatus = ResultStatus.ERROR
    message: str = ""
    vm: str = ""
    started_at: str = ""
    guest_start_s: float | None = None
    warm_guest: bool = False            # the job ran on a guest made ready before it came (executor/warm.py)
    total_s: float | None = None
    grade_file: bool = False            # the tests wrote their grade file (evidence.py)
    memory_mb: int | None = None
    steps: dict[str, StepResult] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    timeline: dict[str, float] = field(default_factory=dict)     # stage -> wall-clock time (epoch seconds)
    timeline_s: dict[str, float] = field(default_factory=dict)   # stage -> seconds since the first, monotonic
    _first = 0.0                        # monotonic time of the first stage (a class attribute, not a field)

    def mark(self, stage: Stage) -> None:
        """Record that ``stage`` happens now: the tester's wall clock, for the storer's
        timeline of the job, and the monotonic clock, so durations within the executor
        stay true even if the wall clock is stepped meanwhile."""
        now, mono = time.time(), time.monotonic()
        if not self.timeline:
            self._first = mono
        self.timeline[stage.value] = round(now, 6)
        self.timeline_s[stage.value] = round(mono - self._first, 6)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record how long a part of the flow took (where the overhead goes)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - start, 4)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name, step in self.steps.items():
            data[f"{name}_s"] = step.wall_s
        return data


class ResultFiles:
    """The job's ``results/`` folder: prepared at the start, ``result.json`` written last."""

    def __init__(self, bundle_dir: Path, cap: int):
        self.dir = Path(bundle_dir) / "results"
        self.cap = cap
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            self.dir.unlink()
        self.dir.mkdir(exist_ok=True)
        for old in self.dir.iterdir():   # results of an earlier run by hand
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        self.errors = self.writer(VMCHECKER_STDERR)
        self._writers: list[CappedWriter] = [self.errors]

    def writer(self, name: str) -> CappedWriter:
        w = CappedWriter(self.dir / name, self.cap)
        if name != VMCHECKER_STDERR:
            self._writers.append(w)
        return w

    def error(self, text: str) -> None:
        self.errors.write(text.rstrip("\n").encode("utf-8", "replace") + b"\n")

    def take_guest_files(self, folder: Path) -> None:
        """Move the ``*.vmr`` files copied out of the guest in, capped, never over ours.
        A name that is not printable UTF-8 is dropped here, so it never reaches the
        storer (whose XML-RPC parser it would break) nor a log line it could forge."""
        for path in sorted(folder.iterdir())[:MAX_GUEST_VMRS]:
            if not printable_name(path.name):
                self.error(f"ignored a result file written by the guest: its name {path.name!r}"
                           " is not printable UTF-8")
                continue
            if path.name in RESERVED or not path.name.endswith(RESULT_SUFFIX):
                self.error(f"ignored {path.name} written by the guest: the name is reserved")
                continue
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > self.cap:
                with open(path, "r+b") as f:
                    f.truncate(self.cap)
                    f.seek(0, os.SEEK_END)
                    f.write(truncation_line(self.cap))
            os.replace(path, self.dir / path.name)

    def finish(self, job: JobResult) -> None:
        """Close every file, write result.json. ``grade.vmr`` is the tests' own (taken
        from the guest's results folder) or absent: the storer weighs it with
        result.json (:mod:`vmchecker.evidence`), so nothing here grants a grade."""
        for w in self._writers:
            w.close()
        job.grade_file = (self.dir / GRADE_VMR).is_file()
        fsutil.write_atomic(self.dir / RESULT_JSON, json.dumps(job.to_dict(), indent=2) + "\n")


def printable_name(name: str) -> bool:
    """Whether a file name is valid UTF-8 with no control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:   # undecodable bytes, kept as surrogates
        return False
    return name.isprintable()


def extract_vmrs(data: bytes, dest: Path, cap: int, guest: str) -> None:
    """Write the regular top-level files of a tar stream copied out of a guest into
    ``dest``, each cut to ``cap + 1`` bytes; links, folders and dotfiles are skipped."""
    if not data:
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if member.isreg() and name and "/" not in name and not name.startswith("."):
                    with tf.extractfile(member) as f:
                        (dest / name).write_bytes(f.read(cap + 1))
    except tarfile.TarError as exc:
        raise ExecutorError(f"results copied out of {guest} are not a valid tar stream: {exc}") from None
