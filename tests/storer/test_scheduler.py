"""The scheduler, driven with an explicit clock: the estimated-queue-time policy (and each
finding of bench/scheduler.py that changed it: slots, pairs never measured, penalties),
the fewest-jobs policy, and the switch between them."""

from __future__ import annotations

import functools
import heapq
import os
import threading
from pathlib import Path

import pytest

from tests.util import write_course
from vmchecker import config
from vmchecker.config import CourseConfig
from vmchecker.errors import ConfigError, NotFound
from vmchecker.storer.courses import Courses
from vmchecker.storer.estimates import Speeds
from vmchecker.storer.journal import Journal
from vmchecker.storer.scheduler import Estimate, Scheduler, notify_deadline
from vmchecker.storer.scheduler import TesterState as State  # not "Test*": pytest would collect it

A = "1-hello"
M = "linux"


def make(*testers: tuple[str, int], timeout: float = 100.0, **kwargs) -> Scheduler:
    states = [State(name, slots, frozenset({M})) for name, slots in testers]
    return Scheduler(states, {A: timeout, "2-big": 4 * timeout}, **kwargs)


def teach(s: Scheduler, tester: str, seconds: float, n: int = 1, assignment: str = A) -> None:
    for i in range(n):
        s.on_sent(tester, f"teach-{tester}-{i}", assignment, now=0.0)
        s.on_finished(tester, f"teach-{tester}-{i}", assignment, seconds)


# ---------------------------------------------------------------- running mean


def test_running_mean_is_the_plain_mean_within_the_window() -> None:
    samples = [10.0, 20.0, 60.0, 30.0, 5.0]
    e = Estimate(999.0)  # the prior is replaced by the first sample
    for n, x in enumerate(samples, start=1):
        e = e.add(x, window=20)
        assert e.mean == pytest.approx(sum(samples[:n]) / n)
        assert e.measured == pytest.approx(sum(samples[:n]) / n)
        assert e.count == e.measured_count == n


def test_running_mean_past_the_window_weighs_new_samples_one_in_window() -> None:
    e = Estimate(0.0)
    for _ in range(4):
        e = e.add(10.0, window=4)
    e = e.add(50.0, window=4)
    assert e.mean == pytest.approx(10.0 + (50.0 - 10.0) / 4)


def test_penalty_is_a_sample_of_the_mean_but_not_of_the_measured_time() -> None:
    e = Estimate(100.0).add(10.0).add(20.0)
    p = e.penalise(1000.0, now=500.0)
    assert p.mean == pytest.approx((10.0 + 20.0 + 1000.0) / 3)
    assert (p.measured, p.measured_count, p.count, p.penalised_at) == (15.0, 2, 3, 500.0)
    # the penalty part halves every half-life after the failure
    excess = p.mean - 15.0
    assert p.value(500.0, half_life=60.0, prior=100.0) == pytest.approx(p.mean)
    assert p.value(560.0, half_life=60.0, prior=100.0) == pytest.approx(15.0 + excess / 2)
    assert p.value(620.0, half_life=60.0, prior=100.0) == pytest.approx(15.0 + excess / 4)
    assert p.value(620.0, half_life=0.0, prior=100.0) == pytest.approx(p.mean)  # 0: never forgiven


