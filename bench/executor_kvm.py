#!/usr/bin/env python3
"""Benchmark: the KVM executor's overhead per job, for each revert mode (issue 5, item 4).

Runs the small C assignment of bench/executor.py (build with make, run, compare output,
write grade.vmr) N times through the KVM executor with ``revert: snapshot`` (RAM snapshot
loaded per job) and with ``revert: overlay`` (a transient guest booted per job on a fresh
overlay), on the guest kvm-resources/build-image.sh builds. Two overheads per job:
``overhead`` = total - run step, the definition bench/executor.py uses for LXC (it
includes the build, i.e. gcc under TCG here), and ``executor`` = total - build - run,
what the executor itself costs. Ends with ONE line of name=value pairs including
``overhead_median_s_kvm_snapshot`` and ``overhead_median_s_kvm_overlay`` (goal: <= 3 s
with snapshot under TCG; thesis, with hardware KVM: 26 s).

    .venv/bin/python bench/executor_kvm.py [--jobs 10] [--overlay-jobs 3]

bench/executor.py can call :func:`kvm_overhead` and join its figures to its last line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from executor import MAKEFILE, RUN, _zip, spread  # noqa: E402  (bench/executor.py)

from vmchecker.bundle import BundleInfo  # noqa: E402
from vmchecker.config import parse_machine  # noqa: E402
from vmchecker.executor import get_host  # noqa: E402

HELLO_C = '#include <stdio.h>\nint main(void) { puts("Hello, world!"); return 0; }\n'
BASE = "vmchecker-kvm-base"


def make_bundle(folder: Path, job_id: str, machine: dict) -> tuple[Path, BundleInfo]:
    folder.mkdir(parents=True)
    (folder / "archive.zip").write_bytes(_zip({"hello.c": HELLO_C, "Makefile": MAKEFILE}))
    (folder / "tests.zip").write_bytes(_zip({"expected.txt": "Hello, world!\n"}))
    (folder / "build.sh").write_text("make\n")
    (folder / "run.sh").write_text(RUN)
    info = BundleInfo(job_id=job_id, key="k", course="bench", assignment="hello", account="bench",
                      submission="s", upload_time="2026-01-01 00:00:00", timeout=30,
                      machine=parse_machine({"name": "linux-kvm", "type": "kvm", **machine}, "bench"))
    (folder / "submission-config.yaml").write_text(yaml.safe_dump(info.to_dict(), sort_keys=False))
    return folder, info


def one_mode(mode: str, jobs: int, vm: str, state: str) -> dict[str, float]:
    """Run ``jobs`` jobs (after one warm-up job) with ``revert: mode``; their figures."""
    host = get_host("kvm")
    machine = {"vm": vm, "revert": mode, "base_image": f"{state}/base.qcow2"}
    overheads, executors, totals = [], [], []
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmchecker-bench-kvm-") as tmp:
        for i in range(jobs + 1):
            folder, info = make_bundle(Path(tmp) / f"job{i}", f"bench{mode}{i}", machine)
            start = time.monotonic()
            job = host.test_submission(folder, info.machine, info)
            total = time.monotonic() - start
            if job.status != "done" or not job.steps["run"].succeeded:
                raise SystemExit(f"bench job {mode} {i} failed: {job.status} {job.message}")
            if i == 0:
                continue
            run, build = job.steps["run"].wall_s, job.steps["build"].wall_s
            totals.append(total)
            overheads.append(total - run)
            executors.append(total - run - build)
            for name, seconds in job.phases.items():
                phases.setdefault(name, []).append(seconds)
            print(f"{mode:8s} job {i:3d}: total {total:.3f} s  build {build:.3f} s  run {run:.3f} s"
                  f"  overhead {total - run:.3f} s  executor {total - run - build:.3f} s")
    figures = {}
    for name, values in (("total", totals), ("overhead", overheads), ("executor", executors)):
        median, p10, p90 = spread(values)
        print(f"{mode:8s} {name:9s} median {median:.3f} s  p10 {p10:.3f} s  p90 {p90:.3f} s")
        figures[f"{name}_median_s_kvm_{mode}"] = median
    print(f"{mode:8s} phases (median): " + "  ".join(f"{n} {statistics.median(v):.3f}" for n, v in phases.items()))
    return figures


def kvm_overhead(jobs: int = 10, overlay_jobs: int = 3, vm: str = BASE,
                 state: str = "/var/lib/vmchecker/kvm") -> dict[str, float]:
    """Both revert modes; figures for the last line of a benchmark."""
    figures: dict[str, float] = {"jobs_kvm_snapshot": jobs, "jobs_kvm_overlay": overlay_jobs}
    figures.update(one_mode("snapshot", jobs, vm, state))
    figures.update(one_mode("overlay", overlay_jobs, vm, state))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10, help="jobs timed with revert: snapshot (default 10)")
    p.add_argument("--overlay-jobs", type=int, default=3, help="jobs timed with revert: overlay (default 3)")
    p.add_argument("--vm", default=BASE, help=f"libvirt base domain (default {BASE})")
    p.add_argument("--state", default="/var/lib/vmchecker/kvm", help="folder of base.qcow2")
    args = p.parse_args(argv)
    figures = kvm_overhead(args.jobs, args.overlay_jobs, args.vm, args.state)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
