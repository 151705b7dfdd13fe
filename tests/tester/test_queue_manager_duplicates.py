"""A second bundle of a job the tester already holds is the same job: it never runs
twice and the first is never lost. A storer that died between its upload and its
journal's confirmation may send a job again; the tester answers with what it has."""

from __future__ import annotations

import os
import shutil

from tests.tester.helpers import KEY, RecordingStorer, make_bundle, make_tester
from tests.tester.test_queue_manager import Background, assert_finished, cleanups, no_leftover_processes, qm
from tests.util import free_port, wait_for
from vmchecker.tester.notifier import Journal

__all__ = ["cleanups", "no_leftover_processes"]   # the autouse fixtures apply here too

SLOW = 300.0   # a notify retry delay no test waits out


def test_a_resent_bundle_of_a_done_job_is_dropped_and_its_notification_sent_at_once(tmp_path):
    port = free_port()
    cfg = make_tester(tmp_path / "tester", storer_daemon=f"http://127.0.0.1:{port}/")
    order = tmp_path / "order.log"
    make_bundle(cfg.queue_dir, "j1", {"log": str(order)})
    qm(cfg, notify_base_delay=SLOW, notify_max_delay=SLOW).run()   # ran; the storer is away
    journal = Journal(cfg.state_dir / "notify")
    assert [p.job_id for p in journal.load_all()] == ["j1"] and journal.load("j1").next_try > 0
    make_bundle(cfg.queue_dir, "j1", {"log": str(order)})   # the storer sends it again
    with RecordingStorer(port) as storer:
        with Background(qm(cfg, once=False, notify_base_delay=SLOW, notify_max_delay=SLOW)):
            wait_for(lambda: storer.calls, "the notification to be sent at once", timeout=10)
            wait_for(lambda: journal.load_all() == [], "the notification to be answered")
    assert order.read_text().split() == ["j1"], "a job the tester holds must not run twice"
    assert [c[:3] for c in storer.calls] == [("j1", KEY, "done")]
    assert_finished(cfg, "j1", "done")   # the first run's results, and no bundle left


def test_a_second_bundle_of_a_running_job_is_dropped(tmp_path):
    cfg = make_tester(tmp_path / "tester", slots=2, storer_daemon=f"http://127.0.0.1:{free_port()}/")
    order = tmp_path / "order.log"
    first = make_bundle(cfg.queue_dir, "j1", {"log": str(order), "sleep": 1})
    os.utime(first, (1000, 1000))
    shutil.copy(first, cfg.queue_dir / "so_2-other_bob_j1.zip")   # same job id, other name
    qm(cfg).run()
    assert order.read_text().split() == ["j1"]
    assert_finished(cfg, "j1", "done")
    assert not list(cfg.queue_dir.glob("*.zip"))
