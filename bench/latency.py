"""Submit to grade: where a job's time goes, side by side with a bare ``docker run``.

The demo's path, everything real, built in a temporary folder on free loopback ports and
taken down at the end: the storer daemon, an sshd on 127.0.0.1 for the storer's SFTP, a
2-slot tester folder and its queue manager, LXC guests cloned from ``vmchecker-base``, the
demo course's build.sh and run.sh, and the demo's hello as the submission. Each job starts
with a fresh ``vmchecker-submit`` process and ends when the storer has written the final
``grade.vmr`` (the journal's ``graded`` stage, on this machine's one clock); the job's
timeline (``vmchecker-status --job``, :mod:`vmchecker.storer.timeline`) says when each
stage happened. Processes run with their bytecode compiled, as after ``pip install``
(a private ``PYTHONPYCACHEPREFIX``, warmed by a first job that is not counted).

In the same run, the same job as a bare ``docker run --rm --network none --memory 512m
--pids-limit 256 vmchecker-base:latest`` (the image imported from the same LXC base by
lxc-resources/docker-image.sh; dockerd started by tools/dockerd.sh when it is not running):
write hello.c and its Makefile, make, run ./hello, compare its output; from the ``docker``
command's start to its exit. One job at a time, ours and docker's alternating (N each,
after one warm-up of each), then 24 jobs of each for the makespan: ours submitted by two
submitters at once into the 2-slot tester (first submit's start to the last grade),
docker's two at a time (first start to last exit).

Figures: for each stage, the median over the jobs of its time since the submit command
started, and the median of the time since the stage before it (stages in the order of
those medians); the median end to end. Every job must earn full points, every docker
run must pass: a figure of a job that failed is no figure. Ends with one line:
``latency_median_s=... docker_median_s=... latency_ratio_vs_docker=... makespan_s=...
docker_makespan_s=... makespan_ratio_vs_docker=...``.

Run as root from the repository root: ``.venv/bin/python bench/latency.py [--jobs N]``.
Only loopback is used; guests and containers get no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.lab import lxc_unusable, sshd  # noqa: E402
from tests.util import free_port, make_zip, stop_process, wait_for, wait_for_port, write_course  # noqa: E402
from vmchecker import rpc  # noqa: E402
from vmchecker.contract import GRADE_VMR, Stage, SubmissionStatus  # noqa: E402
from vmchecker.executor.cgroups import migration_hint  # noqa: E402
from vmchecker.repo import Repository, load_submission  # noqa: E402

BASE = "vmchecker-base"
IMAGE = "vmchecker-base:latest"
COURSE, ASSIGNMENT = "lat", "1-hello"
SAMPLE = REPO / "demo" / "sample" / "hello"
WAITING = {SubmissionStatus.SAVED.value, SubmissionStatus.QUEUED.value, SubmissionStatus.RUNNING.value}
JOB_WAIT = 120.0      # seconds: a guard against a hang, never a measure
POLL = 0.002          # seconds between looks at a grade.vmr (the end is the journal's time, not the look's)
LABEL = f"vmchecker.bench.latency={os.getpid()}"   # docker containers of this run, removed if left
SUBMIT_START = "submit start"


def docker_script() -> str:
    """The docker job: the demo's hello and Makefile written in, built, run, compared."""
    files = "".join(f"cat > {p.name} <<'VMCK_EOF'\n{p.read_text()}VMCK_EOF\n" for p in sorted(SAMPLE.iterdir()))
    return f'set -e\ncd /tmp\n{files}make -s\n[ "$(./hello)" = "Hello, world!" ]\n'


def command(name: str) -> list[str]:
    """The installed entry point of ``name``, run by this interpreter."""
    installed = Path(sys.executable).parent / name
    return [sys.executable, str(installed if installed.exists() else REPO / "bin" / name)]


