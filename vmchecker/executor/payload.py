"""What enters the guest, in which order, owned by whom.

The guest folder (``machine.guest_base_path``, *BASE*) is laid out so that the student's
code can never reach the grade (the grading contract of ``docs/ARCHITECTURE.md``)::

    BASE/            the guest user's (trusted, root by default), 0755
      job/           the job folder, cwd of every step: 1777, sticky, so the student may
                     add files but never remove or rename what is not its own
        ...          the student's files, owned by the student user; the tests unpacked
                     over them, owned by the guest user and read-only (0444/0555), in
                     folders that are the guest user's and sticky as well
      course/        the guest user's, 0755: build.sh, run.sh (check.sh) as the bundle
                     carried them, the name of the student user, and bin/ with the
                     programs the steps are started through (vmchecker-step,
                     vmchecker-run): nothing here is writable by the student
      results/       the guest user's, 0700: the grade file and the other results run.sh
                     writes; the only folder results are copied out of

Owners travel by name in the tar stream (the copy-in runs GNU tar as root without
``--numeric-owner``), so the guest's own /etc/passwd decides the ids; a name the guest
does not know falls back to ``nobody`` for the student, never to root (the LXC backend
writes the same tree from the host by the same rules, :meth:`Payload.placement`, reading
the guest's passwd and group itself: :mod:`.lxc_files`). The copy-in ends
with ``vmchecker-step prepare``, which checks the student user exists and can reach the
job folder, so a guest that cannot keep the contract fails the job instead of grading it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from vmchecker import archive
from vmchecker.config import Machine
from vmchecker.contract import ARCHIVE, BUILD_SCRIPT, CHECK_SCRIPT, RUN_SCRIPT, TESTS
from vmchecker.errors import ArchiveError, BundleError
from vmchecker.executor import guest

JOB, COURSE, RESULTS = "job", "course", "results"
STUDENT_FILE = "student"              # course/student: the student user's name
STEP_PROGRAM = "vmchecker-step"       # course/bin/: starts each step (as the guest user)
RUN_PROGRAM = "vmchecker-run"         # course/bin/: runs a command as the student user
NOBODY = 65534                        # the student's id where the guest does not know its name


@dataclass(frozen=True)
class GuestPaths:
    """Where the payload lands in the guest (see the module docstring)."""

    base: str

    @property
    def job(self) -> str:
        return f"{self.base}/{JOB}"

    @property
    def course(self) -> str:
        return f"{self.base}/{COURSE}"

    @property
    def results(self) -> str:
        return f"{self.base}/{RESULTS}"

    @property
    def step(self) -> str:
        return f"{self.course}/bin/{STEP_PROGRAM}"


@dataclass(frozen=True)
class Payload:
    """The host folder copied into the guest, and who owns each of its entries there."""

    root: Path
    student: str                      # user names in the guest
    trusted: str
    student_paths: frozenset[str]     # arcnames ("job/a.c") that are the student's

    def write(self, stream: IO[bytes]) -> None:
        """Write the payload to ``stream`` as one tar stream with the guest owners and
        modes of the module docstring, whatever owns the files on the host."""
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as tf:
            tf.add(self.root, arcname=".", filter=self._owned)

    def _owned(self, info: tarfile.TarInfo) -> tarfile.TarInfo:
        student, info.mode = self.placement(info.name, info.isdir(), info.mode)
        if student:
            info.uid = info.gid = NOBODY
            info.uname = info.gname = self.student
        else:
            info.uid = info.gid = 0
            info.uname = info.gname = self.trusted
        return info

    def placement(self, name: str, is_dir: bool, mode: int) -> tuple[bool, int]:
        """(whether the student owns it, its mode) for the entry ``name`` ("." or
        "job/a.c"): the rules of the module docstring, for every backend's copy-in."""
        name = str(PurePosixPath(name))
        if name in self.student_paths:
            return True, mode
        top = name.split("/", 1)[0]
        if name == RESULTS:
            return False, 0o700
        if name == JOB or (top == JOB and is_dir):
            return False, 0o1777
        if is_dir:
            return False, 0o755
        return False, 0o555 if mode & 0o111 else 0o444   # a course file or a test: read-only


def prepare_payload(bundle_dir: Path, work: Path, machine: Machine) -> Payload:
    """The payload, built in ``work`` from the unpacked bundle in ``bundle_dir``: the
    student's files, the tests over them, the course's scripts and programs apart."""
    student, tests = work / "student", work / "tests"
    for name, dest in ((ARCHIVE, student), (TESTS, tests)):
        try:
            archive.safe_extract(bundle_dir / name, dest)
        except ArchiveError as exc:
            raise BundleError(f"cannot unpack {name}: {exc.message}") from None
    root = work / "payload"
    job, course = root / JOB, root / COURSE
    (root / RESULTS).mkdir(parents=True)
    trusted = _tree(tests, JOB)                       # every test entry and its folders
    os.replace(student, job)
    _overlay(tests, job)
    (course / "bin").mkdir(parents=True)
    for name in (BUILD_SCRIPT, RUN_SCRIPT, CHECK_SCRIPT):
        if (bundle_dir / name).is_file():
            shutil.copyfile(bundle_dir / name, course / name)
    (course / STUDENT_FILE).write_text(machine.student_user + "\n", encoding="utf-8")
    for program in (STEP_PROGRAM, RUN_PROGRAM):
        path = course / "bin" / program
        path.write_text(guest.program(program), encoding="utf-8")
        path.chmod(0o755)
    owned = frozenset(_tree(job, JOB) - trusted - {JOB})
    return Payload(root, machine.student_user, machine.guest_user or "root", owned)


def _tree(folder: Path, prefix: str) -> set[str]:
    """The arcnames of every entry under ``folder`` (as if it were ``prefix``), with
    the folders that lead to them."""
    names = set()
    for path in folder.rglob("*"):
        rel = PurePosixPath(prefix, path.relative_to(folder).as_posix())
        names.add(str(rel))
        names.update(str(p) for p in rel.parents if str(p) not in (".", prefix))
    return names


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _overlay(src: Path, dst: Path) -> None:
    """Move the tree ``src`` onto ``dst``; where both have an entry, ``src`` wins."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            if not target.is_dir() or target.is_symlink():
                _remove(target)
            _overlay(entry, target)
        else:
            _remove(target)
            os.replace(entry, target)


def empty_payload(work: Path, machine: Machine) -> Payload:
    """The payload of a job whose archive and tests hold no file: the guest folder's
    layout, the course's programs and the student's name, as every job of ``machine`` has.
    A warm guest is parked with it (copied in, ``vmchecker-step prepare`` passed), so its
    job's copy-in only adds the job's files."""
    bundle = work / "bundle"
    bundle.mkdir()
    for name in (ARCHIVE, TESTS):
        with zipfile.ZipFile(bundle / name, "w"):
            pass
    return prepare_payload(bundle, work, machine)
