"""A stand-in for ``vmchecker-vm-executor`` used by the queue manager's own tests.

Run as ``fake_executor.py BUNDLE_DIR``, or as the queue manager's fork server, as the
real one is (``--serve-jobs WORK_DIR/ [--preload TYPE]...``: the real server's loop,
vmchecker/tester/forkserver.py, forking a child per job to do what follows). It behaves as the ``fake.json`` member of the
bundle's ``archive.zip`` says, so one test can make it pass, fail, crash, hang, spawn a
child or wait for a partner job, and then check what the queue manager did about it.
Like the real executor it writes ``BUNDLE_DIR/results/`` with ``result.json`` and
exits 0 when results were written.

fake.json keys (all optional):
  action       "ok" (default) | "error" | "crash" (exit 3, no results) | "hang"
  sleep        seconds to sleep before finishing
  log          file to append "<job_id>\\n" to at start (start order)
  started      file to create at start; if it exists already, "hang" becomes "ok"
  child_pid    spawn `sleep 1000` and write its pid here (it must die with the group)
  ignore_term  ignore SIGTERM (the queue manager must escalate to SIGKILL)
  active_dir   concurrency probe: register here while running, record how many ran at once
  barrier      with active_dir: wait until this many jobs run at once, or every job of
               ``total`` has started (the last ones may have no partner left)
  total        with active_dir: how many jobs share the probe
  modes        file to write {"config": mode of submission-config.yaml, "umask": its own} to
  result_files more files to write in results/ (name -> text)
  host_pid     start a host command as the real executor does (vmchecker.executor.hostcmds.
               HostCommands, recorded in results/) that writes its pid here and sleeps
  wait_file    a barrier: after the start log, wait until this file exists (a guard of
               PROBE_WAIT seconds only keeps a broken test from hanging)
  finished     file to append "<job_id>\\n" to once the results are written (runs completed)
  grade        text of the grade file the tests wrote (results/grade.vmr, grade_file true)
  build_exit   the build step's exit status in result.json (default 0): a build that failed
  pid_file     file to write {"pid": its pid, "parent": its parent's, "forked": whether a fork
               server forked it} to
"""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import yaml

PROBE_WAIT = 120   # seconds: a guard, never reached when the queue manager works


def main() -> int:
    if sys.argv[1] != "--serve-jobs":
        return run(Path(sys.argv[1]), forked=False)
    from vmchecker.tester import forkserver

    print(f"fake fork server pid {os.getpid()} serving", file=sys.stderr, flush=True)
    return forkserver.serve(Path(sys.argv[2]), lambda bundle: run(bundle, forked=True))


def run(bundle: Path, forked: bool) -> int:
    print(f"fake executor pid {os.getpid()} runs {bundle.name}", flush=True)
    started_at = time.time()
    info = yaml.safe_load((bundle / "submission-config.yaml").read_text())
    job_id = info["job_id"]
    with zipfile.ZipFile(bundle / "archive.zip") as zf:
        spec = json.loads(zf.read("fake.json")) if "fake.json" in zf.namelist() else {}
    action = spec.get("action", "ok")
    if spec.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec.get("log"):
        with open(spec["log"], "a") as f:
            f.write(job_id + "\n")
    if spec.get("started"):
        started = Path(spec["started"])
        if started.exists() and action == "hang":
            action = "ok"
        started.write_text(str(os.getpid()))
    if spec.get("wait_file"):
        deadline = time.monotonic() + PROBE_WAIT
        while not Path(spec["wait_file"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if spec.get("host_pid"):
        from vmchecker.executor.hostcmds import PGIDS_SUFFIX, HostCommands

        (bundle / "results").mkdir(exist_ok=True)
        commands = HostCommands("host_commands", bundle / "results" / f".host_commands{PGIDS_SUFFIX}")
        commands.start([f"echo $$ > {spec['host_pid']}; exec sleep 1000"], {}, None)
    if spec.get("child_pid"):
        child = subprocess.Popen(["sleep", "1000"])
        Path(spec["child_pid"]).write_text(str(child.pid))
    if spec.get("pid_file"):
        Path(spec["pid_file"]).write_text(json.dumps({"pid": os.getpid(), "parent": os.getppid(), "forked": forked}))
    if spec.get("modes"):
        umask = os.umask(0o022)
        config_mode = (bundle / "submission-config.yaml").stat().st_mode & 0o777
        Path(spec["modes"]).write_text(json.dumps({"config": config_mode, "umask": umask}))
    extra = {}
    if spec.get("active_dir"):
        extra["seen_at_once"] = probe(Path(spec["active_dir"]), job_id, spec.get("barrier", 0), spec.get("total", 0))
    if action == "hang":
        while True:
            time.sleep(1)
    time.sleep(spec.get("sleep", 0))
    timeline = {"executor_started": started_at, "run_started": time.time()}
    if action == "crash":
        print("fake executor: crashing as asked", file=sys.stderr)
        return 3
    results = bundle / "results"
    results.mkdir(exist_ok=True)
    (results / "run-stdout.vmr").write_text(f"ran {job_id}\n")
    (results / "vmchecker-stderr.vmr").write_text("")
    for name, text in spec.get("result_files", {}).items():
        (results / name).write_text(text)
    if "grade" in spec:
        (results / "grade.vmr").write_text(spec["grade"])
    status = "error" if action == "error" else "done"
    steps = {name: {"attempted": True, "exit_code": 0, "signal": None, "timed_out": False} for name in ("build", "run")}
    steps["build"]["exit_code"] = spec.get("build_exit", 0)
    timeline["executor_ended"] = time.time()
    result = {"status": status, "backend": "fake", "total_s": 0.01, "grade_file": "grade" in spec, "steps": steps,
              "timeline": timeline, **extra}
    (results / "result.json").write_text(json.dumps(result))
    if spec.get("finished"):
        with open(spec["finished"], "a") as f:
            f.write(job_id + "\n")
    return 0


def probe(active: Path, job_id: str, barrier: int, total: int) -> int:
    """Register as running and wait until ``barrier`` jobs run at once (or all ``total``
    have started: no partner may come); return how many ran at that moment.

    No sleep decides the count: a queue manager that fills its slots makes the jobs
    meet, and the count is read at the moment they do. The deadline only keeps a
    broken queue manager from hanging the test (it then reports too few)."""
    running, started = active / "running", active / "started"
    running.mkdir(parents=True, exist_ok=True)
    started.mkdir(parents=True, exist_ok=True)
    (running / job_id).touch()
    (started / job_id).touch()
    deadline = time.monotonic() + PROBE_WAIT
    while True:
        seen = len(os.listdir(running))
        if seen >= barrier or len(os.listdir(started)) >= total or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    (running / job_id).unlink()
    return seen


if __name__ == "__main__":
    sys.exit(main())
