"""The bundle: everything a tester needs to grade one submission, in one zip.

A bundle is named ``<course>_<assignment>_<account>_<jobid>.zip`` and holds exactly
``archive.zip`` (the upload), ``tests.zip`` (the assignment's tests, possibly empty),
``build.sh``, ``run.sh`` and ``submission-config.yaml`` (see :class:`BundleInfo`), and
``check.sh`` exactly when the machine has a ``check_script`` (the check step the tester
runs after the guest is gone).
The member names are fixed, so a student archive can never shadow them: the upload
travels as one opaque member. The storer builds it from a saved submission; the tester
unpacks it with the same safe unpacking as uploads and validates it before anything runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmchecker import archive
from vmchecker.config import Machine, machine_to_dict, parse_machine
from vmchecker.confparse import safe_load
from vmchecker.contract import (
    ARCHIVE,
    BUILD_SCRIPT,
    BUNDLE_MEMBERS,
    CHECK_SCRIPT,
    JOB_ID_RE,
    RUN_SCRIPT,
    SUBMISSION_CONFIG,
    TESTS,
)
from vmchecker.errors import ArchiveError, BundleError, ConfigError

log = logging.getLogger(__name__)

# Caps for the tester's unpacking of a whole bundle (the upload inside is capped by
# the course's max_submission_size on the storer already).
BUNDLE_LIMITS = archive.ArchiveLimits(max_members=16, max_total_size=2 * 1024**3, max_ratio=1000)


@dataclass(frozen=True)
class BundleInfo:
    """The bundle's ``submission-config.yaml``: who, what, where to report, how to run."""

    job_id: str
    key: str
    course: str
    assignment: str
    account: str
    submission: str
    upload_time: str
    timeout: int
    machine: Machine
    notify_url: str = ""
    # The tester's own key for this course (the same in every bundle sent to it): how its
    # queue manager proves who it is when it tells the daemon it is back (tester_back).
    tester_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["machine"] = machine_to_dict(self.machine)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = SUBMISSION_CONFIG) -> BundleInfo:
        """Validate data read from a bundle; raise BundleError saying what is wrong."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - names)
        if unknown:
            raise BundleError(f"{source}: unknown key {unknown[0]!r}")
        missing = sorted(n for n in names - {"notify_url", "tester_key"} if n not in data)
        if missing:
            raise BundleError(f"{source}: missing key {missing[0]!r}")
        values = dict(data)
        for name in ("job_id", "key", "course", "assignment", "account", "submission",
                     "upload_time", "notify_url", "tester_key"):
            if name in values and not isinstance(values[name], str):
                raise BundleError(f"{source}: {name} must be a string")
        if not JOB_ID_RE.match(values["job_id"]):
            raise BundleError(f"{source}: bad job_id {values['job_id']!r}")
        timeout = values["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise BundleError(f"{source}: timeout must be a positive integer")
        try:
            values["machine"] = parse_machine(values["machine"], source, "machine")
        except ConfigError as exc:
            raise BundleError(exc.message) from None
        return cls(**values)

    @property
    def file_name(self) -> str:
        return bundle_name(self.course, self.assignment, self.account, self.job_id)


def bundle_name(course: str, assignment: str, account: str, job_id: str) -> str:
    return f"{course}_{assignment}_{account}_{job_id}.zip"


def build_bundle(dest: Path, info: BundleInfo, *, archive_path: Path, tests_path: Path | None,
                 build_script: Path, run_script: Path, check_script: Path | None = None) -> Path:
    """Write the bundle zip to ``dest`` atomically (temp name, fsync, rename).

    ``check_script`` is required exactly when ``info.machine`` names one."""
    if bool(info.machine.check_script) != (check_script is not None):
        raise BundleError(f"machine {info.machine.name!r}: check_script {info.machine.check_script!r}"
                          f" but {'a' if check_script is not None else 'no'} check script given")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
                zf.write(archive_path, ARCHIVE)
                if tests_path is not None and Path(tests_path).exists():
                    zf.write(tests_path, TESTS)
                else:
                    zf.writestr(TESTS, _empty_zip())
                zf.write(build_script, BUILD_SCRIPT)
                zf.write(run_script, RUN_SCRIPT)
                if check_script is not None:
                    zf.write(check_script, CHECK_SCRIPT)
                zf.writestr(SUBMISSION_CONFIG, yaml.safe_dump(info.to_dict(), sort_keys=False))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _empty_zip() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w"):
        pass
    return buf.getvalue()


def unpack_bundle(bundle_zip: Path, dest: Path) -> BundleInfo:
    """Safely unpack a bundle into ``dest`` and return its validated info."""
    try:
        archive.safe_extract(Path(bundle_zip), Path(dest), BUNDLE_LIMITS)
    except ArchiveError as exc:
        raise BundleError(f"{Path(bundle_zip).name}: not a valid bundle: {exc.message}") from None
    return read_bundle_dir(dest)


def read_bundle_dir(bundle_dir: Path) -> BundleInfo:
    """Validate an unpacked bundle folder (as ``vmchecker-vm-executor`` takes it)."""
    bundle_dir = Path(bundle_dir)
    for name in BUNDLE_MEMBERS:
        if not _is_member(bundle_dir / name):
            raise BundleError(f"{bundle_dir}: bundle has no {name}")
    known = (*BUNDLE_MEMBERS, CHECK_SCRIPT, "results")
    extra = sorted(p.name for p in bundle_dir.iterdir() if p.name not in known)
    if extra:
        raise BundleError(f"{bundle_dir}: unexpected member {extra[0]!r} in bundle")
    try:
        data = safe_load((bundle_dir / SUBMISSION_CONFIG).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle_dir / SUBMISSION_CONFIG}: not valid YAML: {exc}") from None
    info = BundleInfo.from_dict(data, str(bundle_dir / SUBMISSION_CONFIG))
    # A check step runs exactly when the course configured one: a bundle cannot add
    # one the machine does not name, nor drop the one it does.
    has_check = (bundle_dir / CHECK_SCRIPT).exists() or (bundle_dir / CHECK_SCRIPT).is_symlink()
    if info.machine.check_script and not _is_member(bundle_dir / CHECK_SCRIPT):
        raise BundleError(f"{bundle_dir}: bundle has no {CHECK_SCRIPT} (the machine's check_script)")
    if has_check and not info.machine.check_script:
        raise BundleError(f"{bundle_dir}: unexpected member {CHECK_SCRIPT!r}: the machine has no check_script")
    return info


def _is_member(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()
