"""The grading contract on real guests: what each submission earns, on every backend.

Each case runs one real job through ``Host.test_submission`` with the course of
:mod:`tests.executor.grading_cases` (``make``; a run.sh that starts ./hello through
``vmchecker-run --timeout`` and writes grade lines to ``$VMCHECKER_GRADE``), then
weighs its results exactly as the storer does (:func:`grading_cases.final_grade`:
``evidence.judge`` then ``penalty.compute``, 10 points, nothing on failure).

* No points without evidence: an empty archive, a compile error, an infinite loop (stopped
  by the tests' helper, or killed with the run step), a fork bomb, an output flood, a
  memory hog and a program that kills its parent each get 0, with the reason in the grade.
* Student code cannot reach the grade: a correct program gets exactly 10, never more,
  however it, its Makefile, a background process its Makefile left, a ``grade.vmr`` in
  its archive or a symlink named like a result file try to write the grade or replace
  ``run.sh`` or the tests; ``+5: bonus`` in its output is output, not a grade line. "Exactly"
  is checked twice: under the assignment's ceiling of 10 and without one (a forged
  ``+90`` would show as 100 there).

Jobs are costly under TCG, so one job may serve several tests (run once per backend, on
first use): the forging build attacks the grade, run.sh, the tests and the results at
once, and each test names and checks one of those behaviours.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.executor import grading_cases as cases
from tests.executor.conftest import owned_clones
from tests.executor.docker_fixtures import docker_machine, owned_containers, remove_container
from tests.executor.helpers import run_job, vmr
from tests.executor.kvm_fixtures import job_leftovers, kvm_machine, remove_leftover
from tests.executor.vmware_fixtures import clone_leftovers, reset
from vmchecker.executor import base
from vmchecker.executor.results import JobResult


@dataclass(frozen=True)
class Case:
    """One job: the student's archive and the limits it runs under."""

    files: dict[str, str]
    timeout: int | None = 60               # the assignment's timeout (each step); None: the backend's short one
    helper_timeout: float = cases.HELPER_TIMEOUT
    limits: dict = field(default_factory=dict)


CASES = {
    "correct": Case(cases.CORRECT),
    "empty": Case(cases.EMPTY),
    "compile-error": Case(cases.COMPILE_ERROR),
    "loop": Case(cases.INFINITE_LOOP, helper_timeout=3),
    "loop-past-the-step": Case(cases.INFINITE_LOOP, timeout=None, helper_timeout=600),
    "fork-bomb": Case(cases.FORK_BOMB, limits={"pids": 64}),
    "flood": Case(cases.OUTPUT_FLOOD, limits={"output_kb": 16}),
    "memory-hog": Case(cases.MEMORY_HOG, limits={"memory_mb": 64}),
    "kills-parent": Case(cases.KILLS_PARENT),
    "forging-program": Case(cases.FORGING_PROGRAM),
    "forging-build": Case(cases.FORGING_BUILD),
    "wrong-forging-build": Case(cases.WRONG_FORGING_BUILD),
}


@dataclass
class Backend:
    name: str
    host: base.Host
    machine: dict                    # make_bundle overrides: the backend's base guest
    short_timeout: int               # a run step that cannot finish is killed after this
    leftovers: Callable[[], list[str]]
    remove: Callable[[str], None]


def _lxc(host: base.Host) -> Backend:
    mine = {os.getpid()}
    return Backend("lxc", host, {}, 5, lambda: owned_clones(host, mine), host.destroy_clone)


def _kvm(host: base.Host) -> Backend:
    pid = os.getpid()
    # TCG: the build alone takes seconds, and it runs under the same timeout.
    return Backend("kvm", host, kvm_machine(), 15, lambda: job_leftovers(host, pid),
                   lambda item: remove_leftover(host, item))


def _docker(host: base.Host) -> Backend:
    mine = {os.getpid()}
    return Backend("docker", host, docker_machine(), 5, lambda: owned_containers(host, mine),
                   lambda name: remove_container(host, name))


def _vmware(host: base.Host) -> Backend:
    # A few round trips to the server per command, and the build under the same timeout.
    return Backend("vmware", host, host.machine_keys(), 10, lambda: clone_leftovers(host),
                   lambda item: reset(host, item))


