"""Sends queued jobs to testers and gives up waiting for lost ones.

Notification plus sweeper (STYLE.md habit 5): ``queue_task`` wakes the dispatcher at
once, so does a failed attempt (its job is queued again), and every pass also re-reads
the journal, so a job left behind by a lost wake-up or a daemon restart is sent anyway;
the poll interval is only that sweep's guard. One pass:

1. each ``queued`` job (oldest first): pick a tester with the scheduler (a
   reservation of one of its slots) and hand the job to that tester's sender
   (:mod:`vmchecker.storer.senders`), so a tester that hangs delays only its own jobs.
   The sender builds the bundle, journals ``sent`` *before* uploading (the intent),
   uploads ``NAME.zip.part``, renames, and journals the confirmation (a daemon killed
   in between leaves the job in doubt, for the next start to resolve); a failed upload
   is a failure of that tester (penalty sample, retry elsewhere, and the jobs waiting
   for that tester are handed back to be picked again). The reservation gives the slot
   back on every way out before ``sent`` without a line of clean-up per failure;
2. each ``sent`` job past its notify deadline: a failure of its tester, same path.

A job that fails ``max_attempts`` times ends in ``error`` with every reason written
into the submission's ``vmchecker-stderr.vmr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from vmchecker import bundle
from vmchecker.contract import JobState, SubmissionStatus
from vmchecker.errors import JobStateError, NotFound, VmcheckerError
from vmchecker.storer import metrics, outcomes
from vmchecker.storer.courses import Course, Courses
from vmchecker.storer.journal import Job, Journal
from vmchecker.storer.scheduler import Reservation
from vmchecker.storer.senders import Send, Senders, settle
from vmchecker.storer.tester_keys import TesterKeys

log = logging.getLogger(__name__)


class Dispatcher:
    """Moves jobs from ``queued`` to a tester; one thread runs :meth:`loop`."""

    def __init__(self, journal: Journal, courses: Courses, bundles_dir: Path, poll: float = 2.0,
                 sweep: Callable[[], object] | None = None, sweep_every: float = 300.0,
                 tester_keys: TesterKeys | None = None):
        """``sweep`` runs every ``sweep_every`` seconds: the daemon passes the look for
        submissions left ``saved`` (a queue_task that was lost on its way). ``tester_keys``:
        each bundle carries its tester's key (none without)."""
        self.journal = journal
        self.courses = courses
        self.bundles_dir = Path(bundles_dir)
        self.poll = poll
        self.wake = threading.Event()
        self._sweep = sweep
        self._sweep_every = sweep_every
        self._tester_keys = tester_keys
        self._sending: set[str] = set()   # jobs between the intent and the confirmation, here and now
        self._sending_lock = threading.Lock()
        self._senders = Senders(self._deliver, on_unsent=self.wake.set)

    def sending(self, job_id: str) -> bool:
        """Whether this dispatcher is sending the job right now: journaled ``sent`` and not
        yet confirmed, but not in doubt (the upload is under way)."""
        with self._sending_lock:
            return job_id in self._sending

    def close(self, timeout: float) -> None:
        """Stop the testers' senders, waiting up to ``timeout`` seconds for the sends under
        way; a job whose send had not started stays queued for the next start."""
        self._senders.close(timeout)

    def loop(self, stop: threading.Event, drain: bool = False) -> None:
        """Dispatch and sweep until ``stop`` is set; each pass survives any one job's failure.

        ``drain`` (the daemon's ``--once``): return as soon as a pass ends with no job
        queued or sent in the journal (a job waiting out a retry delay is queued)."""
        next_sweep = time.monotonic() + self._sweep_every
        while not stop.is_set():
            self.wake.clear()
            try:
                if self._sweep is not None and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_every
                    self._sweep()
                self._pass()
            except Exception:
                log.exception("dispatcher pass failed; trying again")
            if drain and not self.journal.active():
                return
            self.wake.wait(self._wait())

    def _wait(self) -> float:
        """Until the next pass: the poll interval (the sweep's guard), or sooner when a
        queued job's retry delay ends or a sent job's notify deadline passes."""
        now = time.time()
        due = self.journal.next_due(after=now)
        return self.poll if due is None else min(self.poll, max(due - now, 0.05))

    def run_once(self) -> int:
        """One pass, waiting for the sends it started (what a test steps through): jobs sent."""
        return settle(self._pass())

    def _pass(self) -> list[Future[int]]:
        """Sweep overdue jobs, then hand each queued job to the sender of the tester picked
        for it; the sends go on after the pass. Their results."""
        for job in self.journal.overdue():
            self.fail(job, "no notification from the tester before the deadline", job.tester, kind="deadline")
        handed = []
        for job in self.journal.to_dispatch():
            if not self._senders.holds(job.id):   # with a sender already: picked, not yet sent
                result = self._dispatch(job)
                if result is not None:
                    handed.append(result)
        return handed

    # ------------------------------------------------------------------ one job

    def _dispatch(self, job: Job) -> Future[int] | None:
        """Pick a tester and hand the job to its sender; the send's result (1 if the job
        went out), or None when no tester can take it (the job is given up)."""
        try:
            course, reservation = self._pick(job)
        except VmcheckerError as exc:
            self._give_up(job, exc.message, kind="unusable")
            return None
        decided = time.time()   # the timeline's "dispatched"
        return self._senders.submit(Send(job, course, reservation, decided))

    def _deliver(self, send: Send) -> int:
        """In the sender of the tester picked: build the bundle, send it; 1 if the job went out.

        The tester's slot is reserved for the job from the pick on; any way out before
        the journal says ``sent`` (a refusal, an exception) gives it back."""
        course, job, reservation = send.course, send.job, send.reservation
        with reservation:
            try:
                path = self._build(course, job, reservation.tester)
            except VmcheckerError as exc:
                self._give_up(job, f"cannot build the bundle: {exc.message}", kind="bundle")
                return 0
            except OSError as exc:
                self._give_up(job, f"cannot build the bundle: {exc}", kind="bundle")
                return 0
            try:
                return self._send(course, job, reservation, path, send.decided)
            finally:
                path.unlink(missing_ok=True)

    def _pick(self, job: Job) -> tuple[Course, Reservation]:
        """The job's course and a slot on the tester expected to finish it soonest.
        NotFound/ConfigError if the course, assignment or submission is gone or no
        tester serves the machine: no other tester can mend that."""
        course = self.courses.get(job.course)
        course.config.assignment(job.assignment)
        outcomes.submission_of(course, job)
        return course, course.scheduler.reserve(job.id, job.assignment, job.machine, exclude=job.failed_on)

    def _send(self, course: Course, job: Job, reservation: Reservation, path: Path, decided: float) -> int:
        """Journal the job ``sent``, then upload the bundle; 1 if it went out.

        The reservation is committed as soon as the journal holds the job as sent: from
        then on the job's notify, its failure or the sweep of overdue jobs frees the slot.
        Meanwhile the job is :meth:`sending`, so a recheck of the tester leaves it alone."""
        with self._sending_lock:
            self._sending.add(job.id)
        try:
            return self._upload(course, job, reservation, path, decided)
        finally:
            with self._sending_lock:
                self._sending.discard(job.id)

    def _upload(self, course: Course, job: Job, reservation: Reservation, path: Path, decided: float) -> int:
        tester = reservation.tester
        try:
            # Running before the upload: a fast tester's results must land after it.
            if not outcomes.set_status(course, job, SubmissionStatus.RUNNING,
                                       (SubmissionStatus.QUEUED, SubmissionStatus.RUNNING), tester=tester):
                self._give_up(job, "the submission no longer waits for this job (rechecked or graded since)",
                              kind="superseded")
                return 0
            job = self.journal.mark_sent(job.id, tester, reservation.deadline, dispatched=decided)
        except JobStateError:
            return 0  # someone else moved it meanwhile
        except VmcheckerError as exc:  # the submission vanished before the upload
            self._give_up(job, exc.message, kind="unusable")
            return 0
        reservation.commit()
        metrics.job_sent(course, job)
        try:
            course.link(tester).send_bundle(path, course.config.testers[tester].queue, path.name)
        except VmcheckerError as exc:
            self.fail(job, f"could not send the bundle: {exc.message}", tester, kind="send")
            self._senders.hand_back(course.id, tester)
            return 0
        try:
            self.journal.confirm_sent(job.id)
        except JobStateError:
            pass  # a fast notify (or the sweep) moved it on meanwhile
        return 1

    def _build(self, course: Course, job: Job, tester: str) -> Path:
        cfg = course.config
        machine = cfg.machines[job.machine]
        sub = outcomes.submission_of(course, job)
        info = bundle.BundleInfo(
            job_id=job.id, key=job.key, course=cfg.id, assignment=job.assignment, account=job.account,
            submission=job.submission, upload_time=sub.info.upload_time.strftime("%Y-%m-%d %H:%M:%S"),
            timeout=cfg.assignment(job.assignment).timeout, machine=machine, notify_url=cfg.storer.daemon,
            tester_key=self._tester_keys.key(cfg.id, tester) if self._tester_keys else "",
        )
        for script in (machine.build_script, machine.run_script, machine.check_script):
            if script and not cfg.resolve(script).is_file():
                raise NotFound(f"{cfg.resolve(script)}: the machine's script is missing")
        return bundle.build_bundle(
            self.bundles_dir / info.file_name, info, archive_path=sub.archive_path,
            tests_path=cfg.tests_archive(job.assignment), build_script=cfg.resolve(machine.build_script),
            run_script=cfg.resolve(machine.run_script),
            check_script=cfg.resolve(machine.check_script) if machine.check_script else None,
        )

    # ------------------------------------------------------------------ failures

    def fail(self, job: Job, reason: str, tester: str | None, *, kind: str = "other") -> None:
        """A tester failed the job: penalty sample, then resend or give up. ``kind``: what
        failed, in one word, for the metrics (see vmchecker/storer/metrics.py)."""
        try:
            course = self.courses.get(job.course)
        except VmcheckerError as exc:
            self._give_up(job, f"{reason}; and the course is unusable: {exc.message}", kind=kind)
            return
        storer = course.config.storer
        try:
            job = self.journal.record_failure(job.id, reason, max_attempts=storer.max_attempts, tester=tester,
                                              retry_delay=storer.retry_delay * 2 ** job.attempts)
        except JobStateError:
            return  # a notify won the race: the tester did its job
        metrics.job_failed(course, job, tester, kind)
        if tester and tester in course.config.testers:
            course.scheduler.on_failure(tester, job.id, job.assignment, reason)
        if job.state is JobState.ERROR:
            self._record_error(course, job)
        else:
            self._set_status(course, job, SubmissionStatus.QUEUED)
            self.wake.set()   # queued again: the next pass sends it, or waits for its retry time

    def _give_up(self, job: Job, reason: str, *, kind: str = "other") -> None:
        """A failure no other tester can mend: error at once."""
        try:
            job = self.journal.mark_error(job.id, reason)
        except JobStateError:
            return
        try:
            course = self.courses.get(job.course)
            metrics.job_failed(course, job, job.tester, kind)
            self._record_error(course, job)
        except VmcheckerError as exc:
            metrics.job_failed(None, job, job.tester, kind)
            log.error("job %s: %s (and could not record it: %s)", job.id, reason, exc.message)

    def _record_error(self, course: Course, job: Job) -> None:
        try:
            outcomes.record_error(course, job, job.reasons)
        except VmcheckerError as exc:
            log.error("job %s: could not write its error into the submission: %s", job.id, exc.message)

    def _set_status(self, course: Course, job: Job, status: SubmissionStatus) -> None:
        try:
            outcomes.set_status(course, job, status, (SubmissionStatus.RUNNING, SubmissionStatus.QUEUED))
        except VmcheckerError as exc:
            log.warning("job %s: could not set status %s: %s", job.id, status, exc.message)
