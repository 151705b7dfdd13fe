"""The storer daemon: XML-RPC front, job journal, dispatcher, result landing.

``queue_task`` (storer-local callers only) journals a job and returns its id at once;
the dispatcher thread builds and sends the bundle. ``notify`` (only from the address
of the tester the job was sent to, only with the job's key) pulls the named result
files from that tester's ``done/<jobid>/`` into the submission and answers only once
they are durable, so the tester may then delete them. ``status`` tells what waits
where and when it should finish. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from pathlib import Path
from typing import Any

from vmchecker import config, confparse, rpc
from vmchecker.contract import RESULT_JSON, JobState, ResultStatus, Stage, SubmissionStatus
from vmchecker.errors import (
    CallRefused,
    ConfigError,
    JobStateError,
    NotFound,
    ResultRefused,
    RpcError,
    TryLater,
    VmcheckerError,
)
from vmchecker.queueing import SUBMIT_ONLY, never_tested
from vmchecker.repo import Repository, check_account
from vmchecker.service import Service
from vmchecker.storer import in_doubt, landing, metrics, outcomes, timeline
from vmchecker.storer.courses import Course, Courses, resolve_addresses, with_daemon_address
from vmchecker.storer.dispatcher import Dispatcher
from vmchecker.storer.journal import Job, Journal, check_key
from vmchecker.storer.recheck import Rechecker
from vmchecker.storer.rpcserver import REQUEST_DEADLINE, RestrictedServer, anyone, loopback_or
from vmchecker.storer.tester_keys import TesterKeys
from vmchecker.storer.transport import CONNECT_TIMEOUT, TesterLink

log = logging.getLogger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with a clear error."""
    try:
        return confparse.parse_host_port(value)
    except ValueError as exc:
        raise VmcheckerError(f"bad listen address: {exc}") from None


