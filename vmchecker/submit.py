"""The repository's write side: storing an upload, and marking one for a recheck.

:func:`submit` is the one path every upload takes (``vmchecker-submit``, later the web
form). The order of work keeps the two promises of the design (docs/ARCHITECTURE.md):

1. the cheap checks refuse before the upload is read or unpacked: assignment, size (a
   file's is stat'ed, not read), time window, minimum interval and the account's disk
   quota (``course.max_account_storage``), each the team's for a member of one
   (:mod:`vmchecker.teams`: a team's uploads share one folder). Unpacking is the
   costly step, so an account cannot make the storer unpack more than once per
   ``min_interval``;
2. the upload is written and unpacked into ``<repository>/.incoming-XXXX/`` outside
   the lock, so a hostile archive leaves nothing in an account's folder. An archive
   refused while unpacking still counts toward the minimum interval: its time is kept
   in ``<repository>/.refused/<assignment>/<account>`` (only when the assignment has
   a minimum interval), so refused uploads are throttled like stored ones;
3. under the per-assignment lock the time checks are repeated (the clock moved), the
   minimum interval is checked against the account's stored uploads, the quota against
   the unpacked size, the folder gets its name (``.n`` when the second is taken), is
   renamed into place, and ``current`` is swapped. Any refusal removes the incoming
   folder and an account folder it created.

``archive.zip`` is fsynced before the rename and the rename before ``current`` moves,
so a crash leaves the previous state or the new one. ``files/`` is not fsynced: it can
always be unpacked again from ``archive.zip``. A crash before the rename can leave an
``.incoming-*`` folder in the repository root; nothing reads those.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from vmchecker import fsutil
from vmchecker.archive import detect_format, safe_extract
from vmchecker.assignments import Assignment
from vmchecker.config import CourseConfig
from vmchecker.confparse import format_datetime, parse_datetime
from vmchecker.contract import ARCHIVE, GRADE_VMR, SUBMISSION_CONFIG, SubmissionStatus
from vmchecker.errors import NotFound, SubmissionRefused, VmcheckerError
from vmchecker.repo import (
    CURRENT,
    Repository,
    Submission,
    SubmissionInfo,
    check_account,
    folder_name,
    load_submission,
)

log = logging.getLogger(__name__)

HARD_DEADLINE_GRACE = dt.timedelta(seconds=60)
INCOMING_PREFIX = ".incoming-"
REFUSED_DIR = ".refused"    # <repository>/.refused/<assignment>/<account>: last unpack refused

Notify = Callable[[Submission], None]


def submit(
    course: CourseConfig,
    assignment: str,
    account: str,
    archive: Path | bytes,
    upload_time: dt.datetime | None = None,
    skip_time_checks: bool = False,
    notify: Notify | None = None,
) -> Submission:
    """Store an upload and make it the ``current`` submission of its owner: ``account``,
    or the team ``account`` submits with for ``assignment`` (:mod:`vmchecker.teams`), so
    the interval, the quota and the grade are the team's; ``submitted_by`` says who.

    ``upload_time`` defaults to now (taken under the lock, so stored order is time
    order). ``skip_time_checks`` (graders) skips the upload window, the hard deadline
    and the minimum interval. ``notify`` is called once the submission is durable,
    except for a ``submit_only`` assignment: graded by hand, never queued.
    Raises SubmissionRefused (ArchiveError for a bad archive) with nothing written."""
    check_account(account)
    task = _assignment(course, assignment, account)
    owner = course.teams.check_uploader(task.id, account, course.id)
    size = _upload_size(archive, task)
    repo = Repository(course)
    if not skip_time_checks:
        when = upload_time or _now()
        _check_window(course, task, when)
        _check_interval(repo, task, owner, when)
    _check_quota(course, account_usage(repo, owner), size)
    data = _read_upload(archive, task)
    refused = None if skip_time_checks else lambda: _mark_refused(repo, task, owner, upload_time or _now())
    incoming = _prepare_incoming(repo.root, data, refused)
    try:
        with repo.lock(assignment):
            sub = _store(repo, task, owner, account, incoming, len(data), upload_time, skip_time_checks)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    log.info("saved %s/%s/%s as %s%s", course.id, assignment, owner, sub.path,
             f" (uploaded by {account})" if owner != account else "")
    if not task.submit_only:
        _notify(notify, sub)
    return sub


def recheck(sub: Submission, notify: Notify | None = None) -> Submission:
    """Mark a submission for testing again; its results move aside to ``results.N/``.

    Takes the same per-assignment lock as :func:`submit` (the ``.lock`` file in the
    assignment's folder, two levels above the submission)."""
    with fsutil.locked(sub.path.parent.parent / ".lock"):
        sub = load_submission(sub.path)
        if sub.results_dir.exists():
            aside = sub.path / f"results.{_next_results_number(sub)}"
            os.rename(sub.results_dir, aside)
            log.info("recheck %s: earlier results moved to %s", sub.path, aside.name)
        fresh = Path(tempfile.mkdtemp(prefix=".results-", dir=sub.path))
        try:
            fsutil.write_atomic(fresh / GRADE_VMR, f"{SubmissionStatus.SAVED.value}\n")
            os.chmod(fresh, 0o755)
            os.rename(fresh, sub.results_dir)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        fsutil.fsync_dir(sub.path)
        sub = sub.update_info(job_id="", tester="")
    _notify(notify, sub)
    return sub


# --------------------------------------------------------------------------- checks


def _now() -> dt.datetime:
    return dt.datetime.now().replace(microsecond=0)


def _assignment(course: CourseConfig, assignment: str, account: str) -> Assignment:
    """The assignment, or the same refusal for an unknown one and one hidden from students."""
    task = course.assignments.get(assignment)
    if task is None or (task.hidden and not course.is_admin(account)):
        raise SubmissionRefused(f"course {course.id!r} has no assignment {assignment!r}")
    return task


def _upload_size(upload: Path | bytes, task: Assignment) -> int:
    """The upload's size, refused over the assignment's limit before anything reads it."""
    limit = task.max_submission_size
    if isinstance(upload, bytes):
        size = len(upload)
    else:
        try:
            size = Path(upload).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{upload}: no such file") from None
    if size > limit:
        raise SubmissionRefused(f"the archive is {size} bytes; {task.id} accepts at most {limit} bytes")
    return size


def _read_upload(upload: Path | bytes, task: Assignment) -> bytes:
    limit = task.max_submission_size
    if isinstance(upload, bytes):
        return upload
    try:
        data = Path(upload).read_bytes()
    except OSError as exc:
        raise SubmissionRefused(f"cannot read {upload}: {exc.strerror}") from None
    if len(data) > limit:  # it grew while we looked
        raise SubmissionRefused(f"the archive is {len(data)} bytes; {task.id} accepts at most {limit} bytes")
    return data


def _check_window(course: CourseConfig, task: Assignment, when: dt.datetime) -> None:
    """Refuse outside the course's upload window and after a hard deadline."""
    opens, closes = course.course.upload_active_from, course.course.upload_active_until
    if opens is not None and when < opens:
        raise SubmissionRefused(f"uploads for {course.id} open at {format_datetime(opens)}"
                                f" (upload time {format_datetime(when)})")
    if closes is not None and when > closes:
        raise SubmissionRefused(f"uploads for {course.id} closed at {format_datetime(closes)}"
                                f" (upload time {format_datetime(when)})")
    if task.hard_deadline and when > task.deadline + HARD_DEADLINE_GRACE:
        raise SubmissionRefused(f"the hard deadline of {task.id} was {format_datetime(task.deadline)};"
                                f" uploads are no longer accepted (upload time {format_datetime(when)})")


def _check_interval(repo: Repository, task: Assignment, account: str, when: dt.datetime) -> None:
    """Refuse within ``min_interval`` of the last upload to ``account``'s folder (a team's:
    any member's), stored or refused while unpacking."""
    history = repo.history(task.id, account)   # read always: a broken one stops here
    stored = [s.upload_time for s in history]
    if task.min_interval <= 0:
        return
    refused = _last_refused(repo, task, account)
    if not stored and refused is None:
        return
    last = max([*stored, *([refused] if refused else [])])
    elapsed = (when - last).total_seconds()
    if elapsed < task.min_interval:
        wait = math.ceil(task.min_interval - max(elapsed, 0))
        team = repo.course.teams.team_for(task.id, account) is not None
        uploads = "the team's uploads" if team else "uploads"
        if stored and last == max(stored):
            who = f"{history[-1].submitted_by} of your team {account}" if team else "you"
            what = f"{who} uploaded {task.id} at {format_datetime(last)}; {uploads}"
        else:
            whose = f"your team {account}'s" if team else "your"
            what = f"{whose} upload of {task.id} at {format_datetime(last)} was refused; {uploads}, refused ones too,"
        raise SubmissionRefused(f"{what} must be {task.min_interval} s apart: wait {wait} more seconds")


def _refused_mark(repo: Repository, task: Assignment, account: str) -> Path:
    return repo.root / REFUSED_DIR / task.id / account


def _last_refused(repo: Repository, task: Assignment, account: str) -> dt.datetime | None:
    try:
        return parse_datetime(_refused_mark(repo, task, account).read_text(encoding="utf-8").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _mark_refused(repo: Repository, task: Assignment, account: str, when: dt.datetime) -> None:
    """Keep the time of an upload refused while unpacking: it counts toward the interval."""
    if task.min_interval <= 0:
        return
    mark = _refused_mark(repo, task, account)
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(mark, format_datetime(when) + "\n")
    except OSError as exc:
        log.warning("cannot record the refused upload of %s/%s: %s", task.id, account, exc.strerror)


def account_usage(repo: Repository, account: str) -> int:
    """Bytes the account's submissions take in the course, every assignment together."""
    return sum(_disk_bytes(repo.root / task_id / account) for task_id in repo.course.assignments)


def _disk_bytes(folder: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass   # removed while we counted
    return total


def _check_quota(course: CourseConfig, used: int, adding: int) -> None:
    limit = course.course.max_account_storage
    if limit and used + adding > limit:
        raise SubmissionRefused(
            f"your submissions to {course.id} already take {used} bytes of the {limit} bytes each account"
            f" may store (max_account_storage); this upload needs {adding} bytes more. Ask the course's"
            " staff to remove old submissions or to raise the limit")


# --------------------------------------------------------------------------- writing


def _prepare_incoming(repo_root: Path, data: bytes, on_unpack_refused: Callable[[], None] | None) -> Path:
    """Write and unpack the upload in a fresh folder of the repository root.
    ``on_unpack_refused`` is called when a zip or tar is refused while unpacking (the
    costly refusal; a file that is no archive at all costs nothing)."""
    repo_root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=repo_root))
    try:
        os.chmod(incoming, 0o755)
        _write_new(incoming / ARCHIVE, data)
        try:
            detect_format(incoming / ARCHIVE)
        except SubmissionRefused as exc:
            raise type(exc)(f"archive refused: {exc.message}") from None
        try:
            safe_extract(incoming / ARCHIVE, incoming / "files")
        except SubmissionRefused as exc:
            if on_unpack_refused is not None:
                on_unpack_refused()
            raise type(exc)(f"archive refused: {exc.message}") from None
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return incoming


def _write_new(path: Path, data: bytes) -> None:
    """Write a new file of the incoming folder, durably. No temporary name and rename nor
    a folder fsync per file, as :func:`fsutil.write_atomic` does for a file in place:
    nothing reads the incoming folder before :func:`_store` fsyncs it and renames it
    into place, so a crash before then leaves the old state whatever was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(fd, 0o644)   # whatever the umask, as write_atomic
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    finally:
        os.close(fd)


def _store(repo: Repository, task: Assignment, account: str, uploader: str, incoming: Path, size: int,
           upload_time: dt.datetime | None, skip_time_checks: bool) -> Submission:
    """Under the lock: last checks, then name, rename into place, swap ``current``.
    ``account`` is the folder's owner (a team's name), ``uploader`` who sent it."""
    when = upload_time or _now()
    if not skip_time_checks:
        _check_window(repo.course, task, when)
        _check_interval(repo, task, account, when)
    _check_quota(repo.course, account_usage(repo, account), _disk_bytes(incoming))
    account_dir = repo.account_dir(task.id, account)
    info = SubmissionInfo(course=repo.course.id, assignment=task.id, account=account,
                          upload_time=when, machine=task.machine, size=size, submitted_by=uploader)
    _write_new(incoming / SUBMISSION_CONFIG, info.to_yaml().encode("utf-8"))
    (incoming / "results").mkdir(mode=0o755)
    _write_new(incoming / "results" / GRADE_VMR, f"{SubmissionStatus.SAVED.value}\n".encode())
    fsutil.fsync_dir(incoming / "results")
    fsutil.fsync_dir(incoming)
    if not account_dir.is_dir():
        account_dir.mkdir(mode=0o755, parents=True)
        fsutil.fsync_dir(account_dir.parent)
    n = 0
    while (account_dir / folder_name(when, n)).exists():
        n += 1
    final = account_dir / folder_name(when, n)
    os.rename(incoming, final)
    fsutil.fsync_dir(account_dir)
    fsutil.fsync_dir(incoming.parent)
    fsutil.symlink_atomic(final.name, account_dir / CURRENT)
    return load_submission(final)


def _next_results_number(sub: Submission) -> int:
    taken = [int(p.name.removeprefix("results.")) for p in sub.earlier_results()]
    return max(taken, default=0) + 1


def _notify(notify: Notify | None, sub: Submission) -> None:
    """Hand a durable submission on; a failure here does not undo the save."""
    if notify is None:
        return
    try:
        notify(sub)
    except VmcheckerError as exc:
        log.warning("%s is saved but could not be queued: %s", sub.path, exc.message)
