"""The bundle carries everything the tester needs, and nothing a student can add:
the machine section round-trips (the grading keys included) and ``check.sh`` travels
exactly when the machine names a check script."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.util import HELLO_C, make_zip
from vmchecker import bundle
from vmchecker.config import parse_machine
from vmchecker.contract import CHECK_SCRIPT
from vmchecker.errors import BundleError


def _info(**machine) -> bundle.BundleInfo:
    data = {"name": "linux", "type": "kvm", "vm": "base", **machine}
    return bundle.BundleInfo(job_id="job1", key="k", course="so", assignment="1-hello", account="bob",
                             submission="2026.02.20 10.00.00", upload_time="2026-02-20 10:00:00", timeout=30,
                             machine=parse_machine(data, "test"))


def _build(tmp_path: Path, info: bundle.BundleInfo, check: bool) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    make_zip(src / "archive.zip", {"hello.c": HELLO_C})
    for name in ("build.sh", "run.sh", "check.sh"):
        (src / name).write_text(f"# {name}\n")
    return bundle.build_bundle(tmp_path / info.file_name, info, archive_path=src / "archive.zip", tests_path=None,
                               build_script=src / "build.sh", run_script=src / "run.sh",
                               check_script=src / "check.sh" if check else None)


def test_the_machine_section_round_trips_the_grading_keys(tmp_path):
    info = _info(student_user="pupil", check_script="grade-it.sh", limits={"disk_mb": 256, "memory_mb": 128})
    got = bundle.unpack_bundle(_build(tmp_path, info, check=True), tmp_path / "out")
    assert got == info
    assert (got.machine.student_user, got.machine.check_script, got.machine.limits.disk_mb) == \
        ("pupil", "grade-it.sh", 256)
    assert (tmp_path / "out" / CHECK_SCRIPT).read_text() == "# check.sh\n"


def test_no_check_script_no_check_member(tmp_path):
    info = _info()
    path = _build(tmp_path, info, check=False)
    assert CHECK_SCRIPT not in zipfile.ZipFile(path).namelist()
    assert bundle.unpack_bundle(path, tmp_path / "out").machine.check_script == ""


def test_build_refuses_a_check_script_the_machine_does_not_name(tmp_path):
    with pytest.raises(BundleError, match="check script"):
        _build(tmp_path, _info(), check=True)
    with pytest.raises(BundleError, match="check script"):
        _build(tmp_path / "b", _info(check_script="check.sh"), check=False)


def test_a_bundle_cannot_add_or_drop_the_check_step(tmp_path):
    folder = tmp_path / "out"
    bundle.unpack_bundle(_build(tmp_path, _info(), check=False), folder)
    (folder / CHECK_SCRIPT).write_text("echo +90\n")
    with pytest.raises(BundleError, match="has no check_script"):
        bundle.read_bundle_dir(folder)
    other = tmp_path / "other"
    other.mkdir()
    bundle.unpack_bundle(_build(other, _info(check_script="check.sh"), check=True), other / "out")
    (other / "out" / CHECK_SCRIPT).unlink()
    (other / "out" / CHECK_SCRIPT).symlink_to("/bin/true")
    with pytest.raises(BundleError, match="has no check.sh"):
        bundle.read_bundle_dir(other / "out")
