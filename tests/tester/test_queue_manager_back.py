"""A queue manager that starts tells each storer daemon it knows that it is back, with the
tester's own key the daemon's bundles carry: the daemons of the bundles in its queue, and
of those it ran before (remembered in state/storers.json, root's alone: it holds keys).
The storer is a recording XML-RPC server; the jobs run in the fake executor."""

from __future__ import annotations

import json
import stat

from tests.tester.helpers import RecordingStorer, make_bundle, make_tester
from tests.tester.test_queue_manager import cleanups, no_leftover_processes, qm

__all__ = ["cleanups", "no_leftover_processes"]   # the autouse fixtures apply here too

TESTER_KEY = "k" * 43


def test_it_says_it_is_back_to_the_storer_of_its_bundles_and_remembers_it(tmp_path):
    with RecordingStorer() as storer:
        cfg = make_tester(tmp_path / "tester")
        make_bundle(cfg.queue_dir, "j1", {}, notify_url=storer.url, tester_key=TESTER_KEY)
        qm(cfg).run()   # --once: what is pending goes before it returns
        assert [c[:3] for c in storer.calls] == [("j1", "0123456789abcdef0123456789abcdef", "done")]
        assert storer.back_calls == [("so", "t1", TESTER_KEY)]
        remembered = cfg.state_dir / "storers.json"
        assert json.loads(remembered.read_text()) == {storer.url: {"so": TESTER_KEY}}
        assert stat.S_IMODE(remembered.stat().st_mode) == 0o600
        qm(cfg).run()   # nothing queued now: the storer it ran a bundle of still hears it
        assert storer.back_calls == [("so", "t1", TESTER_KEY)] * 2


def test_a_bundle_without_a_tester_key_names_no_storer_to_tell(tmp_path):
    with RecordingStorer() as storer:
        cfg = make_tester(tmp_path / "tester")
        make_bundle(cfg.queue_dir, "j1", {}, notify_url=storer.url)   # from a storer older than tester_back
        qm(cfg).run()
        assert len(storer.calls) == 1 and storer.back_calls == []
        assert not (cfg.state_dir / "storers.json").exists()