def test_a_success_ends_the_penalty() -> None:
    """Penalties: a penalty stayed in the running mean after the tester did the job again,
    fading only by the clock; the first success after a failure now ends it."""
    e = Estimate(100.0).add(10.0).add(20.0).penalise(1000.0, now=500.0).penalise(1000.0, now=510.0)
    assert e.value(510.0, half_life=600.0, prior=100.0) > 300.0
    back = e.add(18.0)
    assert (back.mean, back.measured, back.penalised_at) == (pytest.approx(16.0), pytest.approx(16.0), None)
    assert back.count == back.measured_count == 3
    assert back.value(511.0, half_life=600.0, prior=100.0) == pytest.approx(16.0)
    # through the scheduler: the failed tester gets its jobs back at its first success
    s = make(("t1", 1), ("t2", 1), penalty_half_life=600.0)
    teach(s, "t1", 10.0)
    teach(s, "t2", 12.0)
    s.on_sent("t1", "j", A, now=0.0)
    s.on_failure("t1", "j", A, "cannot connect", now=0.0)
    assert s.select(A, M, now=60.0) == "t2"
    s.on_sent("t1", "probe", A, now=60.0)
    s.on_finished("t1", "probe", A, 10.0)
    assert s.estimate("t1", A, now=61.0) == pytest.approx(10.0)
    assert s.select(A, M, now=61.0) == "t1"


def test_a_pair_never_measured_borrows_from_the_pairs_measured() -> None:
    """Cold start, estimates per tester x assignment: a pair never measured sat at the
    timeout, so a fast tester never tried on an assignment never got it; now its guess is
    its slowness times the assignment's size, learnt from the other pairs."""
    s = make(("fast", 1), ("slow", 1))
    teach(s, "fast", 10.0)
    teach(s, "slow", 30.0)
    teach(s, "slow", 120.0, assignment="2-big")
    assert s.estimate("fast", "2-big", now=0.0) == pytest.approx(40.0)   # 120 x 10/30, not the timeout 400
    assert s.select("2-big", M, now=0.0) == "fast"
    # measured, a pair follows its own samples
    teach(s, "fast", 50.0, assignment="2-big")
    assert s.estimate("fast", "2-big", now=0.0) == pytest.approx(50.0)


def test_a_tester_never_measured_counts_as_an_average_one() -> None:
    """Cold start: a tester new to the course is tried (it is assumed as fast as the
    geometric mean of the others), not kept out by the timeout until the others are full."""
    s = make(("a", 1), ("b", 1), ("new", 1))
    teach(s, "a", 10.0)
    teach(s, "b", 40.0)
    assert s.estimate("new", A, now=0.0) == pytest.approx(20.0)
    assert s.select(A, M, exclude={"a"}, now=0.0) == "new"
    # an assignment measured nowhere keeps its timeout (or the configured guess)
    assert s.estimate("new", "2-big", now=0.0) == 400.0


def test_speeds_fit_a_product_of_tester_and_assignment() -> None:
    times = {("q1", "x"): 10.0, ("q1", "y"): 30.0, ("q2", "x"): 20.0}   # q2 is twice as slow, y three times x
    speeds = Speeds.fit(times)
    assert speeds.guess("q2", "y") == pytest.approx(60.0)
    assert speeds.guess("q1", "x") == pytest.approx(10.0)
    assert speeds.guess("q3", "x") == pytest.approx((10.0 * 20.0) ** 0.5)   # the average tester
    assert speeds.guess("q1", "z") is None
    assert Speeds.fit({}).guess("q1", "x") is None


def test_scheduler_estimate_starts_at_timeout_or_guess_then_follows_samples() -> None:
    s = make(("t1", 1), timeout=90.0, guesses={"2-big": 42.0})
    assert s.estimate("t1", A) == 90.0
    assert s.estimate("t1", "2-big") == 42.0
    teach(s, "t1", 12.0)
    teach(s, "t1", 18.0)
    assert s.estimate("t1", A) == pytest.approx(15.0)
    with pytest.raises(NotFound, match="no assignment 'nope'"):
        s.estimate("t1", "nope")
    with pytest.raises(NotFound, match="no tester 'tx'"):
        s.estimate("tx", A)


# ---------------------------------------------------------------- selection