class StorerDaemon(Service):
    """The daemon process; ``serve`` runs the XML-RPC server until asked to stop."""

    name = "vmchecker-storer-daemon"

    def __init__(self, global_config: Path | str | None = None, *, listen: str | None = None,
                 state_dir: Path | str | None = None, poll: float = 2.0, pid_file: Path | str | None = None,
                 saved_sweep: float = 300.0, once: bool = False, rpc_deadline: float = REQUEST_DEADLINE,
                 metrics_listen: str | None = None):
        """``once``: drain and return (``--once``); see :meth:`serve`. ``rpc_deadline``: seconds
        a caller has to send its whole request (tests make it short). ``metrics_listen``:
        where to serve metrics instead of the global file's ``daemon.metrics_listen``."""
        super().__init__(pid_file=pid_file, once=once)
        glob = config.load_global(global_config)
        self.global_path = glob.path
        self.listen = parse_listen(listen or glob.daemon.listen)
        self.state_dir = Path(state_dir or glob.daemon.state)
        self.metrics_listen = glob.daemon.metrics_listen if metrics_listen is None else metrics_listen
        if self.metrics_listen:
            parse_listen(self.metrics_listen)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.pid_file:  # before the journal and the port: a second copy says so plainly
            self.pid_file.acquire()
        self.tester_keys = TesterKeys(self.state_dir)
        self.journal = Journal(self.state_dir / "journal.db")
        # bound first: its port is in the courses' notify URL
        self.server = RestrictedServer(self.listen, request_deadline=rpc_deadline)
        self.courses = Courses(self.global_path, self.journal, listen=(self.listen[0], self.server.port))
        try:
            self._check_addresses()
        except VmcheckerError:
            self.server.server_close()
            self.journal.close()
            raise
        self.dispatcher = Dispatcher(self.journal, self.courses, self.state_dir / "bundles", poll=poll,
                                     sweep=self.queue_saved_submissions, sweep_every=saved_sweep,
                                     tester_keys=self.tester_keys)
        self.landing = landing.Landing(self.journal, self.dispatcher)
        self.rechecker = Rechecker(self.journal, self.courses, self.dispatcher, self.landing)
        self.courses.on_recovered = self._tester_answers
        self._local_rule = loopback_or(self._storer_addresses)
        self.server.register(rpc.QUEUE_TASK, self.queue_task, self.is_local_caller)
        self.server.register(rpc.STATUS, self.status, self.is_local_caller)
        self.server.register(rpc.NOTIFY, self.notify, anyone)  # checks the caller per job
        self.server.register(rpc.TESTER_BACK, self.tester_back, anyone)  # checks the caller per tester
        self.server.register(rpc.TIMELINES, self.timelines, self.is_local_caller)
        self._queue_lock = threading.Lock()

    def is_local_caller(self, address: str) -> bool:
        """Callers on the storer: loopback, the daemon's own listen address (a local
        process that connects to it comes from it), and each course's queue_task_from."""
        return self._local_rule(address)

    def _storer_addresses(self) -> list[str]:
        """Every address of the listen host, and each usable course's queue_task_from
        (read at each call: an edit of a course's config needs no restart)."""
        allowed = sorted(resolve_addresses(self.listen[0]))
        for course_id in self.courses.ids():
            try:
                allowed += self.courses.get(course_id).config.storer.queue_task_from
            except VmcheckerError as exc:
                log.error("course %s is unusable: %s", course_id, exc.message)
        return allowed

    @property
    def port(self) -> int:
        return self.server.port

    def _check_addresses(self) -> None:
        """Refuse to start while a course's ``storer.daemon`` sends testers elsewhere than
        this daemon (one address, written once: the global file's ``daemon.listen``). A
        course that does not load at all is reported as it is used, as before."""
        glob = config.load_global(self.global_path)
        for _course_id, path in sorted(glob.courses.items()):
            try:
                cfg = config.load_course(path)
            except (ConfigError, NotFound, OSError):
                continue
            with_daemon_address(cfg, self.courses.listen or self.listen, self.global_path)

    def check_testers(self, wait: float = CONNECT_TIMEOUT + 2) -> None:
        """Reach every tester of every usable course once, all at the same time (for at
        most ``wait`` seconds). A tester whose own name or slots disagree with its course's
        stops the start, with both values; one that cannot be reached is logged with the
        reason (``vmchecker-status`` shows it too) and is tried again when a job needs it."""
        links: list[TesterLink] = []
        for course_id in self.courses.ids():
            try:
                course = self.courses.get(course_id)
            except VmcheckerError:
                continue  # logged, and in status(), when used
            links += [course.link(name) for name in sorted(course.config.testers)]
        threads = [threading.Thread(target=_probe, args=(link,), name=f"probe:{link.name}", daemon=True)
                   for link in links]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        refused = [link.mismatch for link in links if link.mismatch]
        if refused:
            raise VmcheckerError("refusing to start: " + "\n".join(refused))

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> int:
        """Queue what was left saved, then serve XML-RPC and dispatch until stopped.

        With ``once`` (a drain, for tests and scripts), the daemon stops by itself as
        soon as the journal holds no job queued or sent: every job present at the start,
        or queued meanwhile, has then ended in done or error. It answers notify,
        queue_task and status meanwhile; a job queued as it stops waits for the next start.

        First, every tester is reached once (:meth:`check_testers`) and every send a killed
        daemon left in doubt is settled on its tester (:mod:`vmchecker.storer.in_doubt`)."""
        try:
            self.check_testers()
        except VmcheckerError:
            self.server.server_close()
            self.courses.close()
            self.journal.close()
            raise
        in_doubt.resolve_all(self.journal, self.courses)
        exporter = metrics.serve(self.metrics_listen, self.journal, self.courses)
        self.queue_saved_submissions()
        dispatcher = threading.Thread(target=self._dispatch_loop, name="dispatcher", daemon=True)
        server = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="xmlrpc", daemon=True)
        rechecker = threading.Thread(target=self.rechecker.loop, args=(self.stop,), name="rechecker", daemon=True)
        dispatcher.start()
        server.start()
        rechecker.start()
        log.info("storer daemon listening on %s:%d, state in %s%s", *self.listen, self.state_dir,
                 ", until no job is queued or sent" if self.once else "")
        self.stop.wait()
        self.server.shutdown()
        self.dispatcher.wake.set()
        self.rechecker.wake.set()
        dispatcher.join(30)
        self.dispatcher.close(30)   # the sends under way; those not started stay queued
        rechecker.join(30)
        self.rechecker.join_workers(30)
        if exporter is not None:
            exporter.close()
        self.server.server_close()
        self.courses.close()
        self.journal.close()
        return 0

    def _dispatch_loop(self) -> None:
        try:
            self.dispatcher.loop(self.stop, drain=self.once)
        finally:
            if self.once:
                self.request_stop("no job queued or sent")

    def queue_saved_submissions(self) -> int:
        """Queue every course's current submissions still in status ``saved`` (but those
        of ``submit_only`` assignments, which wait for a grader, never for a tester)."""
        queued = 0
        for course_id in self.courses.ids():
            try:
                course = self.courses.get(course_id)
                subs = [s for s in Repository(course.config).iter_current()
                        if s.status() is SubmissionStatus.SAVED and not never_tested(course.config, s.assignment)]
            except VmcheckerError as exc:
                log.error("course %s: cannot look for saved submissions: %s", course_id, exc.message)
                continue
            for sub in subs:
                try:
                    self._queue(course_id, sub.assignment, sub.account, sub.name)
                    queued += 1
                except VmcheckerError as exc:
                    log.error("cannot queue %s: %s", sub.path, exc.message)
        if queued:
            log.info("queued %d submission(s) left saved", queued)
        return queued

    # ------------------------------------------------------------------ queue_task

    def queue_task(self, caller: str, course: Any, assignment: Any, account: Any, submission: Any) -> str:
        """Journal a job for a saved submission and return its id (at once)."""
        for name, value in (("course", course), ("assignment", assignment), ("account", account),
                            ("submission", submission)):
            if not isinstance(value, str) or not value or len(value) > 128:
                raise CallRefused(f"bad {name} {value!r}")
        return self._queue(course, assignment, account, submission)

    def _queue(self, course_id: str, assignment: str, account: str, submission: str) -> str:
        course = self.courses.get(course_id)
        check_account(account)
        if never_tested(course.config, assignment):
            raise CallRefused(SUBMIT_ONLY.format(assignment=assignment))
        sub = Repository(course.config).submission(assignment, account, submission)
        with self._queue_lock:  # one waiting job per submission
            active = self.journal.find_active(course_id, assignment, account, sub.name)
            if active is not None and active.state is JobState.QUEUED:
                return active.id
            status = sub.status()
            if status is not SubmissionStatus.SAVED:
                if active is not None:
                    return active.id  # being tested now
                raise CallRefused(f"{course_id}/{assignment}/{account}/{sub.name} is already {status}:"
                              " recheck it (vmchecker-resubmit) to test it again")
            job = self.journal.enqueue(course_id, assignment, account, sub.name,
                                       course.config.assignment(assignment).machine, stored=timeline.stored_at(sub))
        # Outside the lock, so calls for other submissions proceed meanwhile; a second
        # call for this one finds the queued job above.
        outcomes.set_status(course, job, SubmissionStatus.QUEUED, (SubmissionStatus.SAVED,), claim=True, tester="")
        self.dispatcher.wake.set()
        return job.id

    # ------------------------------------------------------------------ notify

    def notify(self, caller: str, job_id: Any, key: Any, status: Any, files: Any, stats: Any) -> bool:
        """A tester says a job's results are in its ``done/<job_id>/``: pull them."""
        received = time.time()
        try:
            request = rpc.NotifyRequest.validate(job_id, key, status, files, stats)
        except RpcError as exc:
            raise CallRefused(f"bad notify: {exc.message}") from None
        job = self.journal.find(request.job_id)
        if job is None:
            raise CallRefused(f"notify for unknown job {request.job_id!r}")
        if not check_key(job, request.key):
            raise CallRefused(f"notify for job {job.id} with a wrong key")
        if job.state is JobState.DONE:
            self._check_caller(job, caller)
            return True  # a repeat after a lost answer: already landed
        if job.state is not JobState.SENT:
            raise CallRefused(f"job {job.id} is {job.state.value}, not waiting for a notify")
        course = self._check_caller(job, caller)
        if request.status != ResultStatus.ERROR and RESULT_JSON not in request.files:
            # No results to weigh: never final. Refused (the job stays sent, and is resent
            # after its deadline), so a caller who only has the key cannot end it empty.
            log.warning("job %s: a %s notify from %s names no %s; refused", job.id, request.status, job.tester,
                        RESULT_JSON)
            raise CallRefused(f"notify for job {job.id}: a {request.status} notify must name {RESULT_JSON}")
        try:
            self.landing.accept(course, job.id, job.tester or "", request.status, request.files,
                                landing.evaluation_seconds(request.stats),
                                stages={**timeline.from_stats(request.stats), Stage.NOTIFY_RECEIVED: received})
        except JobStateError as exc:
            raise CallRefused(exc.message) from None
        except ResultRefused as exc:
            raise CallRefused(exc.message) from None
        except VmcheckerError as exc:
            log.warning("job %s: could not pull results from %s: %s", job.id, job.tester, exc.message)
            raise TryLater(f"could not pull the results yet: {exc.message}") from None
        return True

    # ------------------------------------------------------------------ timelines

    def timelines(self, caller: str, job_ids: Any) -> dict[str, Any]:
        """When each stage of each job of ``job_ids`` happened (``vmchecker-status --job``,
        the web's grader view); jobs the journal does not know are left out."""
        try:
            ids = rpc.check_job_ids(job_ids)
        except RpcError as exc:
            raise CallRefused(f"bad timelines: {exc.message}") from None
        return timeline.answer(self.journal, ids)

    # ------------------------------------------------------------------ a tester is back

    def tester_back(self, caller: str, course: Any, tester: Any, key: Any) -> bool:
        """A tester's queue manager restarted: look at once at every job sent there and not
        final (:mod:`vmchecker.storer.recheck`). Only from that tester's address and with
        its own key (:mod:`vmchecker.storer.tester_keys`); idempotent and cheap: it only
        asks for a recheck, which runs at most once per few seconds per tester."""
        try:
            request = rpc.BackRequest.validate(course, tester, key)
        except RpcError as exc:
            raise CallRefused(f"bad tester_back: {exc.message}") from None
        try:
            settings = self.courses.get(request.course).config.testers.get(request.tester)
        except VmcheckerError:
            settings = None
        if settings is None:
            raise CallRefused(f"tester_back for {request.course}/{request.tester}: no such course or tester")
        if ipaddress.ip_address(caller).compressed not in resolve_addresses(settings.host):
            raise CallRefused(f"tester_back for {request.course}/{request.tester} from {caller}, but that tester"
                              f" is {settings.host}")
        if not self.tester_keys.check(request.course, request.tester, request.key):
            raise CallRefused(f"tester_back for {request.course}/{request.tester} with a wrong key")
        self.rechecker.request(request.course, request.tester, "its queue manager says it is back")
        return True

    def _tester_answers(self, course: str, tester: str) -> None:
        """A tester's link succeeded after failing: it is back from an outage."""
        self.rechecker.request(course, tester, "it answers again")

    def _check_caller(self, job: Job, caller: str):
        course = self.courses.get(job.course)
        tester = course.config.testers.get(job.tester or "")
        if tester is None:
            raise CallRefused(f"job {job.id} was sent to tester {job.tester!r}, which the course no longer has")
        allowed = resolve_addresses(tester.host)
        if ipaddress.ip_address(caller).compressed not in allowed:
            raise CallRefused(f"notify for job {job.id} from {caller}, but it was sent to {job.tester}"
                          f" ({tester.host})")
        return course

    # ------------------------------------------------------------------ status

    def status(self, caller: str) -> dict[str, Any]:
        """Every waiting and running job with its tester and estimated finish; tester
        health; and, under ``errors``, each course the daemon cannot use now with the
        reason (its jobs are listed without an estimate, its testers not at all), so a
        broken config shows where the sysadmin looks, not only in the log."""
        now = time.time()
        active = self.journal.active()
        usable, errors = self._usable_courses([job.course for job in active])
        jobs = []
        position: dict[str, int] = {}
        for job in active:
            entry: dict[str, Any] = {
                "job_id": job.id, "course": job.course, "assignment": job.assignment, "account": job.account,
                "submission": job.submission, "state": job.state.value, "tester": job.tester or "",
                "attempts": job.attempts, "queued_at": job.created, "estimated_finish": None, "position": 0,
            }
            course = usable.get(job.course)
            if course is not None:  # else the course is in ``errors``
                _estimate(entry, job, course, position, now)
            jobs.append(entry)
        testers = []
        for course in usable.values():
            for state in course.scheduler.testers():
                link = course.links.get(state.name)
                testers.append({
                    "course": course.id, "tester": state.name, "slots": state.slots, "healthy": state.healthy,
                    "in_flight": len(state.in_flight), "failures": state.failures,
                    "last_failure": state.last_failure_reason, "sent": state.sent_total, "done": state.done_total,
                    "failed": state.failed_total,
                    "reachable": None if link is None else link.health()["ok"],
                    "link_error": (link.last_error or "") if link is not None else "",
                })
        counts = {s.value: n for s, n in self.journal.counts().items()}
        return {"now": now, "jobs": jobs, "testers": testers, "counts": counts, "errors": errors}

    def _usable_courses(self, also: list[str]) -> tuple[dict[str, Course], list[dict[str, str]]]:
        """Every registered course (and each of ``also``, the courses of active jobs)
        that loads, by id; and one ``{"course", "error"}`` for each that does not (course
        "" for the global file itself), each also logged."""
        usable: dict[str, Course] = {}
        errors: list[dict[str, str]] = []
        try:
            ids = self.courses.ids()
        except VmcheckerError as exc:
            log.error("status: cannot read the global config: %s", exc.message)
            return usable, [{"course": "", "error": exc.message}]
        for course_id in sorted(set(ids) | set(also)):
            try:
                usable[course_id] = self.courses.get(course_id)
            except VmcheckerError as exc:
                log.error("status: course %s is unusable: %s", course_id, exc.message)
                errors.append({"course": course_id, "error": exc.message})
        return usable, errors


def _probe(link: TesterLink) -> None:
    """Reach one tester at start-up; log why not (a disagreement is the caller's to raise)."""
    try:
        link.probe()
        log.info("%s answers: its queue folder is writable", link.where)
    except VmcheckerError as exc:
        if not link.mismatch:
            log.warning("%s", exc.message)


def _estimate(entry: dict[str, Any], job: Job, course: Course, position: dict[str, int], now: float) -> None:
    """Fill in a status entry's ``estimated_finish`` (and a queued job's ``position``
    among those waiting for its machine)."""
    try:
        if job.state is JobState.SENT and job.tester:
            entry["estimated_finish"] = (job.sent or now) + course.scheduler.estimate(job.tester, job.assignment, now)
        else:
            position[job.machine] = position.get(job.machine, 0) + 1
            entry["position"] = position[job.machine]
            best = course.scheduler.select(job.assignment, job.machine, now=now)
            if best:
                entry["estimated_finish"] = now + course.scheduler.expected_finish(
                    best, job.assignment, now) * position[job.machine]
    except VmcheckerError:
        pass  # a tester or assignment the course's config no longer has: no estimate
