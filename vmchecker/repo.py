"""The storer's submission repository: the source of truth for every upload.

Layout (docs/ARCHITECTURE.md, "On disk")::

    <repository>/<assignment>/<account>/<YYYY.MM.DD HH.MM.SS[.n]>/
        archive.zip              exactly what was uploaded
        files/                   the archive, unpacked safely
        submission-config.yaml   who (and, for a team, which member), when, which
                                 assignment and machine, job id, tester
        results/                 *.vmr from the tester, grade.vmr, result.json
        results.1/ ...           earlier results, moved aside by a recheck
    <repository>/<assignment>/<account>/current -> <latest folder>   (relative link)
    <repository>/<assignment>/.lock                                   per-assignment lock

``<account>`` is a team's name for the assignments the team covers (:mod:`vmchecker.teams`):
its members' uploads all land there.

The submission's status is ``results/grade.vmr``: a single word (saved, queued,
running, done, error) while it is one, the grader's lines once graded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmchecker import fsutil
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime, parse_datetime, safe_dump, safe_load
from vmchecker.contract import ACCOUNT_RE, ARCHIVE, GRADE_VMR, SUBMISSION_CONFIG, SubmissionStatus
from vmchecker.errors import NotFound, VmcheckerError

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y.%m.%d %H.%M.%S"
_FOLDER_RE = re.compile(r"^\d{4}\.\d{2}\.\d{2} \d{2}\.\d{2}\.\d{2}(\.\d+)?$")
CURRENT = "current"


def check_account(account: str) -> str:
    """Refuse account names that could escape the repository or confuse the layout."""
    if not isinstance(account, str) or not ACCOUNT_RE.match(account):
        raise VmcheckerError(f"bad account name {account!r}: use letters, digits, '_', '-', '.', '@'")
    return account


def folder_name(upload_time: dt.datetime, n: int = 0) -> str:
    """A submission folder's name; ``n`` > 0 tells apart uploads in the same second."""
    base = upload_time.strftime(TIMESTAMP_FORMAT)
    return f"{base}.{n}" if n else base


@dataclass(frozen=True)
class SubmissionInfo:
    """A submission's ``submission-config.yaml``."""

    course: str
    assignment: str
    account: str
    upload_time: dt.datetime
    machine: str
    size: int = 0
    job_id: str = ""
    tester: str = ""
    # who uploaded it: a team member when ``account`` is a team (vmchecker.teams), else empty
    submitted_by: str = ""

    def to_yaml(self) -> str:
        data = dataclasses.asdict(self)
        data["upload_time"] = format_datetime(self.upload_time)
        return safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: Path) -> SubmissionInfo:
        data = safe_load(text)
        if not isinstance(data, dict):
            raise VmcheckerError(f"{source}: expected a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        try:
            data["upload_time"] = parse_datetime(data["upload_time"])
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise VmcheckerError(f"{source}: bad submission config: {exc}") from None


@dataclass(frozen=True)
class Submission:
    """One stored upload: a folder in the repository."""

    path: Path
    info: SubmissionInfo

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def assignment(self) -> str:
        return self.info.assignment

    @property
    def account(self) -> str:
        return self.info.account

    @property
    def upload_time(self) -> dt.datetime:
        return self.info.upload_time

    @property
    def submitted_by(self) -> str:
        """The account that uploaded it: a team's member, or the account itself."""
        return self.info.submitted_by or self.info.account

    @property
    def archive_path(self) -> Path:
        return self.path / ARCHIVE

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def config_path(self) -> Path:
        return self.path / SUBMISSION_CONFIG

    def grade_text(self) -> str | None:
        """The content of results/grade.vmr, or None when there is none."""
        try:
            return (self.results_dir / GRADE_VMR).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def status(self) -> SubmissionStatus:
        """The status word of grade.vmr; a graded file (several words) means done."""
        text = (self.grade_text() or "").strip()
        if not text:
            return SubmissionStatus.SAVED
        try:
            return SubmissionStatus(text.lower())  # as penalty.parse_grade_vmr reads it
        except ValueError:
            return SubmissionStatus.DONE

    def set_status(self, status: SubmissionStatus) -> None:
        """Write the status word into results/grade.vmr, atomically."""
        self.results_dir.mkdir(exist_ok=True)
        fsutil.write_atomic(self.results_dir / GRADE_VMR, f"{SubmissionStatus(status).value}\n")

    def update_info(self, **changes: Any) -> Submission:
        """Rewrite submission-config.yaml with some fields changed (job id, tester)."""
        info = dataclasses.replace(self.info, **changes)
        fsutil.write_atomic(self.config_path, info.to_yaml())
        return Submission(self.path, info)

    def earlier_results(self) -> list[Path]:
        """results.1/, results.2/, ... oldest first: what rechecks moved aside."""
        found = []
        for p in self.path.iterdir():
            suffix = p.name.removeprefix("results.")
            if p.name.startswith("results.") and suffix.isdigit() and p.is_dir():
                found.append((int(suffix), p))
        return [p for _, p in sorted(found)]


def load_submission(path: Path) -> Submission:
    """Read a submission folder; NotFound if it is not one."""
    path = Path(path)
    config = path / SUBMISSION_CONFIG
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"{path}: not a submission (no {SUBMISSION_CONFIG})") from None
    return Submission(path, SubmissionInfo.from_yaml(text, config))


class Repository:
    """Read access and locking over a course's repository folder."""

    def __init__(self, course: CourseConfig):
        self.course = course
        self.root = course.repository

    def assignment_dir(self, assignment: str) -> Path:
        self.course.assignment(assignment)  # NotFound for an unknown assignment
        return self.root / assignment

    def account_dir(self, assignment: str, account: str) -> Path:
        return self.assignment_dir(assignment) / check_account(account)

    @contextlib.contextmanager
    def lock(self, assignment: str) -> Iterator[None]:
        """The per-assignment lock every write to the repository holds."""
        with fsutil.locked(self.assignment_dir(assignment) / ".lock"):
            yield

    def accounts(self, assignment: str) -> list[str]:
        folder = self.assignment_dir(assignment)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def history(self, assignment: str, account: str) -> list[Submission]:
        """Every submission of an account for an assignment, oldest first."""
        folder = self.account_dir(assignment, account)
        if not folder.is_dir():
            return []
        subs = [load_submission(p) for p in folder.iterdir()
                if _FOLDER_RE.match(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted(subs, key=lambda s: (s.upload_time, _folder_order(s.name)))

    def current(self, assignment: str, account: str) -> Submission | None:
        """The submission ``current`` points to, or None if the account has none."""
        link = self.account_dir(assignment, account) / CURRENT
        if not link.is_symlink():
            return None
        return load_submission(link.parent / link.readlink())

    def submission(self, assignment: str, account: str, name: str = CURRENT) -> Submission:
        """One submission by folder name (or ``current``); NotFound if absent."""
        if name == CURRENT:
            sub = self.current(assignment, account)
            if sub is None:
                raise NotFound(f"{account} has no submission for {assignment}")
            return sub
        if not _FOLDER_RE.match(name):
            raise NotFound(f"bad submission name {name!r}")
        return load_submission(self.account_dir(assignment, account) / name)

    def iter_current(self, assignment: str | None = None) -> Iterator[Submission]:
        """The current submission of every account, for one or every assignment."""
        names = [assignment] if assignment else sorted(self.course.assignments)
        for a in names:
            for account in self.accounts(a):
                sub = self.current(a, account)
                if sub is not None:
                    yield sub


def _folder_order(name: str) -> int:
    parts = name.split(".")
    return int(parts[-1]) if len(parts) == 6 else 0
