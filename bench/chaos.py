"""Nothing is lost or graded twice while the daemon, queue managers, sshds and links fail.

The two-tester namespace lab of bench/netlab.py, everything real: the storer
daemon on our bridge's address, two tester namespaces each with its own sshd and queue
manager running LXC guests, submissions through ``vmchecker-submit`` (a correct hello,
graded by the current contract: run.sh writes ``$VMCHECKER_GRADE``). A stream of
submissions (at most ``--max-in-flight`` not final at once, so a backlog never hides the
faults) runs while one fault at a time strikes at random moments (seeded RNG, the seed
printed first):

* kill -9 of the storer daemon, restarted at once;
* kill -9 of a tester's queue manager, restarted at once;
* kill -9 of a tester's sshd listener, restarted after a pause (its open sessions live on,
  as OpenSSH's do);
* a tester's link cut (``ip link set eth0 down`` in its namespace), up after a pause.

The first three count as ``kills``, the last as ``outages``. Then it waits (bounded) until
every submission is final and checks each one.

Definitions (the last line's figures):

* ``final``: the submission's status is ``done`` or ``error``.
* ``lost``: a submission that is not ``done`` with its results intact: still not final at
  the end, ended in ``error``, ``results/result.json`` missing or not an account of a
  complete run (:func:`vmchecker.evidence.failure_reason`), ``run-stdout.vmr`` without
  the program's PASS, or a final ``grade.vmr`` that is a failure line (the hello is correct,
  so anything but full points is a loss the faults caused).
* ``graded_twice``: a submission whose results landed more than once from different runs:
  the journal holds more than one job in ``done`` for it, or the daemon's log says
  ``job <id> done`` more than once for its job (each is one journal ``sent -> done``,
  written after the results moved into ``results/``), or a ``results.N`` folder exists
  (results moved aside). A notify repeated after a lost answer for the same run is not a
  second grade (the same files land again and the journal says ``done`` once).
* ``recovery_max_s``: for each fault, the time from the restart (or the link coming up)
  until every submission not final at that moment is final; the largest over all faults
  (polled every 0.25 s). A fault whose submissions never became final counts until the end
  of the final wait.

Network rule: every address used is in the lab's own bridge or namespaces, checked with the
lab's route helper before traffic and again after each link comes up. Everything made is
removed at the end, also on failure: namespaces, sshds, queue managers, the daemon, job
clones left by a killed queue manager, the temporary folder.

Run as root from the repository root: ``.venv/bin/python bench/chaos.py [--quick]``.
Ends with ``submitted=... final=... lost=... graded_twice=... kills=... outages=...
recovery_max_s=...``.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import netlab  # noqa: E402
from tests.lab import lxc_unusable, netns, sshd  # noqa: E402
from tests.test_end_to_end import BASE  # noqa: E402
from tests.util import HELLO_C, HELLO_MAKEFILE, make_zip  # noqa: E402
from vmchecker import evidence, repo  # noqa: E402
from vmchecker.contract import GRADE_VMR, RESULT_JSON  # noqa: E402
from vmchecker.storer.outcomes import read_result  # noqa: E402

ASSIGNMENT = "1-hello"
POLL = 0.25
FINAL = ("done", "error")
DONE_LINE = re.compile(r"job (\S+) done on \S+ in ")   # the daemon's line, once per sent -> done


@dataclass
class Sub:
    """One submission and when it was first seen final."""

    account: str
    path: Path
    submitted: float
    final_at: float | None = None
    status: str = "saved"


@dataclass
class Fault:
    kind: str
    target: str
    back_at: float                 # restart / link up (monotonic)
    pending: list[Sub] = field(default_factory=list)   # not final when it was undone
    hit: int = 0                                        # not final when it struck

    def recovery(self, end: float) -> float:
        times = [(s.final_at if s.final_at is not None else end) - self.back_at for s in self.pending]
        return max([0.0, *times])


class Tracker:
    """Watches every submission's status from its folder (a thread polling grade.vmr)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subs: list[Sub] = []

    def add(self, sub: Sub) -> None:
        with self.lock:
            self.subs.append(sub)

    def not_final(self) -> list[Sub]:
        with self.lock:
            return [s for s in self.subs if s.final_at is None]

    def poll_once(self) -> None:
        for sub in self.not_final():
            try:
                status = repo.load_submission(sub.path).status().value
            except Exception:   # a half-written folder: look again next time
                continue
            sub.status = status
            if status in FINAL:
                sub.final_at = time.monotonic()

    def watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll_once()
            stop.wait(POLL)


class Lab(netlab.Lab):
    """The lab of bench/netlab.py with one LXC machine and the correct hello to grade."""

    def build(self) -> None:  # type: ignore[override]
        super().build({"linux": {"type": "lxc", "vm": BASE,
                                 "limits": {"memory_mb": 256, "pids": 128, "cpus": 1, "output_kb": 64}}},
                      {ASSIGNMENT: {"deadline": "2030-01-01 00:00:00", "machine": "linux"}})
        self.hello = make_zip(self.root / "hello.zip", {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE})
        self.accounts = 0

    def submit(self) -> Sub:  # type: ignore[override]
        self.accounts += 1
        account = f"s{self.accounts:03d}"
        return Sub(account, super().submit(ASSIGNMENT, self.hello, account), time.monotonic())