class Lab:
    """The demo's storer and tester on loopback, in ``root``; :meth:`close` takes it down."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env.update(PYTHONPYCACHEPREFIX=str(root / "pycache"), VMCHECKER_CONFIG=str(root / "global.yaml"))
        self.procs: list[subprocess.Popen] = []
        self.logs = [open(root / name, "ab") for name in ("daemon.log", "queue-manager.log")]
        self.ssh: sshd.SshServer | None = None
        self.tester: Path | None = None

    def start(self) -> Lab:
        root = self.root
        self.ssh = sshd.SshServer().start()
        self.tester = sshd.tester_folder(self.ssh, "vmck-bench-latency-")
        (self.tester / "config.yaml").write_text(yaml.safe_dump(
            {"tester": {"name": "t1", "slots": 2, "executor_timeout": 300, "storer_daemon": self.url}}))
        self.course = self._course()
        self.archive = make_zip(root / "hello.zip", {p.name: p.read_bytes() for p in SAMPLE.iterdir()})
        self._start(["vmchecker-storer-daemon", "--listen", f"127.0.0.1:{self.port}", "--state",
                     str(root / "state")], self.logs[0])
        wait_for_port(self.procs[0], self.port, 60, "the storer daemon")
        self._start(["vmchecker-queue-manager", str(self.tester)], self.logs[1])
        self.client = rpc.Client(self.url)
        return self

    def _course(self):
        extra = {
            "course": {"upload_active_from": "2020-01-01 00:00:00", "upload_active_until": "2099-12-31 23:59:00",
                       "open_to_all_users": True, "students": []},
            "storer": {"daemon": self.url},
            "testers": {"t1": {"host": "127.0.0.1", "port": self.ssh.port, "user": self.ssh.user,
                               "queue": str(self.tester / "queue"), "done": str(self.tester / "done"), "slots": 2}},
            "machines": {"linux": {"type": "lxc", "vm": BASE, "testers": ["t1"],
                                   "limits": {"memory_mb": 512, "pids": 256, "cpus": 1, "output_kb": 256}}},
            "assignments": {"defaults": {"min_interval": 0},
                            ASSIGNMENT: {"deadline": "2099-12-31 23:55:00", "machine": "linux"}},
        }
        path = write_course(self.root, COURSE, extra=extra)
        for script in ("build.sh", "run.sh"):
            shutil.copy(REPO / "demo" / "course" / script, path.parent / script)
        keys = path.parent / "keys"
        keys.mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
        self.ssh.authorize((keys / "id_ed25519.pub").read_text().strip())
        (keys / "known_hosts").write_text(self.ssh.host_key_line() + "\n")
        from vmchecker import config

        return config.load_course(path)

    def _start(self, args: list[str], log) -> None:
        self.procs.append(subprocess.Popen([*command(args[0]), *args[1:]], stdout=log, stderr=log, env=self.env))

    def job(self, account: str) -> dict[str, float]:
        """One submission from the submit command's start to its final grade: the time of
        each stage since that start (seconds), and ``end``: the grade written."""
        start = time.time()
        done = subprocess.run([*command("vmchecker-submit"), COURSE, ASSIGNMENT, account, str(self.archive)],
                              env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"vmchecker-submit failed ({done.returncode}): {done.stderr.strip()}")
        return self.graded(account, start)

    def graded(self, account: str, start: float) -> dict[str, float]:
        """Wait for ``account``'s grade; its stages since ``start`` (see :meth:`job`)."""
        sub = Repository(self.course).current(ASSIGNMENT, account)
        grade = sub.results_dir / GRADE_VMR

        def final() -> str | None:
            try:
                text = grade.read_text().strip()
            except OSError:
                return None
            return None if text in WAITING else text or "(empty)"

        wait_for(final, f"{account}'s grade", JOB_WAIT, interval=POLL)
        sub = load_submission(sub.path)
        if sub.status() is not SubmissionStatus.DONE or sub.grade_text().strip() != SubmissionStatus.DONE.value:
            raise SystemExit(f"{account}: not full points ({sub.status()}): {final()}\n"
                             f"{(sub.results_dir / 'vmchecker-stderr.vmr').read_text(errors='replace')}")
        job_id = sub.info.job_id   # the grade is written before the journal says done: wait for both

        def journaled() -> dict | None:
            found = self.client.timelines([job_id]).get(job_id)
            return found if found and found["state"] == "done" else None

        timeline = wait_for(journaled, f"job {job_id} to be journaled done", JOB_WAIT, interval=POLL)
        stages = {row["stage"]: row["at"] - start for row in timeline["stages"] if row["attempt"] == 0}
        if timeline["attempts"] or Stage.GRADED not in stages:
            raise SystemExit(f"{account}: job {job_id} took {timeline['attempts'] + 1} attempt(s), stages"
                             f" {[(r['stage'], r['attempt']) for r in timeline['stages']]}")
        return {**stages, "end": stages[Stage.GRADED]}

    def makespan(self, count: int, prefix: str) -> float:
        """``count`` submissions by two submitters at once; first start to last grade."""
        start = time.time()
        starts: dict[str, float] = {}

        def submit(i: int) -> None:
            account = f"{prefix}{i:03d}"
            starts[account] = time.time()
            done = subprocess.run([*command("vmchecker-submit"), COURSE, ASSIGNMENT, account, str(self.archive)],
                                  env=self.env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"vmchecker-submit failed ({done.returncode}): {done.stderr.strip()}")

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(submit, range(count)))
        ends = [self.graded(account, start)["end"] for account in starts]
        return max(ends)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, grace=30)
        for log in self.logs:
            log.close()
        if self.ssh is not None:
            self.ssh.close()
        if self.tester is not None:
            shutil.rmtree(self.tester, ignore_errors=True)