@pytest.fixture(scope="module",
                params=[pytest.param("lxc", marks=pytest.mark.lxc), pytest.param("kvm", marks=pytest.mark.kvm),
                        pytest.param("docker", marks=pytest.mark.docker),
                        pytest.param("vmware", marks=pytest.mark.vmware)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """One backend on a real guest (skips with the reason where it cannot run)."""
    make = {"lxc": _lxc, "kvm": _kvm, "docker": _docker, "vmware": _vmware}[request.param]
    return make(request.getfixturevalue(f"{request.param}_host"))


@dataclass(frozen=True)
class Ran:
    """A finished job and the grade the storer would give it."""

    job: JobResult
    bundle: Path
    grade: cases.Grade

    def vmr(self, name: str) -> str:
        return vmr(self.bundle, name)

    def results(self) -> list[str]:
        return sorted(p.name for p in (self.bundle / "results").iterdir())


@pytest.fixture(scope="module")
def ran(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Ran]]:
    """``ran(case)``: the case's job on this backend, run on first use; no guest of it
    may be left behind."""
    done: dict[str, Ran] = {}

    def get(name: str) -> Ran:
        if name not in done:
            case = CASES[name]
            folder = tmp_path_factory.mktemp(f"{backend.name}-{name}") / "bundle"
            job, bundle = run_job(backend.host, folder, {**backend.machine, "limits": case.limits},
                                  files=case.files, build=cases.BUILD_SH, run=cases.run_sh(case.helper_timeout),
                                  tests=cases.TESTS, timeout=case.timeout or backend.short_timeout, job_id=name)
            left = backend.leftovers()
            for item in left:   # do not let one failure cascade into the next jobs
                backend.remove(item)
            assert not left, f"{backend.name}: job {name} left behind: {left}"
            done[name] = Ran(job, bundle, cases.final_grade(bundle / "results"))
        return done[name]

    yield get


def _nothing(ran: Ran, *reasons: str) -> None:
    """The job earned 0, and its grade's first line says why in one of ``reasons``' words."""
    assert ran.job.status == "done", ran.vmr("vmchecker-stderr.vmr")
    assert (ran.grade.points, ran.grade.uncapped) == (0, 0), ran.grade.text
    first = ran.grade.text.splitlines()[0]
    assert first.startswith("-10: "), ran.grade.text
    assert any(r in first for r in reasons), f"{first!r} gives none of the reasons {reasons}"


def _exactly_full(ran: Ran) -> None:
    """The job earned exactly 10: the tests wrote no line, nothing else counted."""
    assert ran.job.status == "done", ran.vmr("vmchecker-stderr.vmr")
    assert ran.job.steps["build"].exit_code == 0 and ran.job.steps["run"].exit_code == 0
    assert (ran.grade.points, ran.grade.uncapped) == (10, 10), ran.grade.text
    assert ran.grade.text == "done\n" and ran.grade.reason is None
    assert "PASS: hello printed the expected line" in ran.vmr("run-stdout.vmr")


def _attacks(ran: Ran, names: tuple[str, ...]) -> None:
    """Each attack the build tried among ``names`` was refused."""
    outcomes = cases.attack_outcomes(ran.vmr("build-stdout.vmr"))
    assert {n: outcomes.get(n) for n in names} == dict.fromkeys(names, "refused"), ran.vmr("build-stdout.vmr")


# --------------------------------------------------------------------------- no evidence, no points


def test_correct_program_gets_full_points(ran):
    _exactly_full(ran("correct"))
    assert ran("correct").vmr("out.vmr") == "Hello, world!\n"


def test_empty_archive_gets_nothing(ran):
    job = ran("empty")
    _nothing(job, "the build failed")
    assert not job.job.steps["run"].attempted


def test_compile_error_gets_nothing(ran):
    job = ran("compile-error")
    _nothing(job, "the build failed (exit status 2)")
    assert "hello.c" in job.vmr("build-stderr.vmr") and not job.job.steps["run"].attempted


def test_infinite_loop_stopped_by_the_tests_gets_nothing(ran):
    job = ran("loop")
    _nothing(job, "hello did not finish within 3 s")
    assert "did not finish within 3 s and was stopped" in job.vmr("run-stderr.vmr")   # vmchecker-run's line


def test_infinite_loop_killed_with_the_run_step_gets_nothing(ran, backend):
    # run.sh would wait 600 s: the step's timeout kills it before it writes any line.
    job = ran("loop-past-the-step")
    _nothing(job, f"the tests did not finish within {backend.short_timeout} s and were killed")
    assert job.job.steps["run"].timed_out


def test_fork_bomb_gets_nothing(ran):
    _nothing(ran("fork-bomb"), "did not finish", "killed by signal")


def test_output_flood_gets_nothing(ran):
    job = ran("flood")
    _nothing(job, "hello was killed by signal 13", "did not finish")
    assert "[vmchecker: output truncated at 16 KiB" in job.vmr("run-stderr.vmr")


def test_memory_hog_gets_nothing(ran):
    job = ran("memory-hog")
    _nothing(job, "out of memory", "killed by signal 9", "did not finish", "exited with status 3")
    assert "Hello, world!" not in job.vmr("out.vmr")


def test_program_that_kills_its_parent_gets_nothing(ran):
    job = ran("kills-parent")
    # Its parent is vmchecker-run's timer, the trusted user's like run.sh: the kill is
    # refused, and ./hello never prints the expected line.
    _nothing(job, "hello did not print the expected line")
    kills = re.findall(r"^kill\((.*)\): (.*)$", job.vmr("run-stderr.vmr"), re.M)
    assert ("bash", "Operation not permitted") in kills, kills
    assert {name for name, outcome in kills if outcome == "done"} <= {"timeout"}, kills


# --------------------------------------------------------------------------- student code cannot reach the grade


def test_program_cannot_write_its_grade(ran):
    job = ran("forging-program")
    _exactly_full(job)
    stderr = job.vmr("run-stderr.vmr")
    for path in ("/vmchecker/results/grade.vmr", "../results/grade.vmr", "../results/forged.vmr",
                 "../course/run.sh"):
        assert f"forge {path}: Permission denied" in stderr, stderr
    assert "unlink expected.txt: Operation not permitted" in stderr
    assert "forge grade.vmr: written" in stderr    # its own file in the job folder: never read
    assert "forged.vmr" not in job.results()


def test_plus_line_in_the_output_is_not_a_grade_line(ran):
    job = ran("forging-program")
    _exactly_full(job)
    assert "+5: bonus" in job.vmr("out.vmr") and "+5: bonus" in job.vmr("run-stdout.vmr")
    assert "+5: bonus" in job.vmr("run-stderr.vmr")


def test_makefile_cannot_write_the_grade(ran):
    job = ran("forging-build")
    _exactly_full(job)
    _attacks(job, cases.GRADE_ATTACKS)
    assert cases.attack_outcomes(job.vmr("build-stdout.vmr"))["write ./grade.vmr"] == "WORKED"   # never read


def test_makefile_cannot_replace_run_sh(ran):
    for name in ("forging-build", "wrong-forging-build"):
        _attacks(ran(name), cases.COURSE_ATTACKS)
    assert cases.attack_outcomes(ran("forging-build").vmr("build-stdout.vmr"))["shadow ./run.sh"] == "WORKED"
    _exactly_full(ran("forging-build"))
    # the forged run.sh would have passed a wrong program (and given it +90)
    _nothing(ran("wrong-forging-build"), "hello did not print the expected line")


def test_makefile_cannot_replace_the_tests(ran):
    for name in ("forging-build", "wrong-forging-build"):
        _attacks(ran(name), cases.TESTS_ATTACKS)
    _exactly_full(ran("forging-build"))   # a truncated or "owned" expected.txt would have failed it
    _nothing(ran("wrong-forging-build"), "hello did not print the expected line")   # ...and passed this one


def test_background_process_of_the_build_is_dead_before_the_run(ran):
    for name in ("forging-build", "wrong-forging-build"):
        job = ran(name)
        started = cases.attack_outcomes(job.vmr("build-stdout.vmr"))["background process"]
        pid = started.removeprefix("started ")
        assert started.startswith("started ") and pid.isdigit(), started
        assert f"background process {pid}: gone" in job.vmr("run-stderr.vmr"), job.vmr("run-stderr.vmr")
    _exactly_full(ran("forging-build"))


def test_grade_vmr_in_the_archive_is_not_the_grade(ran):
    job = ran("forging-build")
    _exactly_full(job)
    assert "forged.vmr" not in job.results()   # the archive's *.vmr stay in the job folder


def test_symlinks_named_like_result_files_are_not_followed(ran):
    job = ran("forging-build")
    outcomes = cases.attack_outcomes(job.vmr("build-stdout.vmr"))
    assert {n: outcomes.get(n) for n in cases.SYMLINK_ATTACKS} == dict.fromkeys(cases.SYMLINK_ATTACKS, "WORKED")
    _exactly_full(job)
    results = job.bundle / "results"
    assert "leak.vmr" not in job.results()
    assert not [p.name for p in results.iterdir() if p.is_symlink()]
    assert job.vmr("out.vmr").startswith("Hello, world!\n")   # run.sh's own file, not the build's link
