"""One job on the tester: unpack a bundle, run the executor on it, collect its results.

A :class:`Job` turns every failure it can meet (a malformed bundle, an unknown machine,
an executor that crashes, hangs past ``executor_timeout`` or writes no results, a bug
here) into an ``error`` result with the reason in ``vmchecker-stderr.vmr`` (STYLE.md
habit 6): the queue manager never crashes on a bundle, and the storer always hears why.
Making the results durable is the queue manager's part (:mod:`vmchecker.tester.results`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmchecker import bundle, rpc
from vmchecker.config import Machine
from vmchecker.contract import JOB_ID_RE, RESULT_JSON, STAGE_STAT_PREFIX, SUBMISSION_CONFIG, ResultStatus, Stage
from vmchecker.errors import BundleError, VmcheckerError
from vmchecker.executor import guest, hostcmds
from vmchecker.tester import processes, results
from vmchecker.tester.prestart import Executors
from vmchecker.tester_config import TesterConfig

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 4000
# Seconds an executor needs beyond boot and the two steps: copying in and out (each
# capped at COPY_TIMEOUT), revert, stop and clean-up.
EXECUTOR_MARGIN = 2 * guest.COPY_TIMEOUT + 60
IDENTITY = ("job_id", "key", "notify_url", "course", "tester_key")   # what a bundle says of its job's owner


@dataclass
class Outcome:
    """What a finished job hands to the queue manager."""

    bundle: Path
    job_id: str
    key: str
    notify_url: str
    status: str
    results_dir: Path
    stats: dict[str, Any] = field(default_factory=dict)
    course: str = ""
    tester_key: str = ""   # this tester's own key for the course (see tester/storers.py)


def job_id_from_name(name: str) -> str:
    """The job id a bundle's file name carries (``course_assignment_account_jobid.zip``),
    used only when the bundle is too broken to say it itself."""
    stem = name[: -len(".zip")] if name.endswith(".zip") else name
    last = stem.rsplit("_", 1)[-1]
    if JOB_ID_RE.match(last):
        return last
    cleaned = "".join(c if c.isalnum() or c in "-." else "-" for c in stem)[:100].strip(".-")
    return f"bad-{cleaned or 'bundle'}"


def peek_identity(bundle_zip: Path) -> dict[str, str]:
    """job_id, key, notify_url, course and tester_key from a bundle without validating it,
    if readable: so the storer can still be told of a bundle that failed validation (with
    the key, it will accept the error), and which storers sent the bundles in the queue."""
    try:
        with zipfile.ZipFile(bundle_zip) as zf:
            info = zf.getinfo(SUBMISSION_CONFIG)
            if info.file_size > 256 * 1024:
                return {}
            data = yaml.safe_load(zf.read(info).decode("utf-8"))
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    identity = {k: data[k] for k in IDENTITY if isinstance(data.get(k), str)}
    if not JOB_ID_RE.match(identity.get("job_id", "")):
        identity.pop("job_id", None)   # it names a folder in done/: keep the one from the file name
    return identity


def executor_timeout(configured: int, machine: Machine, step_timeout: int) -> float:
    """How long the executor may run: the tester's ``executor_timeout``, or longer when
    the job itself may legitimately take longer (boot, build and run each up to the
    bundle's timeout, copies)."""
    return max(configured, machine.boot_timeout + 2 * step_timeout + EXECUTOR_MARGIN)


class Job:
    """Runs one bundle from ``queue/`` in ``work/<bundle name>/``."""

    def __init__(self, bundle_path: Path, config: TesterConfig, executors: Executors, kill_grace: float = 30.0):
        self.bundle = Path(bundle_path)
        self.config = config
        self.executors = executors
        self.kill_grace = kill_grace
        self.name = self.bundle.name[: -len(".zip")]
        self.work = config.work_dir / self.name
        self.log_path = config.work_dir / f"{self.name}.log"
        self.aborted = threading.Event()
        self.killed = False  # the executor had to be killed: its guest may be left over
        self.ended = False   # its slot thread is done with it (set by the queue manager)
        self.machine: Machine | None = None   # with the tester's overrides, once the bundle is read
        self.received_at: float | None = None  # when the queue manager saw the bundle (wall clock)
        self._proc: subprocess.Popen | None = None
        self._proc_lock = threading.Lock()

    @property
    def results_dir(self) -> Path:
        return self.work / "results"

    def abort(self) -> None:
        """Stop the job now (the queue manager is stopping): the bundle stays queued."""
        self.aborted.set()
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            processes.kill_child(proc, self.kill_grace)
            self.killed = True

    def cleanup(self) -> None:
        try:
            shutil.rmtree(self.work)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove the work folder %s: %s", self.work, exc)
        self.log_path.unlink(missing_ok=True)

    def run(self) -> Outcome | None:
        """Run the job; None if it was aborted (no result, bundle to run again later)."""
        identity = {**dict.fromkeys(IDENTITY, ""), "job_id": job_id_from_name(self.bundle.name)}
        started = time.monotonic()
        stats: dict[str, Any] = {"tester": self.config.tester.name, STAGE_STAT_PREFIX + Stage.SLOT_TAKEN: time.time()}
        if self.received_at is not None:
            stats[STAGE_STAT_PREFIX + Stage.RECEIVED] = self.received_at
        try:
            if self.work.exists():   # a leftover that cannot go fails the job, never mixes into it
                shutil.rmtree(self.work)
            with contextlib.suppress(OSError):   # it holds the job's key (a storer sends it 0600)
                self.bundle.chmod(results.KEY_FILE_MODE)
            try:
                info = bundle.unpack_bundle(self.bundle, self.work)
                (self.work / SUBMISSION_CONFIG).chmod(results.KEY_FILE_MODE)   # so does this
                machine = self.config.machine(info.machine)  # the tester's overrides must apply too
            except VmcheckerError as exc:
                identity.update(peek_identity(self.bundle))
                reason = exc.message.replace(f"{self.work}/", "")  # no tester paths in results
                raise BundleError(reason if self.bundle.name in reason else f"{self.bundle.name}: {reason}") from None
            identity = {"job_id": info.job_id, "key": info.key, "notify_url": info.notify_url, "course": info.course,
                        "tester_key": info.tester_key}
            self.config.check_host_commands(machine)   # before anything runs: root shells need the tester's word
            self.machine = machine
            status = self._execute(stats, executor_timeout(self.config.tester.executor_timeout, machine, info.timeout))
        except VmcheckerError as exc:
            log.error("job %s: %s", identity["job_id"], exc.message)
            status = self._fail(exc.message)
        except Exception as exc:  # the one boundary per job
            log.exception("job %s: unexpected error", identity["job_id"])
            status = self._fail(f"internal error in the queue manager: {type(exc).__name__}: {exc}")
        if self.aborted.is_set():
            return None
        stats["tester_seconds"] = round(time.monotonic() - started, 3)
        url = self.config.notify_url(identity["notify_url"])
        return Outcome(self.bundle, identity["job_id"], identity["key"], url, status, self.results_dir,
                       rpc.coerce_stats(stats), identity["course"], identity["tester_key"])

    def _fail(self, reason: str) -> str:
        if self.results_dir.exists() and not self.results_dir.is_dir():
            self.results_dir.unlink()
        results.write_error(self.results_dir, reason)
        return ResultStatus.ERROR.value

    def _execute(self, stats: dict[str, Any], timeout: float) -> str:
        """Run the executor for at most ``timeout`` seconds; read the status it wrote."""
        started = time.monotonic()
        with self._proc_lock:
            if self.aborted.is_set():
                return ResultStatus.ERROR.value
            self._proc = proc = self.executors.start(self.work, self.log_path)
        log.info("job %s: executor pid %d: %s", self.name, proc.pid, " ".join(map(str, proc.args)))
        timed_out = not processes.wait_exit(proc, timeout)
        if timed_out:
            log.warning("job %s: executor still running after %d s; killing it", self.name, timeout)
            processes.kill_child(proc, self.kill_grace)
            self.killed = True
        processes.reap_group(proc)
        hostcmds.kill_recorded(self.work)   # host commands of an executor that could not stop them
        stats.update(executor_seconds=round(time.monotonic() - started, 3), executor_exit=proc.returncode,
                     timed_out=timed_out)
        if self.aborted.is_set():
            return ResultStatus.ERROR.value
        status, data = results.read_status(self.results_dir)
        stats.update(results.stage_stats(data))
        stats.update({k: v for k, v in data.items() if k not in stats and not isinstance(v, (dict, list))})
        if timed_out:
            return self._fail(f"the executor did not finish within executor_timeout ({timeout:g} s) and was killed"
                              + self._log_tail())
        if status is None:
            return self._fail(f"the executor exited with code {proc.returncode} without writing"
                              f" results/{RESULT_JSON}" + self._log_tail())
        if proc.returncode != 0:
            log.warning("job %s: executor exited with code %d after writing results", self.name, proc.returncode)
        return status

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        text = text[-LOG_TAIL_CHARS:].strip()
        return f"\nexecutor output (last lines):\n{text}" if text else ""
