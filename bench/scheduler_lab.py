"""The scheduler on real testers: ``storer.scheduler: estimate`` against ``fewest``.

bench/scheduler.py simulates; this runs the real thing on the two-tester namespace lab of
bench/netlab.py (storer daemon, one sshd and queue manager per tester namespace, LXC and
KVM guests, uploads through ``vmchecker-submit``). The testers differ in speed only: each
runs in a box of bench/boxes.py, a cgroup with a CPU budget that holds its queue manager,
its executors, its LXC clones (an LXC base of its own with ``lxc.cgroup.relative``) and its
KVM guest's QEMU (a snapshot domain of its own, as the demo's ``linux-kvm``, moved in once
booted): ``full`` has one CPU, ``half`` half a CPU (``--cap``). Both boxes weigh
``--weight`` times the default, so the host's other work (on the lab machine, other
sessions' tests) takes little from either budget: in a run on a busy host without boxes
(only ``half`` capped), ``full`` ran its tests at about 0.65 of a CPU and was only 1.2-1.4
times faster than ``half``, too little for any policy to matter. The job times printed per
tester, and the seconds the quota held ``half`` back, show the effect.

Workload (seeded, printed first): a deadline burst of ``--accounts`` accounts each
uploading both assignments at random moments within ``--burst`` seconds: ``1-hello`` (LXC),
a correct hello whose tests also run ``spin``, a loop of ``--spin`` million iterations
(about a second of CPU, so the LXC job's time depends on the tester's speed and not only on
its clone-and-start overhead), and ``1-hello-kvm`` (KVM), the hello alone (its build under
TCG takes seconds of CPU already). The same burst runs under each policy on a
fresh lab (new daemon state, course, testers); each run first does the same warm-up, so
``estimate`` does not start cold: ``--warmup`` rounds in which the course lets each tester
serve one machine only (``full`` LXC and ``half`` KVM, then the other way round), one job
each, so every tester x assignment pair is measured once per round and the journal holds
those estimates when the course is switched to both testers and the policy under test.
``fewest`` gets the same warm-up although it uses no estimate. ``--rounds`` repeats the
pair of runs, alternating which policy goes first.

Figures, from the journal's stage times (one clock: everything runs on this machine):
``wait`` is from ``queued`` (the daemon journaled the job) to ``slot_taken`` (a tester's
slot took it; ``executor_started`` when a notification carried no slot time);
``turnaround`` from ``queued`` to ``graded``; ``job`` from ``executor_started`` to
``executor_ended`` on the tester. The last line: ``lab_mean_wait_vs_fewest`` (the mean wait
under estimate divided by that under fewest; below 1 when estimate wins),
``mean_wait_s_estimate``, ``mean_wait_s_fewest`` and ``jobs`` (burst jobs measured per
policy).

Network rule: every address is in the lab's bridge or namespaces, checked by the lab before
any traffic. Everything made is removed at the end, also on failure or Ctrl-C / SIGTERM:
the labs (queue managers, sshds, namespaces, daemons, job clones) and the boxes (KVM
domains and their folders, LXC bases, cgroups). Leftovers of a run that was killed (its
pid is in their names) are removed at the next start.

Run as root from the repository root: ``.venv/bin/python bench/scheduler_lab.py``
(about 6.5 minutes on the 2-core lab machine, 3 of them to build the two domains).
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import boxes, netlab  # noqa: E402
from tests.lab import lxc_unusable, netns, sshd  # noqa: E402
from tests.test_end_to_end import BASE, LabTester  # noqa: E402
from tests.util import HELLO_C, HELLO_MAKEFILE, make_zip  # noqa: E402
from vmchecker.contract import Stage  # noqa: E402

POLICIES = ("estimate", "fewest")
FULL, HALF = "full", "half"   # the course lists full first: fewest's ties go to the faster
LXC_A, KVM_A = "1-hello", "1-hello-kvm"
BUILD_SH = "#!/bin/bash\nset -e\nmake\nif [ -f spin.c ]; then gcc -O0 -o spin spin.c; fi\n"   # RUN_SH runs it
SPIN_C = ("int main(void) {{ volatile unsigned long x = 0;"
          " for (unsigned long i = 0; i < {n}UL; i++) x += i; return x == 1; }}\n")


# ---------------------------------------------------------------------- one policy's run


@dataclass
class JobTimes:
    """One burst job's figures (module docstring), seconds; the rest for the table."""

    assignment: str
    account: str
    tester: str
    state: str
    wait: float
    turnaround: float | None
    job: float | None
    queued: float
    graded: float | None


