"""Unpacked bundle folders for executor tests, built from real files on the spot, and a
hook around a job's run step for tests that must make an order happen."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.util import HELLO_C, HELLO_MAKEFILE, make_zip
from vmchecker.bundle import BundleInfo
from vmchecker.config import parse_machine

BASE = "vmchecker-base"
HELLO_BUILD = "make\n"
# The course's run script: runs the student's program as the student (vmchecker-run),
# compares its output, writes the grade file (no line: full points).
HELLO_RUN = """\
out="$VMCHECKER_RESULTS/out.txt"
vmchecker-run ./hello > "$out"
cat "$out"
if cmp -s "$out" expected.txt; then echo "# hello ok" > "$VMCHECKER_GRADE"; else echo "-10: wrong output" > "$VMCHECKER_GRADE"; fi
"""
HELLO_FILES = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
HELLO_TESTS = {"expected.txt": "Hello, world!\n"}


def c_program(body: str, includes: str = "") -> dict[str, str]:
    """A student archive with one C program ``hello`` whose main() is ``body``."""
    source = "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <unistd.h>\n"
    source += includes + f"int main(void) {{\n{body}\n}}\n"
    return {"hello.c": source, "Makefile": HELLO_MAKEFILE}


def machine_data(**overrides) -> dict:
    data = {"name": "linux", "type": "lxc", "vm": BASE,
            "limits": {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}}
    limits = overrides.pop("limits", {})
    data["limits"].update(limits)
    data.update(overrides)
    return data


# The steps' timeout of a job whose test is not about timeouts: only a guard against a
# hang, far above a build under emulation on a busy machine (no passing test waits for it).
GUARD_TIMEOUT = 60


def make_bundle(folder: Path, files: dict[str, str | bytes] | None = None, *, build: str = HELLO_BUILD,
                run: str = HELLO_RUN, tests: dict[str, str | bytes] | None = None, timeout: int = GUARD_TIMEOUT,
                job_id: str = "job1", **machine) -> tuple[Path, BundleInfo]:
    """An unpacked bundle in ``folder`` (created): archive.zip of ``files``, tests.zip,
    build.sh, run.sh and submission-config.yaml for an lxc machine on the base container."""
    folder.mkdir(parents=True, exist_ok=True)
    make_zip(folder / "archive.zip", HELLO_FILES if files is None else files)
    make_zip(folder / "tests.zip", HELLO_TESTS if tests is None else tests)
    (folder / "build.sh").write_text(build)
    (folder / "run.sh").write_text(run)
    info = BundleInfo(job_id=job_id, key="secret", course="so", assignment="1-hello", account="bob",
                      submission="2026.02.20 10.00.00", upload_time="2026-02-20 10:00:00", timeout=timeout,
                      machine=parse_machine(machine_data(**machine), "test"))
    (folder / "submission-config.yaml").write_text(yaml.safe_dump(info.to_dict(), sort_keys=False))
    return folder, info


def vmr(bundle_dir: Path, name: str) -> str:
    return (bundle_dir / "results" / name).read_text(encoding="utf-8", errors="replace")


def result_json(bundle_dir: Path) -> dict:
    return json.loads(vmr(bundle_dir, "result.json"))


def run_job(host, folder: Path, machine: dict | None = None, **kwargs):
    """Build a bundle in ``folder`` (``machine``: make_bundle's machine overrides, e.g. a
    backend's base guest) and run it through ``host``; (the job, the bundle folder)."""
    bundle_dir, info = make_bundle(folder, **kwargs, **(machine or {}))
    return host.test_submission(bundle_dir, info.machine, info), bundle_dir


def around_run_step(monkeypatch: pytest.MonkeyPatch, host, *, before: Callable[[Path], object] | None = None,
                    after: Callable[[Path], object] | None = None) -> None:
    """Make every job ``host`` runs call ``before(results)`` just before its run step
    starts in the guest and ``after(results)`` once the step returned (``results``: that
    job's results folder), on the host side, in the job's own thread.

    How a test makes an order happen instead of sleeping and hoping: two jobs that wait
    for each other before their run steps are both up at once whatever their boot
    times; a job that waits after its run step for a kernel message to reach run-km.vmr
    stops its host commands only once it has. The guest cannot see a host file, so the
    wait is here. A hook that raises fails its job (an internal error of the executor)."""
    real_get_vm = host.get_vm

    def get_vm(*args, **kwargs):
        vm = real_get_vm(*args, **kwargs)
        real_run = vm.run
        signature = inspect.signature(real_run)

        def run(*run_args, **run_kwargs):
            call = signature.bind(*run_args, **run_kwargs).arguments
            is_run_step = call["argv"][2:3] == ["run"]   # [sh, vmchecker-step, step, shell]
            results = Path(call["stdout"].path).parent
            if is_run_step and before:
                before(results)
            step = real_run(*run_args, **run_kwargs)
            if is_run_step and after:
                after(results)
            return step

        vm.run = run
        return vm

    monkeypatch.setattr(host, "get_vm", get_vm)