def test_expected_finish_is_the_jobs_own_time_after_the_work_in_flight_over_slots() -> None:
    s = make(("t1", 2))
    teach(s, "t1", 10.0)
    teach(s, "t1", 40.0, assignment="2-big")
    assert s.expected_finish("t1", A, now=0.0) == pytest.approx(10.0)  # a free slot: at once
    s.on_sent("t1", "j1", A, now=0.0)
    assert s.expected_finish("t1", A, now=0.0) == pytest.approx(10.0)  # still one free
    s.on_sent("t1", "j2", "2-big", now=0.0)
    # every slot busy: the work in flight is shared by the slots, the job's own time is not
    assert s.expected_finish("t1", A, now=0.0) == pytest.approx((10.0 + 40.0) / 2 + 10.0)


def test_a_free_slot_starts_the_job_at_once() -> None:
    """Slots: the thesis's (in flight + own) / slots made a wide tester with a free slot
    look as busy as its running jobs; the job goes where it truly finishes first."""
    s = make(("wide", 4), ("narrow", 1))
    teach(s, "wide", 10.0)
    teach(s, "narrow", 15.0)
    for i in range(3):   # three long jobs running on wide, one slot still free
        s.on_sent("wide", f"long{i}", "2-big", now=0.0)
    teach(s, "wide", 40.0, assignment="2-big")
    assert s.expected_finish("wide", A, now=0.0) == pytest.approx(10.0)   # was (3*40 + 10) / 4
    assert s.select(A, M, now=0.0) == "wide"


def test_a_job_runs_in_one_slot() -> None:
    """Slots: a job's own time is not shared by the slots, so a wide but slow tester does
    not look faster at a long job than a narrow fast one."""
    s = make(("wide", 4), ("narrow", 1))
    teach(s, "wide", 40.0)
    teach(s, "narrow", 20.0)
    assert s.expected_finish("wide", A, now=0.0) == pytest.approx(40.0)   # was 40 / 4
    assert s.select(A, M, now=0.0) == "narrow"


def test_picks_the_least_loaded_by_estimate() -> None:
    s = make(("t1", 1), ("t2", 1))
    teach(s, "t1", 10.0)
    teach(s, "t2", 10.0)
    assert s.select(A, M, now=0.0) == "t1"  # tie: fewer in flight, then the name
    s.on_sent("t1", "j1", A, now=0.0)
    assert s.select(A, M, now=0.0) == "t2"
    s.on_sent("t2", "j2", A, now=0.0)
    s.on_sent("t2", "j3", A, now=0.0)
    assert s.select(A, M, now=0.0) == "t1"
    # the estimate, not the count, decides: t2's queue holds shorter jobs
    s2 = make(("t1", 1), ("t2", 1))
    teach(s2, "t1", 100.0)
    teach(s2, "t2", 10.0)
    for i in range(5):
        s2.on_sent("t2", f"short{i}", A, now=0.0)
    s2.on_sent("t1", "long", A, now=0.0)
    assert s2.select(A, M, now=0.0) == "t2"  # (5*10+10)/1 = 60 < (100+100)/1


def test_respects_slots() -> None:
    s = make(("wide", 4), ("narrow", 1))
    teach(s, "wide", 10.0)
    teach(s, "narrow", 10.0)
    picks = []
    for i in range(10):
        name = s.select(A, M, now=0.0)
        picks.append(name)
        s.on_sent(name, f"j{i}", A, now=0.0)
    # equal speed: work splits 4 to 1, as the slots do
    assert picks.count("wide") == 8 and picks.count("narrow") == 2


def test_only_testers_serving_the_machine_and_exclusion() -> None:
    states = [
        State("t1", 1, frozenset({M})),
        State("t2", 1, frozenset({M, "kvm"})),
        State("t3", 1, frozenset({"kvm"})),
    ]
    s = Scheduler(states, {A: 10.0})
    assert s.select(A, M, now=0.0) == "t1"
    assert s.select(A, M, exclude={"t1"}, now=0.0) == "t2"  # avoids the tester that failed the job
    assert s.select(A, "kvm", exclude={"t2"}, now=0.0) == "t3"
    # when every tester serving the machine failed the job, one of them still gets it
    assert s.select(A, M, exclude={"t1", "t2"}, now=0.0) == "t1"
    assert s.select(A, "vmware", now=0.0) is None


