"""The words the storer, the tester and the executor share, each defined once.

A job crosses three processes and two machines; these names are how they agree. A
second definition anywhere else in the package is a bug (``tests/test_contract.py``
greps for them): import from here.

- **File names** of a submission folder, a bundle and a job's results.
- **Identifiers**: the patterns of a job id, an account name and the names the configs
  and the daemon's calls share (course, assignment, machine, tester).
- **Statuses**: where a *submission* is (:class:`SubmissionStatus`, written to its
  ``grade.vmr`` until graded), where a *job* is in the storer's journal
  (:class:`JobState`), and how a job *ended* on the tester (:class:`ResultStatus`, the
  ``status`` of ``result.json`` and of ``notify()``). They are three views of one job,
  kept apart because each has its own moves, but their words are the same where they mean
  the same thing (``done``, ``error``).
- **Stages** of a job's timeline (:class:`Stage`): the moments the storer's journal, the
  tester's ``result.json`` and its notification record, each on its own machine's clock.
"""

from __future__ import annotations

import enum
import re

# --------------------------------------------------------------------------- file names

ARCHIVE = "archive.zip"                    # the upload, exactly as sent (submission folder, bundle)
SUBMISSION_CONFIG = "submission-config.yaml"  # who, when, which machine (submission folder, bundle)
TESTS = "tests.zip"                        # the assignment's tests (bundle)
BUILD_SCRIPT = "build.sh"                  # the course's build step (bundle)
RUN_SCRIPT = "run.sh"                      # the course's run step (bundle)
BUNDLE_MEMBERS = (ARCHIVE, TESTS, BUILD_SCRIPT, RUN_SCRIPT, SUBMISSION_CONFIG)
CHECK_SCRIPT = "check.sh"                  # the course's check step, run on the tester (bundle,
                                           #   present exactly when the machine has a check_script)

GRADE_VMR = "grade.vmr"                    # the grade lines, or a status word until graded
RESULT_JSON = "result.json"                # the executor's account of the job, written last
VMCHECKER_STDERR = "vmchecker-stderr.vmr"  # the executor's (or the storer's) own errors
GUEST_GRADE_VMR = "guest-grade.vmr"      # with a check step: the guest's grade file, kept as output
RUN_KM = "run-km.vmr"                      # kernel messages of the run, where configured
STEP_FILES = {"build": ("build-stdout.vmr", "build-stderr.vmr"),
              "run": ("run-stdout.vmr", "run-stderr.vmr"),
              "check": ("check-stdout.vmr", "check-stderr.vmr")}
RESULT_SUFFIX = ".vmr"
TESTER_INFO = ".tester.json"               # a tester's own name and slots, in its queue/: written
                                           #   by its queue manager, checked by the storer
DONE_MARKER = ".complete"                  # in a tester's done/<job>/, written last: the results are
                                           #   complete (root's: the storer sees it listed, never reads it)

# --------------------------------------------------------------------------- identifiers

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # course, assignment, machine, tester ids

# --------------------------------------------------------------------------- statuses


class SubmissionStatus(enum.StrEnum):
    """Where a submission is on its way to a grade; stored as-is in ``grade.vmr``."""

    SAVED = "saved"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


# A submission whose grade.vmr says one of these waits for its test run (a submit_only
# one, never tested, waits for a grader instead).
WAITING_STATUSES = frozenset({SubmissionStatus.SAVED, SubmissionStatus.QUEUED, SubmissionStatus.RUNNING})


class JobState(enum.StrEnum):
    """Where a job is in the storer's journal; the value is what the journal stores."""

    QUEUED = "queued"
    SENT = "sent"
    DONE = "done"
    ERROR = "error"


class ResultStatus(enum.StrEnum):
    """How a job ended on the tester: ``result.json``'s status and ``notify()``'s."""

    DONE = "done"
    ERROR = "error"


# --------------------------------------------------------------------------- timeline


class Stage(enum.StrEnum):
    """A moment in a job's life, in the order they happen; the value is what the journal,
    ``result.json``'s ``timeline`` and a notification's stats (``STAGE_STAT_PREFIX`` + value)
    carry. Each is taken on the clock of the machine where it happens (:data:`TESTER_STAGES`
    on the tester's, the others on the storer's): the two clocks may differ."""

    STORED = "stored"                       # storer: the upload (or recheck) is stored, status saved
    QUEUED = "queued"                       # storer: the job is journaled
    DISPATCHED = "dispatched"               # storer: the scheduler chose a tester
    SENDING = "sending"                     # storer: bundle built, journaled sent; the upload starts
    ON_TESTER = "on_tester"                 # storer: the bundle is in the tester's queue (confirmed)
    RECEIVED = "received"                   # tester: the queue manager saw the bundle
    SLOT_TAKEN = "slot_taken"               # tester: a slot took the job (unpack, start the executor)
    EXECUTOR_STARTED = "executor_started"   # tester: the executor began the job
    GUEST_READY = "guest_ready"             # tester: the guest is reverted, started and answers
    BUILD_STARTED = "build_started"
    BUILD_ENDED = "build_ended"
    RUN_STARTED = "run_started"
    RUN_ENDED = "run_ended"
    CHECK_STARTED = "check_started"         # only where the machine has a check step
    CHECK_ENDED = "check_ended"
    EXECUTOR_ENDED = "executor_ended"       # tester: the guest is gone, result.json written
    RESULTS_DURABLE = "results_durable"     # tester: results committed in done/<job>/
    NOTIFIED = "notified"                   # tester: notify() sent to the storer
    NOTIFY_RECEIVED = "notify_received"     # storer: that notify() arrived
    RESULTS_FETCHED = "results_fetched"     # storer: the result files are in the submission
    GRADED = "graded"                       # storer: the final grade.vmr is written

    @classmethod
    def step(cls, name: str, edge: str) -> Stage:
        """The stage where a step (``build``, ``run``, ``check``) ``started`` or ``ended``."""
        return cls(f"{name}_{edge}")


TESTER_STAGES = frozenset({
    Stage.RECEIVED, Stage.SLOT_TAKEN, Stage.EXECUTOR_STARTED, Stage.GUEST_READY, Stage.BUILD_STARTED,
    Stage.BUILD_ENDED, Stage.RUN_STARTED, Stage.RUN_ENDED, Stage.CHECK_STARTED, Stage.CHECK_ENDED,
    Stage.EXECUTOR_ENDED, Stage.RESULTS_DURABLE, Stage.NOTIFIED,
})
STAGE_STAT_PREFIX = "at_"                  # a notification's stats carry each tester stage as at_<stage>
