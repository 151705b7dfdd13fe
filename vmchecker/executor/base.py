"""The generic executor: the whole flow of one job, written once (docs/ARCHITECTURE.md, "The executor").

:meth:`Host.test_submission` runs: host kernel-message commands -> revert + start ->
wait for the guest -> host commands -> copy in -> build (timeout) -> run (timeout) ->
copy out -> stop -> stop the host commands, inside ONE failure boundary: whatever goes
wrong becomes status ``error`` with a readable reason in ``vmchecker-stderr.vmr`` (the
traceback goes to the log), and the guest is cleaned up in every case.

A backend subclasses :class:`VM` (revert, start, wait_ready, copy_to, copy_from, run,
stop, cleanup) and :class:`Host` (get_vm, cleanup_leftovers); it never writes results.
A backend that keeps warm guests (:mod:`.warm`: made ready before the job, used by one
job) adds four primitives: ``VM.identity``, ``VM.park``, ``VM.detach``, ``VM.adopt``, and
``Host.drop_warm``; :meth:`Host.prepare_warm` and the claim in :meth:`Host.test_submission`
are written once here. A job on a warm guest skips revert and start, nothing else.
What a backend shares with the others lives beside this module: :mod:`.guest` (guest
names, leftovers, the guest user, programs run in the guest), :mod:`.payload` (what
enters the guest), :mod:`.interrupts` (critical sections a SIGTERM must not cut).

The steps keep the grading contract (:mod:`.payload` lays the guest folder out): the
build runs as the unprivileged student user; before the run every process it left is
killed; ``run.sh`` runs from the copy the bundle carried, as the trusted guest user, and
alone can write the grade file; results are copied out of a folder student code cannot
write. Where the machine has a ``check_script``, the check step runs after the guest is
gone, on this host, sandboxed (:mod:`.check`), and its grade file is the grade.

Results (``BUNDLE_DIR/results/``, written through :mod:`.results`): ``build-stdout.vmr``,
``build-stderr.vmr``, ``run-stdout.vmr``, ``run-stderr.vmr`` (``check-*.vmr``),
``vmchecker-stderr.vmr``, ``run-km.vmr`` when kernel-message commands are configured (by
:mod:`.hostcmds`), the ``*.vmr`` files ``run.sh`` wrote to its results folder
(``grade.vmr`` above all, the tests' grade lines) and ``result.json``, written last and
atomically: a killed executor never leaves a ``result.json`` that claims success. No
grade is decided here: the storer weighs ``grade.vmr`` with ``result.json``
(:mod:`vmchecker.evidence`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from vmchecker import bundle
from vmchecker.config import Machine
from vmchecker.contract import CHECK_SCRIPT, GRADE_VMR, GUEST_GRADE_VMR, RUN_KM, STEP_FILES, TESTS, ResultStatus, Stage
from vmchecker.errors import Interrupted, VmcheckerError
from vmchecker.executor import guest
from vmchecker.executor.hostcmds import PGIDS_SUFFIX, HostCommands
from vmchecker.executor.interrupts import uninterruptible
from vmchecker.executor.payload import GuestPaths, Payload, empty_payload, prepare_payload
from vmchecker.executor.results import CappedWriter, JobResult, ResultFiles, StepResult
from vmchecker.executor.warm import WarmGuest, WarmPool, capacity, fingerprint, new_record

log = logging.getLogger(__name__)


class VM:
    """One guest for one job. Backends override the primitives below; ``name`` is known
    before ``revert`` so host commands can be told which guest is theirs."""

    def __init__(self, machine: Machine, name: str):
        self.machine = machine
        self.name = name

    def revert(self) -> None:
        """Bring the guest to its clean state (an LXC clone, a KVM overlay...)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Return when commands can run in the guest; raise ExecutorError after ``timeout``."""
        raise NotImplementedError

    def copy_to(self, load: Payload, guest_dir: str) -> None:
        """Copy the payload into ``guest_dir`` (created) with the owners and modes it
        gives (:meth:`Payload.write`, GNU tar as root without ``--numeric-owner``), then
        run ``vmchecker-step prepare`` as root there; raise ExecutorError if it fails."""
        raise NotImplementedError

    def copy_from(self, guest_dir: str, dest: Path, cap: int) -> None:
        """Copy the regular ``*.vmr`` files at the top of ``guest_dir`` into the empty
        host folder ``dest``, each cut to at most ``cap + 1`` bytes while reading."""
        raise NotImplementedError

    def run(self, argv: list[str], cwd: str, timeout: float,
            stdout: CappedWriter, stderr: CappedWriter) -> StepResult:
        """Run ``argv`` in the guest as the guest user; on timeout kill every process
        the step started inside the guest (the student's too), and say so in the
        result."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self, failed: bool = False) -> str | None:
        """Remove whatever ``revert`` created; safe to call in any state, twice.

        ``failed`` says the job did not finish: a backend may then keep the guest for
        inspection and return a note for ``vmchecker-stderr.vmr`` (where it is)."""
        return None

    # -- warm guests (:mod:`.warm`); the defaults keep none

    def identity(self) -> str | None:
        """The identity of the base a guest made now would come from (a guest prepared
        from another is never used); None: this guest cannot be kept warm."""
        return None

    def park(self) -> None:
        """The guest is ready: leave it waiting for a job (before its record is published)."""

    def copy_in_empty(self) -> None:
        """The copy-in of a job without files (:func:`.payload.empty_payload`): the guest
        folder laid out with the course's programs, ``vmchecker-step prepare`` passed. A
        backend whose copy-in starts programs in the guest parks a warm guest with it, so
        its job's copy-in only adds the job's files."""
        with tempfile.TemporaryDirectory(prefix="vmck-park-") as tmp:
            self.copy_to(empty_payload(Path(tmp), self.machine), self.machine.guest_base_path.rstrip("/"))

    def detach(self) -> None:
        """Let go of a parked guest without destroying it (its record is published)."""

    def adopt(self, record: WarmGuest) -> bool:
        """Make the parked guest of ``record`` this job's, ready for ``wait_ready``; False
        (nothing changed) when it is not there as parked any more."""
        return False


class Host:
    """The tester side of a backend: makes VMs and runs jobs in them."""

    backend = "generic"

    def get_vm(self, machine: Machine, job_id: str) -> VM:
        raise NotImplementedError

    def cleanup_leftovers(self, machines: Iterable[Machine] = ()) -> list[str]:
        """Remove guests a killed executor left behind; return their names. ``machines``
        are the machines the caller knows of (a backend may keep state per machine)."""
        return []

    def drop_warm(self, record: WarmGuest) -> None:
        """Destroy the warm guest of ``record``, which no job will use (its base changed,
        or its queue manager stops); one already gone is fine."""

    def prepare_warm(self, machine: Machine, pool: WarmPool, owner: int) -> WarmGuest | None:
        """Make a guest of ``machine`` ready (revert, start, wait until it answers), park
        it and publish it in ``pool`` for the next job; the guest is named after ``owner``,
        the queue manager that keeps it. None when ``machine`` keeps no warm guests. A
        failure or an interruption leaves no guest behind."""
        if capacity(machine) == 0:
            return None
        guest.name_guests_for(owner)
        vm = self.get_vm(machine, "warm")
        published = False
        try:
            identity = vm.identity()
            if identity is None:
                return None
            vm.revert()
            vm.start()
            vm.wait_ready(machine.boot_timeout)
            vm.park()
            if vm.identity() != identity:
                log.warning("warm guest %s: the base of machine %r changed while it was prepared; dropped",
                            vm.name, machine.name)
                return None
            record = new_record(vm.name, machine, identity, owner)
            with uninterruptible():   # published means kept: a SIGTERM must not fall in between
                pool.publish(record)
                published = True
            return record
        finally:
            with uninterruptible():
                if published:
                    vm.detach()
                else:
                    vm.cleanup()

    def _claim_warm(self, vm: VM, pool: WarmPool) -> WarmGuest | None:
        """Adopt into ``vm`` a warm guest of its machine, prepared from the base as it is
        now, claimed for this job alone; None: the job runs cold. A record that does not
        fit is dropped (its guest destroyed) on the way."""
        if capacity(vm.machine) == 0:
            return None
        identity = vm.identity()
        if identity is None:
            return None
        while (record := pool.claim(fingerprint(vm.machine))) is not None:
            try:
                if record.identity == identity and vm.adopt(record):
                    log.info("job guest %s: the warm guest prepared at %.3f", vm.name, record.prepared_at)
                    return record
                reason = "its base changed" if record.identity != identity else "it is not there as parked"
            except VmcheckerError as exc:
                reason = exc.message
            log.warning("warm guest %s of machine %r is not used: %s; dropping it", record.name,
                        vm.machine.name, reason)
            try:
                self.drop_warm(record)
                pool.release(record)
            except (VmcheckerError, OSError) as exc:   # its claimed record stays for the queue manager
                log.error("dropping warm guest %s failed: %s", record.name, getattr(exc, "message", exc))
        return None

    def test_submission(self, bundle_dir: Path, machine: Machine, info: bundle.BundleInfo,
                        warm: WarmPool | None = None) -> JobResult:
        """Run one unpacked bundle and write its results; never raises for a job problem.
        With ``warm`` (the tester's pool), the job runs on a warm guest if one fits."""
        started = time.monotonic()
        bundle_dir = Path(bundle_dir)
        out = ResultFiles(bundle_dir, machine.limits.output_kb * 1024)
        job = JobResult(job_id=info.job_id, backend=machine.type,
                        started_at=dt.datetime.now().isoformat(timespec="seconds"))
        job.mark(Stage.EXECUTOR_STARTED)
        vm: VM | None = None
        claimed: WarmGuest | None = None
        kernel_messages, host_commands = (HostCommands(what, out.dir / f".{what}{PGIDS_SUFFIX}")
                                          for what in ("kernel_messages", "host_commands"))
        try:
            with tempfile.TemporaryDirectory(prefix=f"vmchecker-{info.job_id[:40]}-") as tmp:
                with job.phase("prepare"):
                    load = prepare_payload(bundle_dir, Path(tmp), machine)
                paths = GuestPaths(machine.guest_base_path.rstrip("/"))
                job.memory_mb = machine.limits.memory_mb
                vm = self.get_vm(machine, info.job_id)
                if warm is not None:
                    with job.phase("claim"):
                        claimed = self._claim_warm(vm, warm)
                job.warm_guest = claimed is not None
                job.vm = vm.name
                env = {"VMCHECKER_VM": vm.name, "VMCHECKER_JOB_ID": info.job_id, "VMCHECKER_BACKEND": machine.type}
                if machine.kernel_messages:
                    kernel_messages.start(machine.kernel_messages, env, out.writer(RUN_KM))
                if claimed is None:
                    with job.phase("revert"):
                        vm.revert()
                with job.phase("start"):
                    if claimed is None:
                        vm.start()
                    vm.wait_ready(machine.boot_timeout)
                job.mark(Stage.GUEST_READY)
                job.guest_start_s = job.phases["start"]
                host_commands.start(machine.host_commands, env, None)
                with job.phase("copy_in"):
                    vm.copy_to(load, paths.base)
                self._steps(vm, machine, info, out, job, paths)
                guest_out = Path(tmp) / "out"
                guest_out.mkdir()
                with job.phase("copy_out"):
                    vm.copy_from(paths.results, guest_out, out.cap)
                    out.take_guest_files(guest_out)
                with job.phase("stop"):
                    vm.stop()
                if machine.check_script:
                    with job.phase("check"):
                        self._check(bundle_dir, machine, info, out, job)
                job.status = ResultStatus.DONE
        except VmcheckerError as exc:
            log.error("job %s: %s", info.job_id, exc.message, exc_info=log.isEnabledFor(logging.DEBUG))
            job.message = exc.message
        except Exception as exc:  # the one failure boundary per job
            log.exception("job %s: unexpected error", info.job_id)
            job.message = f"internal error in the executor: {type(exc).__name__}: {exc}"
        except (Interrupted, KeyboardInterrupt) as exc:
            job.message = f"the executor was stopped ({exc or 'SIGINT'}) before the job finished"
            raise
        finally:
            with uninterruptible():   # a SIGTERM now must not cut the cleanup or result.json
                removed = self._finish(vm, out, job, (host_commands, kernel_messages), started)
                if claimed is not None and warm is not None and removed:   # else the queue manager retries
                    warm.release(claimed)
        return job

    def _steps(self, vm: VM, machine: Machine, info: bundle.BundleInfo, out: ResultFiles, job: JobResult,
               paths: GuestPaths) -> None:
        """build, then run if the build succeeded; each under the assignment's timeout,
        each started through vmchecker-step (which user, which environment)."""
        for name in ("build", "run"):
            stdout, stderr = (out.writer(n) for n in STEP_FILES[name])
            try:
                if name == "run" and not job.steps["build"].succeeded:
                    job.steps[name] = StepResult(attempted=False)
                    continue
                job.mark(Stage.step(name, "started"))
                step = vm.run(["/bin/sh", paths.step, name, machine.guest_shell], paths.job, info.timeout,
                              stdout, stderr)
                job.mark(Stage.step(name, "ended"))
                job.steps[name] = dataclasses.replace(step, timeout_s=info.timeout)
                if step.timed_out:
                    out.error(f"the {name} step did not finish within {info.timeout} s and was killed")
            finally:
                stdout.close()
                stderr.close()

    def _check(self, bundle_dir: Path, machine: Machine, info: bundle.BundleInfo, out: ResultFiles,
               job: JobResult) -> None:
        """The check step, on this host once the guest is gone: it reads the run's
        results (the guest's grade file among them: output, not the grade) and writes
        the grade lines, which replace the guest's."""
        if not job.steps["run"].succeeded:
            job.steps["check"] = StepResult(attempted=False)
            return
        from vmchecker.executor.check import run_check  # bubblewrap: only for machines with a check step

        guest_grade = out.dir / GRADE_VMR
        if guest_grade.is_file():
            guest_grade.replace(out.dir / GUEST_GRADE_VMR)
        stdout, stderr = (out.writer(n) for n in STEP_FILES["check"])
        try:
            job.mark(Stage.CHECK_STARTED)
            step = run_check(bundle_dir / CHECK_SCRIPT, out.dir, bundle_dir / TESTS, guest_grade,
                             info.timeout, machine.limits, stdout, stderr)
            job.mark(Stage.CHECK_ENDED)
        finally:
            stdout.close()
            stderr.close()
        job.steps["check"] = dataclasses.replace(step, timeout_s=info.timeout)

    def _finish(self, vm: VM | None, out: ResultFiles, job: JobResult,
                commands: tuple[HostCommands, ...], started: float) -> bool:
        """Always: stop host commands, remove the guest, write the results. False if
        removing the guest failed."""
        for c in commands:
            try:
                c.stop()
            except OSError as exc:
                log.warning("job %s: stopping %s commands: %s", job.job_id, c.what, exc)
        removed = True
        if vm is not None:
            try:
                with job.phase("cleanup"):
                    note = vm.cleanup(failed=job.status != ResultStatus.DONE)
                if note:
                    out.error(note)
            except Exception as exc:  # the job's results stand; the leftover is logged
                log.exception("job %s: cleaning up guest %s failed", job.job_id, vm.name)
                out.error(f"cleaning up guest {vm.name} failed: {exc}")
                removed = False
        if job.message:
            out.error(job.message)
        job.total_s = round(time.monotonic() - started, 3)
        job.mark(Stage.EXECUTOR_ENDED)
        out.finish(job)
        log.info("job %s: %s in %.3f s%s", job.job_id, job.status, job.total_s,
                 " (warm guest)" if job.warm_guest else "")
        return removed