def docker_run(script: str) -> float:
    """One bare ``docker run`` of the job; seconds from the command's start to its exit."""
    start = time.time()
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--memory", "512m", "--pids-limit", "256",
                           "--label", LABEL, IMAGE, "sh", "-c", script], capture_output=True, text=True)
    elapsed = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"docker run failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def docker_makespan(script: str, count: int) -> float:
    start = time.time()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: docker_run(script), range(count)))
    return time.time() - start


def remove_containers() -> None:
    """Containers of this run a stop left behind (normally none: --rm)."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"], capture_output=True,
                         text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def stage_table(jobs: list[dict[str, float]]) -> list[tuple[str, float, float]]:
    """(stage, median since the submit's start, median since the stage before), stages
    in the order of their medians; every job has every stage but the check step's."""
    names = [s.value for s in Stage if all(s.value in job for job in jobs)]
    medians = {name: statistics.median(job[name] for job in jobs) for name in names}
    order = sorted(names, key=lambda n: (medians[n], list(Stage).index(Stage(n))))
    rows, before = [(SUBMIT_START, 0.0, 0.0)], None
    for name in order:
        step = statistics.median(job[name] - (job[before] if before else 0.0) for job in jobs)
        rows.append((name, medians[name], step))
        before = name
    return rows


def prepare_docker() -> None:
    for step in (["tools/dockerd.sh", "start"], ["lxc-resources/docker-image.sh", BASE, IMAGE]):
        done = subprocess.run(step, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed: {done.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs one at a time, of each kind (default 20)")
    parser.add_argument("--makespan-jobs", type=int, default=24, help="jobs for the makespan, of each kind (default 24)")
    args = parser.parse_args()
    reason = sshd.available() or lxc_unusable(BASE)
    if reason:
        raise SystemExit(f"bench/latency.py cannot run here: {reason}")
    prepare_docker()
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
          f" (1, 5, 15 min); {os.cpu_count()} cores", flush=True)
    print(f"cgroup moves: {migration_hint() or 'cheap (favordynmods, tools/tune-host.sh)'}", flush=True)
    script = docker_script()
    ours: list[dict[str, float]] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmck-bench-latency-") as tmp:
        root = Path(tmp)
        lab = Lab(root)
        try:
            lab.start()
            lab.job("warm-up")
            docker_run(script)
            for i in range(args.jobs):
                ours.append(lab.job(f"one{i:03d}"))
                theirs.append(docker_run(script))
            makespan = lab.makespan(args.makespan_jobs, "many")
            docker_span = docker_makespan(script, args.makespan_jobs)
        except BaseException:
            for name in ("daemon.log", "queue-manager.log"):
                tail = (root / name).read_text(errors="replace").splitlines()[-15:]
                print(f"--- {name} (last lines)\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            lab.close()
            remove_containers()
    rows = stage_table(ours)
    print(f"\none job at a time, median of {args.jobs} (times in seconds since the submit command started)")
    print(f"{'stage':20} {'since submit':>12} {'+previous':>10}")
    for name, at, step in rows:
        print(f"{name:20} {at:12.3f} {step:+10.3f}")
    latency = statistics.median(job["end"] for job in ours)
    docker = statistics.median(theirs)
    print(f"\n{'':28} {'vmchecker':>10} {'docker run':>11} {'ratio':>6}")
    print(f"{'one job, median (s)':28} {latency:10.3f} {docker:11.3f} {latency / docker:6.2f}")
    print(f"{f'{args.makespan_jobs} jobs, 2 at a time (s)':28} {makespan:10.3f} {docker_span:11.3f}"
          f" {makespan / docker_span:6.2f}")
    print(f"latency_median_s={latency:.3f} docker_median_s={docker:.3f} latency_ratio_vs_docker={latency / docker:.2f}"
          f" makespan_s={makespan:.2f} docker_makespan_s={docker_span:.2f}"
          f" makespan_ratio_vs_docker={makespan / docker_span:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
