"""vmchecker-vm-executor [--tester-config FILE] BUNDLE_DIR: run one unpacked bundle.

Used by the queue manager (one process per job, in its own process group) and by hand.
The bundle is validated, the tester's machine overrides applied, the job run in a fresh
guest of the machine's backend (a warm one of the tester's pool when one fits, see
vmchecker/executor/warm.py), and the results left in ``BUNDLE_DIR/results/``.
Exit 0 whenever results were written, even with status ``error``; non-zero only when
not even that was possible. SIGTERM tears the guest down before exiting.

``--serve-jobs WORK_DIR/`` (the queue manager's fork server, vmchecker/tester/forkserver.py):
load what a job needs (``--preload TYPE``: that backend too), then fork a child per job
folder name read on stdin, each running that job as above; exit once stdin has ended and
the children have.

``--warm MACHINE_FILE --owner PID`` (the queue manager's warm-up): make one guest of the
machine in MACHINE_FILE (JSON) ready and publish it in the tester's pool, named after the
queue manager PID that keeps it. Exit 0 when published, 20 when the machine keeps no warm
guests, another code on failure (no guest is left).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from vmchecker import bundle, executor
from vmchecker.cli import common
from vmchecker.config import parse_machine
from vmchecker.errors import Interrupted, VmcheckerError
from vmchecker.executor.interrupts import interrupt
from vmchecker.executor.results import JobResult, ResultFiles, StepResult
from vmchecker.executor.warm import WarmGuest, WarmPool
from vmchecker.quick_exit import exit_now
from vmchecker.tester import forkserver
from vmchecker.tester_config import TesterConfig, load_tester

log = logging.getLogger(__name__)

PROG = "vmchecker-vm-executor"
NO_WARM = 20  # --warm: the machine keeps no warm guests


def warm_pool(config: TesterConfig) -> WarmPool | None:
    """The tester's pool of warm guests (state/warm/), None when it keeps none."""
    return WarmPool(config.state_dir / "warm") if config.tester.warm_per_machine > 0 else None


def warm_up(machine_file: Path, tester_config: Path, owner: int) -> WarmGuest | None:
    """Make one warm guest of the machine in ``machine_file`` (JSON, as the queue manager
    wrote it) and publish it in the tester's pool; None when the machine keeps none."""
    try:
        data = json.loads(Path(machine_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VmcheckerError(f"{machine_file}: cannot read the machine: {exc}") from None
    machine = parse_machine(data, machine_file)
    pool = warm_pool(load_tester(tester_config))
    if pool is None:
        return None
    return executor.get_host(machine.type).prepare_warm(machine, pool.ensure(), owner)


def preload(machine_types: list[str]) -> None:
    """Load the backends of ``machine_types`` now, in a fork server, so each forked job
    has them; one that cannot load says so when its job comes."""
    for machine_type in machine_types:
        if machine_type in executor.BACKENDS:
            try:
                importlib.import_module(executor.BACKENDS[machine_type])
            except ImportError:
                pass


def execute(bundle_dir: Path, tester_config: Path | None = None) -> JobResult:
    """Run the bundle in ``bundle_dir``; a bundle or config problem becomes an error result."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise VmcheckerError(f"{bundle_dir}: no such bundle folder")
    pool = None
    try:
        info = bundle.read_bundle_dir(bundle_dir)
        machine = info.machine
        if tester_config is not None:
            config = load_tester(tester_config)
            machine, pool = config.machine(machine), warm_pool(config)
        host = executor.get_host(machine.type)
    except VmcheckerError as exc:
        log.error("%s", exc.message)
        return _error_result(bundle_dir, exc.message)
    if tester_config is None:   # by hand; under a queue manager, it cleans up after the executors it kills
        removed = host.cleanup_leftovers([machine])
        if removed:
            log.info("removed guests left by dead executors: %s", ", ".join(removed))
    return host.test_submission(bundle_dir, machine, info, warm=pool)


def _error_result(bundle_dir: Path, message: str) -> JobResult:
    out = ResultFiles(bundle_dir, 64 * 1024)
    job = JobResult(job_id=bundle_dir.name, backend="", message=message)
    out.error(message)
    out.finish(job)
    return job


def summary(job: JobResult) -> str:
    steps = ", ".join(f"{name} {_describe(step)}" for name, step in job.steps.items())
    text = f"job {job.job_id}: {job.status}"
    if steps:
        text += f" ({steps})"
    if job.message:
        text += f": {job.message.splitlines()[0]}"
    return f"{text} in {job.total_s} s"


def _describe(step: StepResult) -> str:
    if not step.attempted:
        return "not run"
    if step.timed_out:
        return "timed out"
    if step.signal is not None:
        return f"killed by signal {step.signal}"
    return f"exit {step.exit_code}"


def _on_signal(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second one must not cut the cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(PROG, "Run one unpacked bundle in a fresh guest; results go to BUNDLE_DIR/results/.",
                      global_config=False)
    p.add_argument("--tester-config", metavar="FILE", type=Path,
                   help="tester config whose machine overrides apply")
    p.add_argument("--warm", metavar="MACHINE_FILE", type=Path,
                   help="instead of a job: make one warm guest of this machine (JSON) for the tester's pool")
    p.add_argument("--owner", metavar="PID", type=int, default=0,
                   help="with --warm: the queue manager that keeps the guest (default: the parent process)")
    p.add_argument("--serve-jobs", metavar="WORK_DIR", type=Path,
                   help="be the queue manager's fork server: run each job whose folder in WORK_DIR stdin"
                        " names, in a child forked from this process")
    p.add_argument("--preload", metavar="TYPE", action="append", default=[],
                   help="with --serve-jobs: load this machine type's backend first (repeatable)")
    p.add_argument("bundle_dir", metavar="BUNDLE_DIR", type=Path, nargs="?")
    args = p.parse_args(argv)
    if [args.warm, args.bundle_dir, args.serve_jobs].count(None) != 2:
        p.error("give BUNDLE_DIR, --serve-jobs WORK_DIR, or --warm MACHINE_FILE with --tester-config")
    if args.warm is not None and args.tester_config is None:
        p.error("--warm needs --tester-config (the pool is the tester's)")
    common.setup_logging(args.verbose, args.log_format)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def warm() -> int:
        try:
            record = warm_up(args.warm, args.tester_config, args.owner or os.getppid())
        except Interrupted as exc:
            print(f"{PROG}: stopped by {exc}; the guest was removed", file=sys.stderr)
            return 128 + signal.Signals[str(exc)].value
        if record is None:
            print(f"{PROG}: machine in {args.warm} keeps no warm guests")
            return NO_WARM
        print(f"warm guest {record.name} ready")
        return 0

    def one_job(bundle_dir: Path) -> int:
        try:
            job = execute(bundle_dir, args.tester_config)
        except Interrupted as exc:
            print(f"{PROG}: stopped by {exc}; the guest was removed", file=sys.stderr)
            return 128 + signal.Signals[str(exc)].value
        print(summary(job))
        return 0

    def work() -> int:
        if args.warm is not None:
            return warm()
        if args.serve_jobs is not None:
            preload(args.preload)
            try:
                return forkserver.serve(args.serve_jobs, lambda bundle_dir: common.run(PROG, lambda: one_job(bundle_dir),
                                                                                         args.verbose))
            except Interrupted:   # asked to stop: the jobs are the queue manager's to stop
                return 0
        return one_job(args.bundle_dir)

    return common.run(PROG, work, args.verbose)


if __name__ == "__main__":
    exit_now(main())