def course_machines() -> dict:
    """The course's machines; each tester overrides ``vm`` (and the image) with its box's own."""
    limits = {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}
    return {"linux": {"type": "lxc", "vm": BASE, "limits": limits},
            "linux-kvm": {"type": "kvm", "vm": "vmchecker-kvm-base", "snapshot": "clean", "revert": "snapshot",
                          "domain_type": "auto", "base_image": str(boxes.KVM_STATE / "base.qcow2"),
                          "limits": {**limits, "pids": 256}}}


def serve(lab: netlab.Lab, lxc: list[str], kvm: list[str]) -> None:
    def change(data: dict) -> None:
        data["machines"]["linux"]["testers"] = lxc
        data["machines"]["linux-kvm"]["testers"] = kvm
    lab.edit_course(change)


def run_policy(policy: str, args: argparse.Namespace, network: netns.LabNetwork, root: Path,
               testers: dict[str, boxes.Box], burst: list[tuple[float, str, str]]) -> list[JobTimes]:
    def make_tester(network: netns.LabNetwork, name: str, url: str, pub: str, logs: Path) -> LabTester:
        tester = boxes.BoxedTester(network, name, url, pub, logs, overrides=testers[name].overrides())
        tester.box = testers[name]
        return tester

    root.mkdir()
    lab = netlab.Lab(network, root, names=(FULL, HALF), make_tester=make_tester)
    try:
        deadline = "2030-01-01 00:00:00"
        lab.build(course_machines(), {LXC_A: {"deadline": deadline, "machine": "linux"},
                                      KVM_A: {"deadline": deadline, "machine": "linux-kvm", "timeout": 60}},
                  build_sh=BUILD_SH, storer={"scheduler": policy})
        hello = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
        archives = {LXC_A: make_zip(root / "spin.zip", {**hello, "spin.c": SPIN_C.format(n=args.spin * 1_000_000)}),
                    KVM_A: make_zip(root / "hello.zip", hello)}
        lab.start()
        warm_up(lab, args.warmup, archives)
        print(f"{policy}: estimates after the warm-up: {estimates(root)}", flush=True)
        serve(lab, [FULL, HALF], [FULL, HALF])
        started, throttled = time.monotonic(), testers[HALF].throttled_s()
        submit_burst(lab, burst, archives)
        for assignment in (LXC_A, KVM_A):
            lab.storer.wait_final(assignment, sorted({a for _, a, asg in burst if asg == assignment}),
                                  timeout=args.final_wait)
        print(f"{policy}: burst graded in {time.monotonic() - started:.0f} s; the quota held {HALF} back"
              f" {testers[HALF].throttled_s() - throttled:.0f} s", flush=True)
        for box in testers.values():
            if not box.qemu_in_box():
                print(f"warning: the QEMU of {box.name} left its box (restarted?): its quota is libvirt's",
                      file=sys.stderr)
        return read_times(root, {(asg, a) for _, a, asg in burst})
    finally:
        lab.close()


def warm_up(lab: netlab.Lab, rounds: int, archives: dict[str, Path]) -> None:
    """Each tester x assignment pair measured ``rounds`` times, the same under each policy."""
    n = 0
    for _ in range(rounds):
        for lxc, kvm in ((FULL, HALF), (HALF, FULL)):
            serve(lab, [lxc], [kvm])
            accounts = {}
            for assignment in (LXC_A, KVM_A):
                n += 1
                accounts[assignment] = f"warm{n:02d}"
                lab.submit(assignment, archives[assignment], accounts[assignment])
            for assignment, account in accounts.items():
                sub = lab.storer.wait_final(assignment, [account], timeout=300)[account]
                if sub.status().value != "done":   # a pair not measured: the runs would not compare
                    raise RuntimeError(f"warm-up job {assignment} {account} ended {sub.status().value}; see"
                                       f" {lab.root}/daemon.log and the testers' logs (--keep)")


