"""The worked example of docs/course-authors.md, graded for real: its files in
docs/examples/sum/ run on an LXC guest through the executor, and each solution gets the
grade the guide promises, computed as the storer does (``evidence.judge`` on the
tester's result.json and the tests' grade lines, then ``penalty.compute``).

A change to the example that the guide does not follow (or the other way round) fails
here: the point values are read from the example's own files.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.executor.helpers import BASE, run_job
from tests.lab import lxc_unusable
from vmchecker import evidence, penalty
from vmchecker.assignments import Assignment
from vmchecker.confparse import build
from vmchecker.contract import GRADE_VMR, RESULT_JSON
from vmchecker.storer.outcomes import read_result

pytestmark = pytest.mark.lxc

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "sum"
GUIDE = EXAMPLE.parents[1] / "course-authors.md"
ON_TIME = dt.datetime(2026, 3, 1, 12, 0, 0)


def example_assignment() -> Assignment:
    """The example's assignment.yaml, as the course config would read it."""
    path = EXAMPLE / "assignment.yaml"
    (name, body), = yaml.safe_load(path.read_text()).items()
    return build(Assignment, {**body, "id": name}, path, f"assignments.{name}")


def points_per_test() -> int:
    return int(re.search(r"^POINTS_PER_TEST=(\d+)$", (EXAMPLE / "run.sh").read_text(), re.M).group(1))


def example_tests_zip() -> dict[str, bytes]:
    """tests/sum.zip of the course: the tests/ folder, as ``zip -r sum.zip tests`` makes it."""
    return {f"tests/{p.name}": p.read_bytes() for p in sorted((EXAMPLE / "tests").iterdir())}


def solution(name: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (EXAMPLE / "solutions" / name).iterdir()}


@pytest.fixture(scope="module")
def lxc_host():
    reason = lxc_unusable(BASE)
    if reason:
        pytest.skip(reason)
    from vmchecker.executor import get_host

    host = get_host("lxc")
    yield host
    mine = [n for n in host.clones() if f"-{os.getpid()}-" in n]
    for name in mine:
        host.destroy_clone(name)
    assert not mine, f"clones left behind: {mine}"


def grade(host, tmp_path: Path, name: str) -> tuple[float | None, str | None, Path]:
    """Run solution ``name`` as a job; its grade, the short reason beside it, its results."""
    task = example_assignment()
    job, bundle = run_job(host, tmp_path / name, files=solution(name), tests=example_tests_zip(),
                          build=(EXAMPLE / "build.sh").read_text(), run=(EXAMPLE / "run.sh").read_text(),
                          timeout=task.timeout, job_id=f"sum-{name}")
    results = bundle / "results"
    tests_lines = (results / GRADE_VMR).read_text() if (results / GRADE_VMR).is_file() else None
    verdict = evidence.judge(read_result(results / RESULT_JSON), tests_lines, task)
    result = penalty.compute(task, [], ON_TIME, verdict.text)
    return result.grade, result.reason, results


def test_the_example_is_what_the_guide_shows() -> None:
    guide = GUIDE.read_text()
    assert "docs/examples/sum/" in guide
    for path in ("build.sh", "run.sh", "assignment.yaml"):
        assert (EXAMPLE / path).read_text().strip() in guide, f"{path} differs from its copy in the guide"
    task = example_assignment()
    assert (task.total_points, task.points_on_failure, task.ceiling) == (10, 0, 10)
    assert sorted(p.name for p in (EXAMPLE / "tests").iterdir()) == ["1.in", "1.out", "2.in", "2.out", "3.in", "3.out"]


def test_the_correct_solution_earns_full_points(lxc_host, tmp_path: Path) -> None:
    points, reason, results = grade(lxc_host, tmp_path, "correct")
    assert (points, reason) == (10, None), (results / "run-stdout.vmr").read_text()
    assert (results / "run-stdout.vmr").read_text().splitlines() == [f"test {n}: passed" for n in (1, 2, 3)]
    assert (results / "test-3.vmr").read_text() == "4000000001\n"      # the student sees what it printed


def test_a_solution_failing_one_test_loses_its_points(lxc_host, tmp_path: Path) -> None:
    points, reason, results = grade(lxc_host, tmp_path, "overflow")
    assert points == 10 - points_per_test(), (results / "run-stdout.vmr").read_text()
    assert reason == "test 3 failed (wrong output)"
    assert (results / GRADE_VMR).read_text() == f"-{points_per_test()}: test 3 failed (wrong output)\n"


def test_a_solution_that_does_not_compile_scores_points_on_failure(lxc_host, tmp_path: Path) -> None:
    points, reason, results = grade(lxc_host, tmp_path, "broken")
    assert points == example_assignment().points_on_failure == 0
    assert reason == "the build failed (exit status 1)"
    assert "error" in (results / "build-stderr.vmr").read_text()    # the compiler's message, for the student
