"""A job's results on the tester: written in the work folder, made durable in ``done/``.

A bundle may leave ``queue/`` only once its results survive a crash,
so :func:`commit` copies them into ``done/<jobid>/``, fsyncs every file and the folder,
and writes the completion marker last. The marker also holds the notification to send,
so a crash at any later point loses nothing: at start-up, a marked job whose bundle is
still queued is finished from the marker alone (see ``queue_manager``). A folder
without a marker is an interrupted commit and is thrown away; its bundle is still queued.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vmchecker import fsutil, rpc
from vmchecker.contract import (
    DONE_MARKER,
    RESULT_JSON,
    STAGE_STAT_PREFIX,
    TESTER_STAGES,
    VMCHECKER_STDERR,
    ResultStatus,
)
from vmchecker.errors import RpcError

log = logging.getLogger(__name__)

MARKER = DONE_MARKER
KEY_FILE_MODE = 0o600      # a file holding a job's key: whoever reads it can notify for the job
RESULTS_DIR_MODE = 0o755
RESULT_FILE_MODE = 0o644
MAX_RESULT_JSON = 1024 * 1024


def read_status(results_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The status the executor wrote in ``result.json`` (None if absent or unusable)."""
    path = results_dir / RESULT_JSON
    try:
        if path.is_symlink() or path.stat().st_size > MAX_RESULT_JSON:
            return None, {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    if not isinstance(data, dict) or data.get("status") not in tuple(ResultStatus):
        return None, data if isinstance(data, dict) else {}
    return data["status"], data


def stage_stats(result: dict[str, Any]) -> dict[str, float]:
    """The tester's stages of a ``result.json`` (its ``timeline``: stage -> wall-clock
    time) as a notification's stats, ``at_<stage>``: how the executor's moments reach the
    storer's journal. Anything that is not a known tester stage with a finite time is left out."""
    timeline = result.get("timeline")
    if not isinstance(timeline, dict):
        return {}
    return {STAGE_STAT_PREFIX + stage: float(at) for stage, at in timeline.items()
            if stage in TESTER_STAGES and isinstance(at, (int, float)) and not isinstance(at, bool)
            and math.isfinite(at)}


def write_error(results_dir: Path, reason: str, details: dict[str, Any] | None = None) -> None:
    """Record that the job failed on the tester: the reason in vmchecker-stderr.vmr and
    an ``error`` result.json in the executor's format (the reason under ``message``),
    replaced atomically. Whatever else the executor wrote before failing is kept."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stderr = results_dir / VMCHECKER_STDERR
    if stderr.is_symlink():
        stderr.unlink()
    with open(stderr, "a", encoding="utf-8") as f:
        f.write(f"vmchecker tester: {reason}\n")
    result = {"status": ResultStatus.ERROR.value, "message": reason, **(details or {})}
    fsutil.write_atomic(results_dir / RESULT_JSON, json.dumps(result, indent=2) + "\n")


def _result_files(results_dir: Path) -> list[Path]:
    """Regular top-level files whose names can travel in ``notify`` (the rest is logged)."""
    files = []
    for path in sorted(results_dir.iterdir()) if results_dir.is_dir() else []:
        try:
            rpc.check_file_name(path.name)
        except RpcError as exc:
            log.warning("%r: not sent to the storer: %s", str(path), exc.message)  # %r: a name may hold a newline
            continue
        if path.name.startswith(".") or path.is_symlink() or not path.is_file():
            log.warning("%r: not sent to the storer: not a regular file", str(path))
            continue
        files.append(path)
    return files[: rpc.MAX_FILES]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(results_dir: Path, done_root: Path, job_id: str, marker: dict[str, Any]) -> list[str]:
    """Make ``results_dir``'s files durable in ``done_root/<job_id>/`` and mark it complete.

    Returns the names committed. ``marker`` is stored (with ``files`` added) in the
    completion marker, written last. ``job_id`` must be a valid job id: it names the
    folder replaced here (RpcError otherwise)."""
    final = done_root / rpc.check_job_id(job_id)
    if final.exists():
        log.warning("%s: replacing earlier results of job %s", final, job_id)
        shutil.rmtree(final)
    final.mkdir(parents=True)
    # Modes are explicit, whatever the umask: the storer's account reads the results
    # (folder 0755, files 0644); the marker holds the job's key and is root's alone.
    final.chmod(RESULTS_DIR_MODE)
    names = []
    for src in _result_files(results_dir):
        dest = final / src.name
        try:
            os.replace(src, dest)
        except OSError:  # another file system
            shutil.copyfile(src, dest)
        dest.chmod(RESULT_FILE_MODE)
        _fsync_file(dest)
        names.append(src.name)
    fsutil.fsync_dir(final)
    fsutil.fsync_dir(done_root)
    fsutil.write_atomic(final / MARKER, json.dumps({**marker, "files": names, "committed": time.time()}),
                        KEY_FILE_MODE)
    return names


def read_marker(job_dir: Path) -> dict[str, Any] | None:
    """The completion marker of ``done/<jobid>/``, or None if the job is not complete."""
    try:
        data = json.loads((job_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scan_done(done_root: Path) -> dict[str, dict[str, Any]]:
    """Complete jobs by bundle name; incomplete folders (a commit cut short) are removed."""
    complete: dict[str, dict[str, Any]] = {}
    if not done_root.is_dir():
        return complete
    for job_dir in sorted(done_root.iterdir()):
        if job_dir.name.startswith(".") or not job_dir.is_dir():
            continue
        marker = read_marker(job_dir)
        if marker is None:
            log.warning("%r: results never completed (interrupted run); removing them", str(job_dir))
            try:
                shutil.rmtree(job_dir)
            except OSError as exc:
                log.error("cannot remove the incomplete results %r: %s", str(job_dir), exc)
            continue
        complete[str(marker.get("bundle", ""))] = marker
    return complete


def cleanup_done(done_root: Path, max_age_days: float | None, keep: set[str] = frozenset()) -> list[str]:
    """The clean-up policy for ``done/``: remove complete jobs older than ``max_age_days``
    (None keeps everything, the default), except those in ``keep`` (e.g. not yet notified).

    The storer pulls results after ``notify``; a tester that keeps results a while lets
    a sysadmin re-pull them by hand."""
    if max_age_days is None or not done_root.is_dir():
        return []
    limit = time.time() - max_age_days * 86400
    removed = []
    for job_dir in sorted(done_root.iterdir()):
        if job_dir.name in keep or not job_dir.is_dir() or job_dir.name.startswith("."):
            continue
        try:
            committed = (job_dir / MARKER).stat().st_mtime
        except FileNotFoundError:
            continue
        if committed < limit:
            try:
                shutil.rmtree(job_dir)
            except OSError as exc:
                log.error("cannot remove old results %r: %s", str(job_dir), exc)
                continue
            removed.append(job_dir.name)
    if removed:
        log.info("removed %d result folders older than %s days from %s", len(removed), max_age_days, done_root)
    return removed
