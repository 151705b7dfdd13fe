"""The tester's queue manager: run the bundles that arrive in ``queue/``, never lose one.

See docs/ARCHITECTURE.md. The storer uploads ``NAME.zip.part`` and renames
it, so a complete bundle shows up as an inotify ``IN_MOVED_TO`` (or ``IN_CLOSE_WRITE``
when written in place). Up to ``slots`` jobs run at once, each a thread supervising one
executor process (:mod:`vmchecker.tester.jobs`), forked by the executors' fork server
(:mod:`vmchecker.tester.prestart`). The order of the end of a job is what
makes it crash-safe:

1. the results are made durable in ``done/<jobid>/``, completion marker last;
2. the notification is journaled (:mod:`vmchecker.tester.notifier`);
3. only then the bundle leaves ``queue/`` and the work folder is removed.

At start-up, before taking the bundles already queued (oldest first), it stops executors
a killed queue manager left running (and the host commands they recorded), asks each
backend to clean its leftovers (e.g. LXC clones, KVM overlays), clears ``work/``, and
finishes every job that was committed but whose bundle is still queued (unless that
bundle arrived after the commit: a resend of the job, see below). Then its pending
notifications go at once, and each storer daemon it knows hears that it is back
(:mod:`vmchecker.tester.storers`), to look at its jobs here now. While a slot is idle it
keeps warm guests of the machines it ran lately (:mod:`vmchecker.tester.warmer`).
Stopping (SIGTERM) kills the running executors, leaves their bundles queued for the
next start, and destroys the warm guests (a start destroys those a killed run left). An
unexpected error in the main loop is logged and the loop goes on: running jobs never
pay for a hiccup of inotify or of the disk.

A second bundle of a job the tester already holds is the same job, never run twice: a
bundle's name carries its job id, so a resend of a waiting or running job replaces its
file and is taken with it; one whose results are committed and whose notification still
waits (the storer sent it again, not knowing the first had arrived) is dropped, and the
notification is sent at once. A job whose notification the storer has answered is a
deliberate retry (it reported an error) and runs again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmchecker import fsutil, rpc
from vmchecker.contract import STAGE_STAT_PREFIX, Stage
from vmchecker.errors import RpcError
from vmchecker.executor import hostcmds
from vmchecker.executor.cgroups import migration_hint
from vmchecker.service import Service
from vmchecker.tester import metrics, processes, results, storers
from vmchecker.tester.jobs import Job, Outcome, job_id_from_name
from vmchecker.tester.leftovers import cleanup_backend, known_machines, machine_types
from vmchecker.tester.notifier import Journal, Notifier, Pending
from vmchecker.tester.prestart import Executors
from vmchecker.tester.queue_watcher import QueueWatcher, is_bundle_name, queued_before
from vmchecker.tester.storers import KnownStorers
from vmchecker.tester.warmer import Warmer
from vmchecker.tester_config import TesterConfig

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0  # a rescan of queue/ catches anything inotify missed (overflow)
ERROR_PAUSE = 1.0     # seconds the main loop waits after an unexpected error
# The main loop's longest wait, a guard only: a bundle's arrival (inotify), the end of a job
# (its slot is free) and a request to stop each end the wait at once (QueueWatcher.wake).
IDLE_WAIT = 0.5


def default_executor_command(config: TesterConfig) -> list[str]:
    """The executor, run as ``COMMAND BUNDLE_DIR``."""
    return [sys.executable, "-m", "vmchecker.cli.vm_executor", "--tester-config", str(config.path)]


class QueueManager(Service):
    """``vmchecker-queue-manager``: see the module docstring."""

    name = "queue-manager"

    def __init__(self, config: TesterConfig, *, once: bool = False, pid_file: Path | str | None = None,
                 keep_done_days: float | None = None, notify_timeout: float = 10.0,
                 notify_base_delay: float = 2.0, notify_max_delay: float = 300.0, kill_grace: float = 30.0,
                 _executor_command: Sequence[str] | None = None, _warm_command: Sequence[str] | None = None,
                 _prestart: bool | None = None):
        super().__init__(pid_file=pid_file or config.state_dir / "queue-manager.pid", once=once)
        self.config = config
        self.keep_done_days = keep_done_days
        self.kill_grace = kill_grace
        # Tests replace the executor with a small script; never a config key.
        self._executor_command = list(_executor_command or default_executor_command(config))
        # The fork server (tester/prestart.py) is the real executor's, as warm guests are.
        prestart = _executor_command is None if _prestart is None else _prestart
        self.executors = Executors(self._executor_command, config.work_dir, prestart, kill_grace)
        # Warm guests are the real executor's: a replaced executor gets none unless the
        # test names a warm-up command too.
        warm_command = _warm_command or (None if _executor_command else self._executor_command)
        self.warmer = Warmer(config, warm_command, kill_grace)
        self._notify_settings = {"timeout": notify_timeout, "base_delay": notify_base_delay,
                                 "max_delay": notify_max_delay}
        self.notifier: Notifier | None = None
        self.storers = KnownStorers(config.state_dir / storers.STORERS_FILE)
        self._waiting: deque[str] = deque()
        self._known: set[str] = set()  # waiting or running
        self._received: dict[str, float] = {}  # when each waiting bundle was seen (its timeline's "received")
        self._running: dict[str, tuple[Job, threading.Thread]] = {}
        self._commit_lock = threading.Lock()
        self._wake = threading.Event()
        self._watcher: QueueWatcher | None = None   # while serving, but for a drain
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ main loop

    def serve(self) -> int:
        """Serve with umask 077 (restored after): what this process writes without an
        explicit mode, e.g. a job's key in its bundle or its notification, is root's alone."""
        cfg = self.config
        for d in (cfg.queue_dir, cfg.work_dir, cfg.done_dir, cfg.state_dir):
            d.mkdir(parents=True, exist_ok=True)   # before the umask: done/ stays readable
        old_umask = os.umask(0o077)
        try:
            return self._serve()
        finally:
            os.umask(old_umask)

    def _serve(self) -> int:
        cfg = self.config
        for d in (cfg.work_dir, cfg.state_dir):  # unpacked bundles and notifications hold job keys
            d.chmod(0o700)
        cfg.publish_identity()  # the name and slots it runs with, for the storer to check
        self.notifier = Notifier(Journal(cfg.state_dir / "notify"), **self._notify_settings)
        self.recover()
        for machine_type in machine_types(cfg):
            self.executors.note(machine_type)
            if machine_type == "lxc" and (hint := migration_hint()):
                log.warning("%s", hint)
        watcher = None if self.once else QueueWatcher(cfg.queue_dir)  # before the scan: miss nothing
        self._watcher = watcher
        self._enqueue(self.backlog())
        self._drop_held_duplicates()
        self._say_back()
        if not self.once:
            self.notifier.start()
        log.info("queue manager for %s: %d bundle(s) queued, %d slot(s)%s", cfg.queue_dir, len(self._waiting),
                 cfg.tester.slots, ", draining" if self.once else "")
        exporter = metrics.serve(cfg.tester.metrics_listen, cfg.tester.name, self.load)
        try:
            self._loop(watcher)
        finally:
            self._abort_running()
            self.executors.stop()
            self.warmer.stop()
            if watcher:
                watcher.close()
            if self.once:
                self.notifier.run_due(force=True)
            else:
                self.notifier.stop()
            if exporter is not None:
                exporter.close()
        return 0

    def _loop(self, watcher: QueueWatcher | None) -> None:
        self._last_sweep = time.monotonic()
        while not self.stop.is_set():
            try:
                if not self._iteration(watcher):
                    return
            except Exception:  # a full disk, an inotify hiccup: running jobs must not pay for it
                log.exception("queue manager: unexpected error; going on")
                self.stop.wait(ERROR_PAUSE)

    def _iteration(self, watcher: QueueWatcher | None) -> bool:
        """One turn of the main loop; False when a drain (``--once``) is over."""
        self._reap()
        self._start_jobs()
        self.executors.top_up()
        if self.once and not self._waiting and not self._running:
            return False
        if not self.once and not self._waiting:   # idle slots prepare the next guests
            self.warmer.top_up(self.config.tester.slots - len(self._running),
                               [job.machine for job, _thread in self._running.values()])
        if watcher is None:
            self._wake.wait(IDLE_WAIT)
            self._wake.clear()
            return True
        self._enqueue(watcher.poll(min(IDLE_WAIT, max(self._last_sweep + SWEEP_SECONDS - time.monotonic(), 0))))
        if watcher.overflowed or time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            watcher.overflowed = False
            self._last_sweep = time.monotonic()
            self._enqueue(self.backlog())
            self.cleanup_done()
        return True

    def _nudge(self) -> None:
        """End the main loop's wait now (from any thread, or a signal handler)."""
        self._wake.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.wake()

    def request_stop(self, reason: str = "asked to stop") -> None:
        super().request_stop(reason)
        self._nudge()

    def _say_back(self) -> None:
        """Tell every storer daemon known (those of the bundles queued now, and of those run
        before) that this tester is back, so each looks at once at what it sent here; the
        notifier sends it after the pending notifications (see tester/storers.py)."""
        for name in self._waiting:
            ref = storers.from_bundle(self.config.queue_dir / name, self.config)
            if ref is not None:
                self.storers.remember(ref)
        self.notifier.announce(storers.back_calls(self.storers.all(), self.config.tester.name))

    def load(self) -> dict[str, int]:
        """Its slots, those running a job, the bundles waiting for one and the notifications
        not yet answered: the metrics' gauges, read by a scrape in another thread."""
        pending = len(self.notifier.journal.job_ids()) if self.notifier is not None else 0
        return {"slots": self.config.tester.slots, "busy": len(self._running), "waiting": len(self._waiting),
                "pending": pending}

    def cleanup_done(self) -> list[str]:
        """The clean-up policy for ``done/``: results the storer was told of (no pending
        notification) go once older than ``keep_done_days``, else ``tester.done_grace``."""
        days = self.keep_done_days
        if days is None:
            days = self.config.tester.done_grace / 86400
        return results.cleanup_done(self.config.done_dir, days, keep=set(self.notifier.journal.job_ids()))

    def backlog(self) -> list[str]:
        """Bundles now in ``queue/``, oldest first."""
        entries = []
        for path in self.config.queue_dir.iterdir():
            if is_bundle_name(path.name) and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entries.append((path.stat().st_mtime, path.name))
        return [name for _, name in sorted(entries)]

    def _enqueue(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._known and (self.config.queue_dir / name).is_file():
                log.info("bundle %r queued", name)
                self._received[name] = time.time()
                self._known.add(name)
                self._waiting.append(name)

    def _drop_held_duplicates(self) -> None:
        """At start, before the notifier's first pass: drop the queued bundles of jobs done
        here whose notification waits. Once that notification is answered, a bundle left
        would look like a new attempt and run the job a second time."""
        for name in list(self._waiting):
            if self._drop_duplicate(self.config.queue_dir / name):
                self._waiting.remove(name)
                self._known.discard(name)
                self._received.pop(name, None)

    def _start_jobs(self) -> None:
        while self._waiting and len(self._running) < self.config.tester.slots and not self.stop.is_set():
            name = self._waiting.popleft()
            bundle_path = self.config.queue_dir / name
            received = self._received.pop(name, None)
            if not bundle_path.is_file() or self._drop_duplicate(bundle_path):  # removed by hand meanwhile
                self._known.discard(name)
                continue
            job = Job(bundle_path, self.config, self.executors, self.kill_grace)
            job.received_at = received
            thread = threading.Thread(target=self._run_job, args=(job,), name=f"slot:{job.name}", daemon=True)
            self._running[name] = (job, thread)
            thread.start()

    def _drop_duplicate(self, bundle_path: Path) -> bool:
        """Drop a bundle of a job that is already running (under another name) or whose
        results are committed with a notification still waiting, and send that
        notification now; True if dropped (see the module docstring)."""
        job_id = job_id_from_name(bundle_path.name)
        with self._commit_lock:   # not while a job is being committed
            running = any(job_id_from_name(name) == job_id for name in self._running)
            try:
                pending = None if running else self.notifier.journal.load(job_id)
            except RpcError:
                return False   # not a job id: a malformed bundle, run to report it
            if not running and (pending is None or results.read_marker(self.config.done_dir / job_id) is None):
                return False
            log.info("job %s: %r is a second bundle of a job %s here; dropping it", job_id, bundle_path.name,
                     "running" if running else "done and not yet notified")
            self._remove_bundle(bundle_path)
            if pending is not None:
                self.notifier.hurry(job_id)
        return True

    def _reap(self) -> None:
        for name, (job, thread) in list(self._running.items()):
            if job.ended or not thread.is_alive():
                thread.join()   # ended: it has only to return
                del self._running[name]
                self._known.discard(name)
                self.warmer.note(job.machine)
                if job.machine is not None:
                    self.executors.note(job.machine.type)
                self.warmer.sweep()   # a warm guest its executor claimed and could not destroy

    def _abort_running(self) -> None:
        for job, _thread in self._running.values():
            job.abort()
        for _job, thread in self._running.values():
            thread.join()
        self._running.clear()

    # ------------------------------------------------------------------ one job

    def _run_job(self, job: Job) -> None:
        try:
            outcome = job.run()
            if job.killed and job.machine is not None:
                cleanup_backend(job.machine.type, [job.machine])  # only guests whose executor is gone
            if outcome is None:
                log.info("job %s: interrupted; the bundle stays queued", job.name)
            else:
                self.finish(outcome)
        except Exception:  # e.g. the disk is full: the bundle stays queued for the next start
            log.exception("job %s: could not record its results; the bundle stays in the queue", job.name)
        finally:
            job.cleanup()
            job.ended = True   # before the nudge: the loop it wakes may look before this thread is gone
            self._nudge()   # its slot is free: the next bundle starts now

    def finish(self, outcome: Outcome) -> None:
        """Commit a job's results, journal its notification, then release its bundle."""
        marker = {"bundle": outcome.bundle.name, "job_id": outcome.job_id, "key": outcome.key,
                  "notify_url": outcome.notify_url, "status": outcome.status, "stats": outcome.stats}
        held = False
        try:
            with self._commit_lock:
                files = results.commit(outcome.results_dir, self.config.done_dir, outcome.job_id, marker)
                held = self._journal_notification({**marker, "files": files, "committed": time.time()}, hold=True)
                self._remove_bundle(outcome.bundle)
        finally:
            if held:   # journaled: never leave it held for the life of this process
                self.notifier.release(outcome.job_id)
        log.info("job %s: %s; results in %s", outcome.job_id, outcome.status,
                 self.config.done_dir / outcome.job_id)
        metrics.job_finished(outcome.status, outcome.stats)
        ref = storers.StorerRef.checked(outcome.notify_url, outcome.course, outcome.tester_key)
        try:
            if ref is not None:
                self.storers.remember(ref)
        except OSError as exc:   # the job is committed; only a faster recovery is lost
            log.error("cannot remember the storer of job %s: %s", outcome.job_id, exc)

    def _journal_notification(self, marker: dict, hold: bool = False) -> bool:
        """Journal the notification a completion marker describes; False if it cannot be sent.
        Its stats gain the moment the results became durable (the marker's ``committed``)."""
        job_id = marker.get("job_id", "?")
        url = self.config.notify_url(str(marker.get("notify_url") or ""))
        stats = marker.get("stats", {})
        if isinstance(stats, dict) and isinstance(marker.get("committed"), (int, float)) and len(stats) < rpc.MAX_STATS:
            stats = {**stats, STAGE_STAT_PREFIX + Stage.RESULTS_DURABLE: marker["committed"]}
        try:
            if not url:
                raise RpcError("the bundle has no notify_url and tester.storer_daemon is not set")
            rpc.check_url(url)
            request = rpc.NotifyRequest.validate(job_id, marker.get("key"), marker.get("status"),
                                                 marker.get("files", []), stats)
        except RpcError as exc:
            log.error("job %s: cannot notify the storer (%s); results stay in %s", job_id, exc.message,
                      self.config.done_dir / str(job_id))
            return False
        self.notifier.add(Pending(url, request), hold=hold)
        return True

    def _remove_bundle(self, bundle_path: Path) -> None:
        bundle_path.unlink(missing_ok=True)
        fsutil.fsync_dir(bundle_path.parent)

    # ------------------------------------------------------------------ start-up

    def recover(self) -> None:
        """Undo what a killed run left: executors, guests, work folders, half-finished jobs."""
        cfg = self.config
        machines = known_machines(cfg)
        for pid in processes.find_orphans(cfg.work_dir):
            processes.kill_orphan(pid, self.kill_grace)
        machines += self.warmer.recover()   # after the executors that may hold warm guests
        for job_dir in cfg.work_dir.iterdir():
            if job_dir.is_dir() and not job_dir.is_symlink():
                hostcmds.kill_recorded(job_dir)   # host commands of the executors just killed
        for machine_type in sorted(machine_types(cfg, machines)):
            cleanup_backend(machine_type, [m for m in machines if m.type == machine_type])
        for entry in cfg.work_dir.iterdir():
            log.info("removing %r left by an earlier run", str(entry))
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot remove %r: %s", str(entry), exc)
        pending = set(self.notifier.journal.job_ids())
        for bundle_name, marker in results.scan_done(cfg.done_dir).items():
            bundle_path = cfg.queue_dir / bundle_name
            if not is_bundle_name(bundle_name) or not bundle_path.is_file():
                continue
            if not queued_before(bundle_path, marker.get("committed")):
                log.info("job %s: %s arrived again after its results were committed; a duplicate unless"
                         " its notification was answered", marker.get("job_id"), bundle_name)
                continue
            log.info("job %s: results were committed before a crash; finishing it", marker.get("job_id"))
            if marker.get("job_id") not in pending:
                self._journal_notification(marker)
            self._remove_bundle(bundle_path)
        self.cleanup_done()
