#!/usr/bin/env python3
"""Benchmark: the executor's own overhead per job (issue 3, item 7).

Runs N jobs of a small C assignment (build with make, run, compare output, write
grade.vmr) one after the other through the executor directly, on the LXC base
container, and prints per-job total, run-step time and overhead (total - run), with
median and spread (p10/p90), then where the time goes (median of each phase of the
flow). Ends with ONE line of name=value pairs holding the headline figures, including
``overhead_median_s`` (goal: <= 0.3 s).

    .venv/bin/python bench/executor.py [--jobs 20] [--vm vmchecker-base]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmchecker.bundle import BundleInfo  # noqa: E402
from vmchecker.config import parse_machine  # noqa: E402
from vmchecker.executor import get_host  # noqa: E402

HELLO_C = '#include <stdio.h>\nint main(void) { puts("Hello, world!"); return 0; }\n'
MAKEFILE = "hello: hello.c\n\tgcc -Wall -o hello hello.c\n"
RUN = ('./hello > out.txt\n'
       'if cmp -s out.txt expected.txt; then echo "10 ok" > grade.vmr; else echo "0 wrong" > grade.vmr; fi\n')


def _zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_bundle(folder: Path, job_id: str, vm: str, timeout: int = 10) -> tuple[Path, BundleInfo]:
    """An unpacked bundle folder for the hello assignment."""
    folder.mkdir(parents=True)
    (folder / "archive.zip").write_bytes(_zip({"hello.c": HELLO_C, "Makefile": MAKEFILE}))
    (folder / "tests.zip").write_bytes(_zip({"expected.txt": "Hello, world!\n"}))
    (folder / "build.sh").write_text("make\n")
    (folder / "run.sh").write_text(RUN)
    machine = parse_machine({"name": "linux", "type": "lxc", "vm": vm}, "bench")
    info = BundleInfo(job_id=job_id, key="k", course="bench", assignment="hello", account="bench",
                      submission="s", upload_time="2026-01-01 00:00:00", timeout=timeout, machine=machine)
    (folder / "submission-config.yaml").write_text(yaml.safe_dump(info.to_dict(), sort_keys=False))
    return folder, info


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90)."""
    if len(values) < 2:
        v = values[0] if values else 0.0
        return v, v, v
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), deciles[0], deciles[8]


def executor_overhead(jobs: int, vm: str) -> dict[str, float]:
    """Run ``jobs`` jobs through the LXC executor; print each and the summary."""
    host = get_host("lxc")
    totals, runs, builds, overheads = [], [], [], []
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vmchecker-bench-") as tmp:
        for i in range(jobs + 1):   # job 0 warms caches and is not counted
            folder, info = make_bundle(Path(tmp) / f"job{i}", f"bench{i}", vm)
            start = time.monotonic()
            job = host.test_submission(folder, info.machine, info)
            total = time.monotonic() - start
            if job.status != "done" or not job.steps["run"].succeeded:
                raise SystemExit(f"bench job {i} failed: {job.status} {job.message}")
            if i == 0:
                continue
            run, build = job.steps["run"].wall_s, job.steps["build"].wall_s
            totals.append(total)
            runs.append(run)
            builds.append(build)
            overheads.append(total - run)
            for name, seconds in job.phases.items():
                phases.setdefault(name, []).append(seconds)
            print(f"job {i:3d}: total {total:.3f} s  build {build:.3f} s  run {run:.3f} s  overhead {total - run:.3f} s")
    figures: dict[str, float] = {"jobs": jobs}
    for name, values in (("total", totals), ("run", runs), ("build", builds), ("overhead", overheads)):
        median, p10, p90 = spread(values)
        print(f"{name:9s} median {median:.3f} s  p10 {p10:.3f} s  p90 {p90:.3f} s")
        figures[f"{name}_median_s"] = median
        if name == "overhead":
            figures.update(overhead_p10_s=p10, overhead_p90_s=p90)
    print("phases (median): " + "  ".join(f"{n} {statistics.median(v):.4f}" for n, v in phases.items()))
    return figures


def queue_manager_throughput(args: argparse.Namespace) -> dict[str, float]:
    """Throughput of one tester (the real queue manager in drain mode, real executor
    processes, real LXC guests) with 1, 2 and 4 slots: ``--throughput-jobs`` trivial
    bundles queued, then the wall time until every result is durable in done/."""
    from vmchecker import bundle
    from vmchecker.config import load_tester
    from vmchecker.tester.queue_manager import QueueManager

    figures: dict[str, float] = {}
    if args.throughput_jobs <= 0:
        return figures
    for slots in (1, 2, 4):
        with tempfile.TemporaryDirectory(prefix="vmck-bench-qm-") as tmp:
            root = Path(tmp)
            (root / "config.yaml").write_text(yaml.safe_dump({"tester": {"name": "bench", "slots": slots}}))
            queue = root / "queue"
            queue.mkdir()
            for i in range(args.throughput_jobs):
                folder, info = make_bundle(root / "src" / str(i), f"qm{slots}-{i:04d}", args.vm)
                bundle.build_bundle(queue / info.file_name, info, archive_path=folder / "archive.zip",
                                    tests_path=folder / "tests.zip", build_script=folder / "build.sh",
                                    run_script=folder / "run.sh")
            manager = QueueManager(load_tester(root / "config.yaml"), once=True)
            start = time.perf_counter()
            manager.run()
            elapsed = time.perf_counter() - start
            done = sum(1 for d in (root / "done").iterdir() if (d / ".complete").exists())
            ok = sum(1 for d in (root / "done").iterdir() if '"status": "done"' in (d / "result.json").read_text())
        print(f"queue manager, {slots} slot(s): {args.throughput_jobs} jobs in {elapsed:.1f} s"
              f" ({args.throughput_jobs / elapsed:.1f} jobs/s), {done} results, {ok} done")
        figures[f"jobs_{args.throughput_jobs}_{slots}slots_s"] = round(elapsed, 3)
        figures[f"jobs_per_s_{slots}slots"] = round(args.throughput_jobs / elapsed, 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20, help="jobs to time (default 20)")
    p.add_argument("--vm", default="vmchecker-base", help="LXC base container (default vmchecker-base)")
    p.add_argument("--throughput-jobs", type=int, default=100,
                   help="jobs per queue-manager throughput run with 1, 2 and 4 slots (default 100; 0 skips)")
    args = p.parse_args(argv)
    figures = executor_overhead(args.jobs, args.vm)
    figures.update(queue_manager_throughput(args))
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
