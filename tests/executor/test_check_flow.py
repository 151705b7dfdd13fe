"""The check step in the generic flow, on a real LXC guest: the course whose tests need
root in the guest. The student's code runs as root there, so the guest's grade file is
output only; the check runs on the tester after the guest is gone, sandboxed, and its
grade file is the grade the storer weighs."""

from __future__ import annotations

import pytest

from tests.executor.helpers import make_bundle, result_json, vmr
from vmchecker import evidence
from vmchecker.assignments import Assignment

pytestmark = pytest.mark.lxc

# Root in the guest, as a kernel-module course would be: the "program" forges the
# guest's grade file, which must not count.
RUN = """\
vmchecker-run ./hello > "$VMCHECKER_RESULTS/hello-output.vmr"
echo "+90: forged by the student's code, which ran as root" > "$VMCHECKER_GRADE"
"""
CHECK = """\
if grep -qx 'Hello, world!' "$VMCHECKER_OUTPUTS/hello-output.vmr"; then
    : > "$VMCHECKER_GRADE"
else
    echo "-10: hello did not print Hello, world!" > "$VMCHECKER_GRADE"
fi
"""


def _job(lxc_host, tmp_path, check: str, files=None):
    bundle_dir, info = make_bundle(tmp_path / "bundle", files, run=RUN, student_user="root",
                                   check_script="check.sh")
    (bundle_dir / "check.sh").write_text(check)
    job = lxc_host.test_submission(bundle_dir, info.machine, info)
    return job, bundle_dir


def _final(bundle_dir) -> evidence.Verdict:
    grade = bundle_dir / "results" / "grade.vmr"
    text = grade.read_text() if grade.is_file() else None
    return evidence.judge(result_json(bundle_dir), text, Assignment(id="1-hello", deadline=None, machine="linux"), check=True)


def test_the_check_grades_and_the_guests_grade_file_is_output_only(lxc_host, tmp_path):
    job, bundle_dir = _job(lxc_host, tmp_path, CHECK)
    assert job.status == "done", vmr(bundle_dir, "vmchecker-stderr.vmr")
    assert job.steps["check"].exit_code == 0, vmr(bundle_dir, "check-stderr.vmr")
    assert "+90" in vmr(bundle_dir, "guest-grade.vmr")       # kept for graders to see
    assert vmr(bundle_dir, "grade.vmr") == ""               # the check's: full points
    assert _final(bundle_dir).text == "done\n"


def test_a_check_that_fails_scores_points_on_failure(lxc_host, tmp_path):
    job, bundle_dir = _job(lxc_host, tmp_path, "exit 3\n")
    assert job.steps["check"].exit_code == 3
    verdict = _final(bundle_dir)
    assert verdict.reason == "the check script exited with status 3"
    assert verdict.text.startswith("-10: the check script exited with status 3")