def run_stream(s: Scheduler, true_time: dict[str, float], jobs: int, gap: float,
               failing: tuple[str, float, float] | None = None) -> list[tuple[float, str]]:
    """A tiny simulation: a job every ``gap`` seconds, each tester running its queue
    in its slots for ``true_time[tester]`` per job. ``failing = (tester, start, end)``:
    sends to that tester in [start, end) fail at once. Returns (time, tester) picks."""
    slots = {t.name: t.slots for t in s.testers()}
    free: dict[str, list[float]] = {name: [0.0] * n for name, n in slots.items()}
    finishes: list[tuple[float, str, str]] = []
    picks: list[tuple[float, str]] = []
    for i in range(jobs):
        now = i * gap
        while finishes and finishes[0][0] <= now:
            _, tester, job = heapq.heappop(finishes)
            s.on_finished(tester, job, A, true_time[tester])
        job, exclude = f"j{i}", set()
        while True:
            tester = s.select(A, M, exclude, now=now)
            assert tester is not None
            picks.append((now, tester))
            s.on_sent(tester, job, A, now=now)
            if failing and tester == failing[0] and failing[1] <= now < failing[2]:
                s.on_failure(tester, job, A, "cannot connect", now=now)
                exclude.add(tester)
                continue
            start = max(heapq.heappop(free[tester]), now)
            heapq.heappush(free[tester], start + true_time[tester])
            heapq.heappush(finishes, (start + true_time[tester], tester, job))
            break
    return picks


def test_a_slower_tester_gets_fewer_jobs_over_a_stream() -> None:
    s = make(("fast", 2), ("slow", 2))
    picks = run_stream(s, {"fast": 10.0, "slow": 30.0}, jobs=400, gap=4.0)
    count = {name: sum(1 for _, t in picks if t == name) for name in ("fast", "slow")}
    assert count["fast"] > 2 * count["slow"] > 0
    assert s.estimate("fast", A) == pytest.approx(10.0)
    assert s.estimate("slow", A) == pytest.approx(30.0)


def test_a_failing_tester_gets_no_work_while_failing_and_work_returns_after() -> None:
    # the good tester alone cannot carry this load (10 s jobs every 4 s need 2.5 slots)
    s = make(("good", 2), ("flaky", 2), penalty_half_life=300.0)
    picks = run_stream(s, {"good": 10.0, "flaky": 10.0}, jobs=900, gap=4.0, failing=("flaky", 1000.0, 2000.0))

    def share(lo: float, hi: float) -> int:
        return sum(1 for now, t in picks if t == "flaky" and lo <= now < hi)

    assert share(0, 1000) > 100  # healthy: about half of the 250 jobs
    # failing: after the first failure, only a probe now and then as the penalty fades
    assert share(1000, 2000) <= 10
    assert s.testers()[0].failed_total == share(1000, 2000)
    # recovered: its first success ends the penalty, and it has its half at once
    assert share(2000, 2300) > 30
    flaky = {t.name: t for t in s.testers()}["flaky"]
    assert flaky.healthy and flaky.failures == 0


def test_failures_push_work_away_even_without_fading() -> None:
    s = make(("good", 2), ("bad", 2), penalty_half_life=0.0)
    teach(s, "good", 10.0)
    teach(s, "bad", 10.0)
    s.on_sent("bad", "j", A, now=0.0)
    s.on_failure("bad", "j", A, "upload failed", now=0.0)
    assert s.estimate("bad", A, now=1e9) == pytest.approx((10.0 + 10 * 100.0) / 2)
    for i in range(99):  # n*10/2 + 10 must reach (10 + 1000)/2 before the bad one gets a job
        assert s.select(A, M, now=1e9) == "good"
        s.on_sent("good", f"g{i}", A, now=0.0)
    assert s.select(A, M, now=1e9) == "bad"


