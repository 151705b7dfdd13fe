"""The dispatcher gives a tester's slot back on every way a job can fail to go out.

A slot counted for a job that never went out makes the tester look busier than it is
and skews every later estimate, so each failure between the pick and the journal's
``sent`` is tried here and judged by what the scheduler itself reports. The journal,
the repository and the bundle are real; only the SSH link is a fake (a subclass of
the real one that overrides the upload).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import HELLO_C, make_zip, write_course
from vmchecker import bundle, submit
from vmchecker.contract import JobState, SubmissionStatus
from vmchecker.errors import TransportError
from vmchecker.repo import Repository
from vmchecker.storer import outcomes, transport
from vmchecker.storer.courses import Course, Courses
from vmchecker.storer.dispatcher import Dispatcher
from vmchecker.storer.journal import Job, Journal


class FakeLink(transport.TesterLink):
    """The real link but for the upload: it records the bundle, or raises ``error``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []
        self.error: BaseException | None = None

    def send_bundle(self, local_zip: Path | str, queue_dir: str, name: str) -> str:
        if self.error is not None:
            raise self.error
        self.sent.append(name)
        return f"{queue_dir}/{name}"


class Setup:
    def __init__(self, tmp_path: Path):
        write_course(tmp_path, extra={"storer": {"max_attempts": 3}})
        self.journal = Journal(tmp_path / "journal.db")
        self.courses = Courses(tmp_path / "global.yaml", self.journal)
        self.dispatcher = Dispatcher(self.journal, self.courses, tmp_path / "bundles")
        self.course: Course = self.courses.get("so")
        self.link = FakeLink.from_config(self.course.config, "t1")
        self.course.links["t1"] = self.link

    def queue(self, account: str = "bob") -> Job:
        """A saved submission queued as queue_task does it."""
        cfg = self.course.config
        archive = make_zip(cfg.root / f"{account}.zip", {"hello.c": HELLO_C})
        sub = submit.submit(cfg, "1-hello", account, archive, skip_time_checks=True)
        job = self.journal.enqueue("so", "1-hello", account, sub.name, "linux")
        outcomes.set_status(self.course, job, SubmissionStatus.QUEUED, (SubmissionStatus.SAVED,), claim=True,
                            tester="")
        return job

    def in_flight(self) -> dict[str, str]:
        return {job: t.name for t in self.course.scheduler.testers() for job in t.in_flight}

    def failures(self) -> int:
        return sum(t.failures for t in self.course.scheduler.testers())


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    s = Setup(tmp_path)
    yield s
    s.courses.close()
    s.journal.close()


def test_a_job_that_went_out_keeps_its_slot(setup: Setup) -> None:
    job = setup.queue()
    assert setup.dispatcher.run_once() == 1
    assert setup.in_flight() == {job.id: "t1"}
    assert setup.journal.get(job.id).state == JobState.SENT
    assert len(setup.link.sent) == 1
    assert not list((setup.dispatcher.bundles_dir).iterdir())  # the local bundle is gone once sent


# Each case breaks one step between the pick and the journal's "sent" (or the upload
# right after it) and says what the job becomes; none may leave the slot counted.

def _script_missing(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    (setup.course.config.root / "run.sh").unlink()


def _build_crashes(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the bundle builder")
    monkeypatch.setattr(bundle, "build_bundle", crash)


def _disk_full(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bundle, "build_bundle", full)


def _rechecked_meanwhile(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    sub = Repository(setup.course.config).submission("1-hello", job.account, job.submission)
    sub.update_info(job_id="20260101T000000-0123456789abcdef")


def _journal_refuses_sent(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = setup.journal

    def moved_meanwhile(job_id: str, *args, **kwargs) -> Job:  # another writer won the race
        journal.mark_error(job_id, "given up by someone else")
        return Journal.mark_sent(journal, job_id, *args, **kwargs)
    monkeypatch.setattr(journal, "mark_sent", moved_meanwhile)


def _status_write_crashes(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the status writer")
    monkeypatch.setattr(outcomes, "set_status", crash)


def _upload_fails(setup: Setup, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.link.error = TransportError("t1: connection refused")


@pytest.mark.parametrize("arrange, raises, state, failures", [
    (_script_missing, None, JobState.ERROR, 0),
    (_build_crashes, RuntimeError, JobState.QUEUED, 0),
    (_disk_full, None, JobState.ERROR, 0),
    (_rechecked_meanwhile, None, JobState.ERROR, 0),
    (_journal_refuses_sent, None, JobState.ERROR, 0),
    (_status_write_crashes, RuntimeError, JobState.QUEUED, 0),
    (_upload_fails, None, JobState.QUEUED, 1),  # the tester's failure: a penalty, a retry
], ids=lambda v: getattr(v, "__name__", None))
def test_no_failure_before_sent_leaves_a_slot_counted(setup: Setup, monkeypatch: pytest.MonkeyPatch, arrange,
                                                       raises, state, failures) -> None:
    job = setup.queue()
    arrange(setup, job, monkeypatch)
    if raises is None:
        assert setup.dispatcher.run_once() == 0
    else:  # a bug escapes the pass (the loop logs it); the slot must not stay counted
        with pytest.raises(raises):
            setup.dispatcher.run_once()
    assert setup.in_flight() == {}
    assert setup.journal.get(job.id).state == state
    assert setup.failures() == failures
    assert setup.link.sent == []
    assert not list(setup.dispatcher.bundles_dir.glob("*.zip"))


def test_a_crash_after_sent_leaves_the_job_to_the_overdue_sweep(setup: Setup) -> None:
    """Once the journal says sent, the slot belongs to the job until it ends."""
    job = setup.queue()
    setup.link.error = RuntimeError("a bug in the upload")
    with pytest.raises(RuntimeError):
        setup.dispatcher.run_once()
    assert setup.in_flight() == {job.id: "t1"}
    sent = setup.journal.get(job.id)
    assert sent.state == JobState.SENT
    for overdue in setup.journal.overdue(now=sent.deadline + 1):
        setup.dispatcher.fail(overdue, "no notification from the tester before the deadline", overdue.tester)
    assert setup.in_flight() == {}
    assert setup.journal.get(job.id).state == JobState.QUEUED


def test_slots_add_up_over_mixed_failures(setup: Setup) -> None:
    """Two jobs go out, one is refused: exactly the two that went out are counted."""
    sent = [setup.queue("bob"), setup.queue("carol")]
    refused = setup.queue("dave")
    _rechecked_meanwhile(setup, refused)
    assert setup.dispatcher.run_once() == 2
    assert setup.in_flight() == {j.id: "t1" for j in sent}
