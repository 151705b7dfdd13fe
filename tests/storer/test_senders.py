"""Each tester has its own sender: a send that hangs holds up only the jobs picked for its
tester, and the jobs waiting behind a send its tester failed go back to be picked again.

The journal, the repository, the scheduler and the bundles are real; only the upload is a
fake (a subclass of the real link whose upload waits on a barrier the test releases). The
dispatcher's pass is run as its loop runs it (``_pass``: the sends go on after it); the
real sshd version of the first test is tests/storer/test_no_waiting.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.storer import test_dispatcher as dispatcher_tests
from tests.util import wait_for, write_course
from vmchecker.contract import JobState
from vmchecker.errors import TransportError
from vmchecker.storer import transport
from vmchecker.storer.courses import Courses
from vmchecker.storer.dispatcher import Dispatcher
from vmchecker.storer.journal import Journal


class GatedLink(transport.TesterLink):
    """The real link but for the upload: it waits for ``gate`` (when set up), then records
    the bundle or raises ``error``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.error: BaseException | None = None
        self.sent: list[str] = []

    def send_bundle(self, local_zip: Path | str, queue_dir: str, name: str) -> str:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never released the upload"
        if self.error is not None:
            raise self.error
        self.sent.append(name)
        return f"{queue_dir}/{name}"


class Setup(dispatcher_tests.Setup):
    """The dispatcher tests' set-up (queue, in_flight) with several testers, each behind a GatedLink."""

    def __init__(self, tmp_path: Path, testers: dict):
        write_course(tmp_path, extra={"storer": {"max_attempts": 3, "retry_delay": 0}, "testers": testers,
                                      "machines": {"linux": {"testers": sorted(testers)}}})
        self.journal = Journal(tmp_path / "journal.db")
        self.courses = Courses(tmp_path / "global.yaml", self.journal)
        self.dispatcher = Dispatcher(self.journal, self.courses, tmp_path / "bundles")
        self.course = self.courses.get("so")
        self.links = {name: GatedLink.from_config(self.course.config, name) for name in testers}
        self.course.links.update(self.links)



def _tester(port: int, slots: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "user": "vmchecker", "queue": "/srv/queue", "slots": slots}


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    made: list[Setup] = []

    def build(testers: dict) -> Setup:
        made.append(Setup(tmp_path, testers))
        return made[-1]

    yield build
    for s in made:
        for link in s.links.values():   # a failed test must not leave an upload waiting
            if link.gate is not None:
                link.gate.set()
        s.dispatcher.close(30)
        s.courses.close()
        s.journal.close()


def test_a_hanging_send_holds_up_no_other_testers_job(make) -> None:
    s = make({"t1": _tester(22, 1), "t2": _tester(2222, 1)})
    hanging = s.links["t1"]
    hanging.gate = threading.Event()
    first, second = s.queue("bob"), s.queue("carol")
    results = s.dispatcher._pass()
    assert len(results) == 2 and s.in_flight() == {first.id: "t1", second.id: "t2"}
    wait_for(lambda: s.links["t2"].sent, "the second job's bundle to go to t2")
    assert s.journal.get(second.id).state == JobState.SENT
    assert hanging.entered.is_set() and not results[0].done()   # still in the upload to t1
    hanging.gate.set()
    assert [r.result(60) for r in results] == [1, 1]


def test_jobs_waiting_behind_a_send_its_tester_failed_are_handed_back_untried(make) -> None:
    s = make({"t1": _tester(22, 3)})
    link = s.links["t1"]
    link.gate, link.error = threading.Event(), TransportError("t1: connection timed out")
    jobs = [s.queue(account) for account in ("bob", "carol", "dave")]
    results = s.dispatcher._pass()
    wait_for(link.entered.is_set, "the first upload to start")
    assert all(s.dispatcher._senders.holds(job.id) for job in jobs)
    assert s.dispatcher._pass() == []   # a job with a sender is not picked twice
    link.gate.set()
    assert [r.result(60) for r in results] == [0, 0, 0]
    first, *behind = (s.journal.get(job.id) for job in jobs)
    assert (first.state, first.attempts) == (JobState.QUEUED, 1)   # the attempt that failed
    assert [(j.state, j.attempts) for j in behind] == [(JobState.QUEUED, 0)] * 2   # never tried
    assert s.in_flight() == {} and link.sent == []
    assert not any(s.dispatcher._senders.holds(job.id) for job in jobs)
    assert s.dispatcher.wake.is_set()   # the dispatcher looks again at once