def test_failure_state_and_penalty() -> None:
    s = make(("t1", 1), penalty_factor=3.0)
    s.on_sent("t1", "j", A, now=0.0)
    e = s.on_failure("t1", "j", A, "no notify before the deadline", now=50.0)
    assert e.mean == pytest.approx(300.0)  # 3 x timeout
    (state,) = s.testers()
    assert (state.healthy, state.failures, state.last_failure) == (False, 1, 50.0)
    assert state.last_failure_reason == "no notify before the deadline"
    assert state.in_flight == {}
    s.on_sent("t1", "k", A, now=60.0)
    s.on_finished("t1", "k", A, 5.0)
    assert s.testers()[0].healthy


# ---------------------------------------------------------------- deadlines, threads, persistence


def test_notify_deadline_counts_the_jobs_ahead() -> None:
    assert notify_deadline(1000.0, 90.0, 60.0) == 1000.0 + 2 * 90 + 60
    assert notify_deadline(1000.0, 90.0, 60.0, ahead=[90.0, 90.0], slots=2) == 1000.0 + 240 + 240
    s = make(("t1", 2), notify_margin=10.0)
    assert s.on_sent("t1", "a", A, now=0.0) == 210.0
    assert s.on_sent("t1", "b", A, now=0.0) == 210.0 + 210.0 / 2
    tester, deadline = s.assign("c", A, M, now=0.0)
    assert (tester, deadline) == ("t1", 210.0 + 420.0 / 2)
    assert s.assign("d", A, "vmware", now=0.0) is None


def test_a_reservation_gives_its_slot_back_unless_committed() -> None:
    s = make(("t1", 2))

    def in_flight() -> dict[str, str]:
        return dict(s.testers()[0].in_flight)

    with s.reserve("kept", A, M, now=0.0) as kept:
        assert (kept.tester, kept.deadline) == ("t1", 2 * 100.0 + 60.0)  # build + run + margin
        kept.commit()
    with s.reserve("left", A, M, now=0.0):
        assert in_flight() == {"kept": A, "left": A}
    with pytest.raises(RuntimeError), s.reserve("crashed", A, M, now=0.0):
        raise RuntimeError("a bug between the pick and the sending")
    assert in_flight() == {"kept": A}
    with pytest.raises(NotFound, match="no tester serves machine 'vmware'"):
        s.reserve("nowhere", A, "vmware")
    assert in_flight() == {"kept": A}


def test_assign_from_threads_counts_every_job_once() -> None:
    s = make(("t1", 2), ("t2", 3))
    out: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(50):
            tester, _ = s.assign(f"{n}-{i}", A, M)
            with lock:
                out.append(tester)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = {t.name: t for t in s.testers()}
    assert sum(len(t.in_flight) for t in states.values()) == 300
    assert len(states["t2"].in_flight) == out.count("t2")
    # equal estimates: the split follows the slots, 2 to 3
    assert len(states["t2"].in_flight) == 180


def test_estimates_persist_through_the_journal(tmp_path: Path, course: CourseConfig) -> None:
    with Journal(tmp_path / "journal.db") as journal:
        s = Scheduler.from_config(course, persist=functools.partial(journal.save_estimate, course.id))
        assert s.estimate("t1", "1-hello") == course.assignment("1-hello").timeout
        assert s.select("1-hello", "linux") == "t1"
        s.on_sent("t1", "j1", "1-hello", now=0.0)
        s.on_finished("t1", "j1", "1-hello", 7.0)
        s.on_sent("t1", "j2", "1-hello", now=0.0)
        s.on_failure("t1", "j2", "1-hello", "cannot connect", now=100.0)
        saved = s.estimates()
    with Journal(tmp_path / "journal.db") as journal:
        again = Scheduler.from_config(course, estimates=journal.load_estimates(course.id))
    assert again.estimates() == saved
    assert again.estimate("t1", "1-hello", now=100.0) == pytest.approx((7.0 + 10 * 90.0) / 2)
    assert s.penalty("1-hello") == course.storer.failure_penalty_factor * 90