# ---------------------------------------------------------------------- faults


def strike(lab: Lab, kind: str, rng: random.Random, pause: tuple[float, float]) -> tuple[str, float]:
    """Do one fault and undo it; (target, the moment it was undone)."""
    if kind == "kill_storer":
        lab.storer.kill(signal.SIGKILL)
        lab.storer.start()
        return "storer", time.monotonic()
    t = rng.choice(lab.testers)
    if kind == "kill_qm":
        t.kill(signal.SIGKILL)
        lab.start_qm(t)
    elif kind == "kill_sshd":
        listener = t.ssh._proc
        assert listener is not None
        listener.send_signal(signal.SIGKILL)
        listener.wait(30)
        time.sleep(rng.uniform(*pause))
        t.ssh.start()
    elif kind == "outage":
        t.host.link_down()
        time.sleep(rng.uniform(*pause))
        t.host.link_up()
        t.host.check_route(lab.network.gateway)
    else:
        raise ValueError(kind)
    return t.name, time.monotonic()


def chaos(lab: Lab, tracker: Tracker, args: argparse.Namespace, rng: random.Random, faults: list[Fault],
          done: threading.Event) -> None:
    kinds = ["kill_storer", "kill_qm", "kill_sshd"] * (args.kills // 3 + 1)
    plan = kinds[:args.kills] + ["outage"] * args.outages
    rng.shuffle(plan)
    try:
        for i, kind in enumerate(plan, 1):
            time.sleep(rng.uniform(args.gap_min, args.gap_max))
            # A hello is graded in about a second: strike while some job is in flight,
            # at a random point of it, or most faults would hit an idle system.
            wait_until = time.monotonic() + 10
            while not tracker.not_final() and time.monotonic() < wait_until:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
            hit = len(tracker.not_final())
            target, back = strike(lab, kind, rng, (args.pause_min, args.pause_max))
            faults.append(Fault(kind, target, back, tracker.not_final(), hit))
            print(f"[{i}/{len(plan)}] {kind} {target} ({hit} in flight)", flush=True)
    finally:
        done.set()


def submitter(lab: Lab, tracker: Tracker, args: argparse.Namespace, stop: threading.Event) -> None:
    gaps = random.Random(args.seed + 1)   # its own stream: the faults' plan does not depend on its pace
    while not stop.is_set() and len(tracker.subs) < args.jobs:
        stop.wait(gaps.uniform(0, 2 * args.submit_gap))
        # Bursts, like students before a deadline: jobs wait behind each other, so a
        # fault finds some queued, some sent, some running and some being fetched.
        for _ in range(gaps.randint(1, args.max_in_flight)):
            if stop.is_set() or len(tracker.subs) >= args.jobs or len(tracker.not_final()) >= args.max_in_flight:
                break
            try:
                tracker.add(lab.submit())
            except AssertionError as exc:   # refused at upload: the student was told, nothing to grade
                print(f"submit refused: {exc}", flush=True)


# ---------------------------------------------------------------------- checks


def check(lab: Lab, tracker: Tracker) -> dict[str, list[str]]:
    """Every submission's problems, by kind (see the module's definitions)."""
    problems: dict[str, list[str]] = collections.defaultdict(list)
    done_lines = collections.Counter(DONE_LINE.findall((lab.root / "daemon.log").read_text(errors="replace")))
    db = sqlite3.connect(f"file:{lab.root / 'state' / 'journal.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT account, state, COUNT(*) FROM jobs GROUP BY account, state").fetchall()
    db.close()
    done_rows = {account: n for account, state, n in rows if state == "done"}
    for sub in tracker.subs:
        s = repo.load_submission(sub.path)
        status = s.status().value
        if status not in FINAL:
            problems["not_final"].append(sub.account)
        elif status == "error":
            problems["error"].append(sub.account)
        else:
            result = read_result(s.results_dir / RESULT_JSON)
            grade = (s.results_dir / GRADE_VMR).read_text(errors="replace")
            stdout = s.results_dir / "run-stdout.vmr"
            if result is None or evidence.failure_reason(result) is not None:
                problems["results_broken"].append(sub.account)
            elif grade.lstrip().startswith("-") or not stdout.exists() or "PASS" not in stdout.read_text():
                problems["wrong_grade"].append(sub.account)
        if done_rows.get(sub.account, 0) > 1 or done_lines.get(s.info.job_id or "", 0) > 1 or s.earlier_results():
            problems["graded_twice"].append(sub.account)
    return problems


def journal_note(lab: Lab, account: str) -> str:
    db = sqlite3.connect(f"file:{lab.root / 'state' / 'journal.db'}?mode=ro", uri=True)
    row = db.execute("SELECT state, tester, attempts, reasons FROM jobs WHERE account = ?", (account,)).fetchone()
    db.close()
    return f"journal: {row}" if row else "no journal row"


# ---------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run: 8 kills, 2 outages")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=400, help="at most this many submissions")
    parser.add_argument("--submit-gap", type=float, default=3.0, help="mean seconds between bursts of submissions")
    parser.add_argument("--kills", type=int, default=51)
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--gap-min", type=float, default=2.0, help="seconds between faults, at least")
    parser.add_argument("--gap-max", type=float, default=8.0)
    parser.add_argument("--pause-min", type=float, default=2.0, help="an sshd or link down this long, at least")
    parser.add_argument("--pause-max", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--retry-delay", type=float, default=1.0, help="the course's storer.retry_delay")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder (printed)")
    parser.add_argument("--final-wait", type=float, default=300.0, help="seconds to wait for the last jobs")
    args = parser.parse_args(argv)
    if args.quick:
        args.kills, args.outages, args.jobs, args.submit_gap = 8, 2, min(args.jobs, 60), 2.0
        args.gap_min, args.gap_max, args.pause_max = 2.0, 5.0, 6.0
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def run(args: argparse.Namespace, network: netns.LabNetwork, root: Path) -> int:
    rng = random.Random(args.seed)
    lab = Lab(network, root, args.retry_delay)
    tracker, faults = Tracker(), []
    stop_watch, chaos_done = threading.Event(), threading.Event()
    try:
        lab.build()
        lab.start()
        watcher = threading.Thread(target=tracker.watch, args=(stop_watch,), daemon=True)
        watcher.start()
        feeder = threading.Thread(target=submitter, args=(lab, tracker, args, chaos_done), daemon=True)
        feeder.start()
        started = time.monotonic()
        chaos(lab, tracker, args, rng, faults, chaos_done)
        feeder.join()
        print(f"faults over in {time.monotonic() - started:.0f} s; waiting for {len(tracker.not_final())}"
              " submission(s) to be final", flush=True)
        deadline = time.monotonic() + args.final_wait
        while tracker.not_final() and time.monotonic() < deadline:
            time.sleep(POLL)
        end = time.monotonic()
        stop_watch.set()
        watcher.join()
        problems = check(lab, tracker)
    finally:
        stop_watch.set()
        lab.close()
    return report(lab, args, tracker, faults, problems, end, started)


def report(lab: Lab, args: argparse.Namespace, tracker: Tracker, faults: list[Fault],
           problems: dict[str, list[str]], end: float, started: float) -> int:
    subs = tracker.subs
    final = sum(1 for s in subs if s.status in FINAL)
    lost = len({a for kind, accounts in problems.items() if kind != "graded_twice" for a in accounts})
    for kind, accounts in problems.items():
        print(f"{kind}: {len(accounts)} {' '.join(accounts[:10])}")
        for account in accounts[:3]:
            print(f"  {account}: {journal_note(lab, account)}")
    kills = sum(1 for f in faults if f.kind != "outage")
    outages = len(faults) - kills
    by_kind = collections.defaultdict(list)
    for f in faults:
        by_kind[f.kind].append(f.recovery(end))
    for kind, times in sorted(by_kind.items()):
        print(f"recovery {kind}: n={len(times)} median={sorted(times)[len(times) // 2]:.1f} s max={max(times):.1f} s")
    slowest = sorted(faults, key=lambda f: f.recovery(end), reverse=True)[:3]
    for f in slowest:
        late = max(f.pending, key=lambda s: s.final_at or end, default=None)
        note = f"; last {late.account} ({journal_note(lab, late.account)})" if late else ""
        print(f"slow recovery: {f.kind} {f.target} {f.recovery(end):.1f} s, {len(f.pending)} in flight{note}")
    latencies = sorted((s.final_at or end) - s.submitted for s in subs)
    if latencies:
        print(f"latency submit->final: median={latencies[len(latencies) // 2]:.1f} s max={latencies[-1]:.1f} s;"
              f" run {end - started:.0f} s; seed={args.seed}")
    print(f"faults that struck with jobs in flight: {sum(1 for f in faults if f.hit)}/{len(faults)}")
    recovery_max = max([0.0, *(f.recovery(end) for f in faults)])
    print(f"submitted={len(subs)} final={final} lost={lost} graded_twice={len(problems.get('graded_twice', []))} "
          f"kills={kills} outages={outages} recovery_max_s={recovery_max:.1f}")
    return 0 if lost == 0 and not problems.get("graded_twice") else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"seed={args.seed} kills={args.kills} outages={args.outages} jobs<={args.jobs}", flush=True)
    reason = netns.available() or sshd.available() or lxc_unusable(BASE)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="vmck-bench-chaos-"))
    try:
        with netns.LabNetwork() as network:
            return run(args, network, root)
    finally:
        netlab.report_leftovers(root, args.keep)


if __name__ == "__main__":
    sys.exit(main())