def submit_burst(lab: netlab.Lab, burst: list[tuple[float, str, str]], archives: dict[str, Path]) -> None:
    """Each upload at its moment, in a thread of its own (an upload takes a while)."""
    errors: list[str] = []

    def one(account: str, assignment: str) -> None:
        try:
            lab.submit(assignment, archives[assignment], account)
        except AssertionError as exc:
            errors.append(str(exc))

    threads, t0 = [], time.monotonic()
    for offset, account, assignment in burst:
        time.sleep(max(0.0, t0 + offset - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(account, assignment), daemon=True))
        threads[-1].start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("uploads refused: " + "; ".join(errors))


def journal(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{root / 'state' / 'journal.db'}?mode=ro", uri=True)


def estimates(root: Path) -> str:
    db = journal(root)
    rows = db.execute("SELECT tester, assignment, measured FROM estimates ORDER BY tester, assignment").fetchall()
    db.close()
    return ", ".join(f"{t} {a} {m:.2f} s" for t, a, m in rows if m is not None) or "none"


def read_times(root: Path, wanted: set[tuple[str, str]]) -> list[JobTimes]:
    """The burst's jobs, their stages from the journal."""
    db = journal(root)
    jobs = db.execute("SELECT id, assignment, account, tester, state FROM jobs").fetchall()
    marks: dict[str, dict[tuple[int, str], float]] = defaultdict(dict)
    for job_id, attempt, stage, at in db.execute("SELECT job_id, attempt, stage, at FROM stages"):
        marks[job_id][(attempt, stage)] = at
    db.close()
    found = []
    for job_id, assignment, account, tester, state in jobs:
        if (assignment, account) not in wanted:
            continue
        m = marks[job_id]

        def last(stage: Stage, m: dict = m) -> float | None:
            times = [at for (_, s), at in sorted(m.items()) if s == stage.value]
            return times[-1] if times else None

        queued = m.get((0, Stage.QUEUED.value))
        start = last(Stage.SLOT_TAKEN) or last(Stage.EXECUTOR_STARTED)
        graded = last(Stage.GRADED)
        ran = (last(Stage.EXECUTOR_STARTED), last(Stage.EXECUTOR_ENDED))
        if queued is None or start is None:
            raise RuntimeError(f"job {job_id} ({assignment} {account}, {state}): no queued or start time in"
                               f" the journal: {sorted(m)}")
        found.append(JobTimes(assignment, account, tester or "", state, start - queued,
                              graded - queued if graded else None,
                              ran[1] - ran[0] if None not in ran else None, queued, graded))
    missing = wanted - {(j.assignment, j.account) for j in found}
    if missing:
        raise RuntimeError(f"no journal row for {sorted(missing)}")
    return found


# ---------------------------------------------------------------------- report


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def report(results: dict[str, list[JobTimes]]) -> int:
    print(f"\n{'policy':<9} {'jobs':>4} {'errors':>6} {'on full':>13} {'on half':>13} {'mean wait':>10}"
          f" {'p95 wait':>9} {'turnaround':>11} {'makespan':>9}")
    for policy, jobs in results.items():
        errors = sum(1 for j in jobs if j.state != "done")

        def share(tester: str, jobs: list[JobTimes] = jobs) -> str:
            mine = [j for j in jobs if j.tester == tester]
            return f"{sum(j.assignment == LXC_A for j in mine)} lxc {sum(j.assignment == KVM_A for j in mine)} kvm"

        waits = [j.wait for j in jobs]
        turnaround = [j.turnaround for j in jobs if j.turnaround is not None]
        graded = [j.graded for j in jobs if j.graded is not None]
        makespan = max(graded) - min(j.queued for j in jobs) if graded else float("nan")
        print(f"{policy:<9} {len(jobs):>4} {errors:>6} {share(FULL):>13} {share(HALF):>13} {mean(waits):>9.1f}s"
              f" {p95(waits):>8.1f}s {mean(turnaround):>10.1f}s {makespan:>8.1f}s")
    print("\njob time on the tester (executor_started -> executor_ended), median over every policy's burst:")
    medians: dict[tuple[str, str], float] = {}
    for tester in (FULL, HALF):
        for assignment in (LXC_A, KVM_A):
            times = [j.job for jobs in results.values() for j in jobs
                     if j.tester == tester and j.assignment == assignment and j.job is not None]
            if times:
                medians[tester, assignment] = statistics.median(times)
                print(f"  {tester:<5} {assignment:<12} n={len(times):<3} {medians[tester, assignment]:.2f} s")
    for assignment in (LXC_A, KVM_A):
        if (FULL, assignment) in medians and (HALF, assignment) in medians:
            print(f"  {assignment}: half / full = {medians[HALF, assignment] / medians[FULL, assignment]:.2f}")
    means = {p: mean([j.wait for j in results[p]]) for p in POLICIES}
    print(f"lab_mean_wait_vs_fewest={means['estimate'] / means['fewest']:.3f}"
          f" mean_wait_s_estimate={means['estimate']:.2f} mean_wait_s_fewest={means['fewest']:.2f}"
          f" jobs={len(results['estimate'])}")
    return 0 if all(j.state == "done" for jobs in results.values() for j in jobs) else 1


# ---------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=15, help="each uploads both assignments in the burst")
    parser.add_argument("--burst", type=float, default=5.0, help="seconds the uploads are spread over")
    parser.add_argument("--warmup", type=int, default=1, help="jobs per tester x assignment before the burst")
    parser.add_argument("--spin", type=int, default=2000, help="millions of iterations the LXC job's test runs")
    parser.add_argument("--cap", type=float, default=0.5, help="CPUs the slow tester gets (the fast one: 1)")
    parser.add_argument("--weight", type=float, default=8.0, help="each box's CPU weight, times the default")
    parser.add_argument("--rounds", type=int, default=1, help="runs per policy, alternating which goes first")
    parser.add_argument("--final-wait", type=float, default=900.0, help="seconds to wait for the burst's grades")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder (printed)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def make_burst(args: argparse.Namespace) -> list[tuple[float, str, str]]:
    """(seconds after the first upload, account, assignment), in upload order."""
    rng = random.Random(args.seed)
    uploads = [(f"s{n:03d}", a) for n in range(1, args.accounts + 1) for a in (LXC_A, KVM_A)]
    rng.shuffle(uploads)
    offsets = sorted(rng.uniform(0, args.burst) for _ in uploads)
    offsets = [o - offsets[0] for o in offsets]
    return [(o, account, assignment) for o, (account, assignment) in zip(offsets, uploads, strict=True)]


def unusable() -> str | None:
    reason = netns.available() or sshd.available() or lxc_unusable(BASE) or boxes.unusable()
    if reason:
        return reason
    try:
        import libvirt  # noqa: F401
    except ImportError as exc:
        return f"libvirt-python is not installed ({exc})"
    return None


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM cleans up as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    burst = make_burst(args)
    print(f"seed={args.seed} uploads={len(burst)} accounts={args.accounts} burst={args.burst:g}s"
          f" warmup={args.warmup} spin={args.spin}M cap={args.cap:g} weight={args.weight:g} rounds={args.rounds}", flush=True)
    reason = unusable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupted)
    boxes.remove_leftovers()
    root = Path(tempfile.mkdtemp(prefix="vmck-bench-schedlab-"))
    results: dict[str, list[JobTimes]] = {p: [] for p in POLICIES}
    testers = {FULL: boxes.Box(FULL, 1.0, args.weight, root), HALF: boxes.Box(HALF, args.cap, args.weight, root)}
    try:
        started = time.monotonic()
        for box in testers.values():
            box.make()
        while (ready := [box.domain_ready() for box in testers.values()]) and None in ready:
            time.sleep(0.5)
        if any(ready):
            raise RuntimeError("\n".join(sorted(set(r for r in ready if r))))
        print(f"boxes ready in {time.monotonic() - started:.0f} s: {', '.join(b.name for b in testers.values())}",
              flush=True)
        with netns.LabNetwork() as network:
            for r in range(args.rounds):
                for policy in POLICIES if r % 2 == 0 else POLICIES[::-1]:
                    results[policy] += run_policy(policy, args, network, root / f"{policy}-{r + 1}", testers, burst)
        print(f"run {time.monotonic() - started:.0f} s; seed={args.seed}")
        return report(results)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        for box in testers.values():
            box.close()
        netlab.report_leftovers(root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