# ---------------------------------------------------------------- the policy switch


def test_fewest_picks_the_tester_with_the_fewest_jobs_in_flight() -> None:
    """``fewest``, the original vmchecker's rule: the count of jobs sent and not notified
    decides, whatever the estimates say; ties go to the tester the course lists first."""
    s = make(("slow", 1), ("fast", 4), policy="fewest")
    teach(s, "slow", 100.0)
    teach(s, "fast", 1.0)
    assert s.select(A, M, now=0.0) == "slow"   # 0 and 0: the first listed
    s.on_sent("slow", "j1", A, now=0.0)
    assert s.select(A, M, now=0.0) == "fast"
    s.on_sent("fast", "j2", A, now=0.0)
    assert s.select(A, M, now=0.0) == "slow"   # 1 and 1: the first listed, slots ignored
    assert s.select(A, M, exclude={"slow"}, now=0.0) == "fast"
    assert s.select(A, "vmware", now=0.0) is None
    # the same state under the estimate policy: the fast tester
    e = make(("slow", 1), ("fast", 4))
    teach(e, "slow", 100.0)
    teach(e, "fast", 1.0)
    e.on_sent("slow", "j1", A, now=0.0)
    e.on_sent("fast", "j2", A, now=0.0)
    assert e.select(A, M, now=0.0) == "fast"
    with pytest.raises(ValueError, match="unknown scheduler 'fastest'"):
        make(("t1", 1), policy="fastest")


def test_the_course_config_chooses_the_policy(tmp_path: Path) -> None:
    path = write_course(tmp_path)
    assert config.load_course(path).storer.scheduler == "estimate"
    assert Scheduler.from_config(config.load_course(path)).policy == "estimate"
    path = write_course(tmp_path, extra={"storer": {"scheduler": "fewest"}})
    assert Scheduler.from_config(config.load_course(path)).policy == "fewest"
    path = write_course(tmp_path, extra={"storer": {"scheduler": "round-robin"}})
    with pytest.raises(ConfigError, match=r"storer\.scheduler: unknown scheduler 'round-robin'"
                                          r" \(known: estimate, fewest\)"):
        config.load_course(path)


def test_the_daemon_schedules_each_course_by_its_policy(tmp_path: Path) -> None:
    """The daemon's course registry builds each course's scheduler with the course's
    policy, and an edit of the switch takes effect at the next look, like any edit."""
    testers = {"t1": {"host": "192.0.2.1", "user": "u", "queue": "/q", "slots": 1},
               "t2": {"host": "192.0.2.2", "user": "u", "queue": "/q", "slots": 1}}
    write_course(tmp_path, extra={"storer": {"scheduler": "fewest"}, "testers": testers,
                                  "machines": {"linux": {"testers": ["t1", "t2"]}}})
    with Journal(tmp_path / "journal.db") as journal:
        journal.save_estimate("so", "t1", "1-hello", Estimate(100.0, 1, 100.0, 1))
        journal.save_estimate("so", "t2", "1-hello", Estimate(5.0, 1, 5.0, 1))
        courses = Courses(tmp_path / "global.yaml", journal)
        scheduler = courses.get("so").scheduler
        assert scheduler.policy == "fewest"
        assert scheduler.assign("j1", "1-hello", "linux", now=0.0)[0] == "t1"   # fewest: the first listed
        write_course(tmp_path, extra={"storer": {"scheduler": "estimate"}, "testers": testers,
                                      "machines": {"linux": {"testers": ["t1", "t2"]}}})
        path = tmp_path / "so" / "config.yaml"
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))   # a later edit
        scheduler = courses.get("so").scheduler
        assert scheduler.policy == "estimate"
        assert scheduler.assign("j2", "1-hello", "linux", now=0.0)[0] == "t2"   # the faster one
        courses.close()
