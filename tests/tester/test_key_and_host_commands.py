"""The tester keeps job keys to root, runs only the host commands it accepted, escapes
file names in its log and removes old results.

A job's key is all it takes to end the job with a ``notify``: every file holding it
(the bundle, the unpacked ``submission-config.yaml``, the completion marker, a pending
notification) must be unreadable by other local users. The bundle's ``host_commands``
and ``kernel_messages`` run as root with a shell: the storer's word alone is not enough.
The stand-in executor (``fake_executor.py``) runs as a real subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from tests.tester.helpers import FAKE_COMMAND, make_bundle, make_tester
from tests.util import free_port
from vmchecker.tester import jobs, queue_manager, results
from vmchecker.tester.queue_manager import QueueManager


@pytest.fixture(autouse=True)
def no_backend_cleanup(monkeypatch):
    monkeypatch.setattr(queue_manager, "cleanup_backend", lambda machine_type, machines=(): None)


def _qm(cfg) -> QueueManager:
    return QueueManager(cfg, once=True, _executor_command=FAKE_COMMAND, notify_timeout=1, notify_base_delay=0.05,
                        notify_max_delay=0.1, kill_grace=1)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_key_bearing_files_are_root_only(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    modes = tmp_path / "modes.json"
    # nobody listens there: the notification stays pending, as while a storer is down
    make_bundle(cfg.queue_dir, "j1", {"modes": str(modes)}, notify_url=f"http://127.0.0.1:{free_port()}/")
    before = os.umask(0o022)
    try:
        assert _qm(cfg).run() == 0
        assert os.umask(0o022) == 0o022, "the queue manager restores the umask it changed"
    finally:
        os.umask(before)

    seen = json.loads(modes.read_text())
    assert seen["config"] == 0o600                      # the unpacked submission-config.yaml
    assert seen["umask"] == 0o022                       # the executor keeps the usual umask
    job = cfg.done_dir / "j1"
    assert _mode(job / results.MARKER) == 0o600         # the completion marker holds the key
    assert _mode(job) == 0o755 and _mode(job / "result.json") == 0o644   # the storer's account reads these
    pending = cfg.state_dir / "notify" / "j1.json"
    assert pending.is_file() and _mode(pending) == 0o600
    assert _mode(cfg.state_dir) == 0o700 and _mode(cfg.state_dir / "notify") == 0o700
    assert _mode(cfg.work_dir) == 0o700
    assert _mode(cfg.done_dir) == 0o755


def test_a_queued_bundle_is_made_root_only_when_its_job_starts(tmp_path, monkeypatch):
    cfg = make_tester(tmp_path / "tester")
    bundle = make_bundle(cfg.queue_dir, "j1", {})
    bundle.chmod(0o644)   # as an older storer uploaded it
    seen = []
    real_unpack = jobs.bundle.unpack_bundle

    def spy(path, dest):
        seen.append(_mode(path))
        return real_unpack(path, dest)

    monkeypatch.setattr(jobs.bundle, "unpack_bundle", spy)
    _qm(cfg).run()
    assert seen == [0o600]


# --------------------------------------------------------------------------- host commands


def _error(cfg, job_id):
    return json.loads((cfg.done_dir / job_id / "result.json").read_text())


@pytest.mark.parametrize("key", ["host_commands", "kernel_messages"])
def test_host_commands_the_tester_did_not_accept_fail_the_job_before_it_runs(tmp_path, key):
    cfg = make_tester(tmp_path / "tester", accept_host_commands=["exec tail -F /var/log/other"])
    ran = tmp_path / "ran.log"
    make_bundle(cfg.queue_dir, "j1", {"log": str(ran)}, machine_keys={key: ["touch /tmp/pwned"]})
    _qm(cfg).run()
    result = _error(cfg, "j1")
    assert result["status"] == "error"
    assert "'touch /tmp/pwned' is not accepted by this tester" in result["message"]
    assert "accept_host_commands" in result["message"] and str(cfg.path) not in result["message"]
    assert not ran.exists(), "the executor never ran"


def test_accepted_host_commands_and_the_testers_own_run(tmp_path):
    accepted = "exec tail -n0 -F /var/lib/vmchecker/kvm/jobs/$VMCHECKER_VM.console"
    cfg = make_tester(tmp_path / "tester", accept_host_commands=[accepted],
                      machines={"linux": {"host_commands": ["echo mine"]}})
    make_bundle(cfg.queue_dir, "j1", {}, machine_keys={"kernel_messages": [accepted]})
    make_bundle(cfg.queue_dir, "j2", {}, machine_keys={"host_commands": ["echo from the storer"]})
    _qm(cfg).run()
    assert _error(cfg, "j1")["status"] == "done"   # its own machines.linux.host_commands apply too
    assert _error(cfg, "j2")["status"] == "done"   # the tester's override replaced the storer's command


def test_no_host_commands_accepted_by_default(tmp_path):
    cfg = make_tester(tmp_path / "tester")
    assert cfg.tester.accept_host_commands == []
    make_bundle(cfg.queue_dir, "j1", {}, machine_keys={"host_commands": ["true"]})
    _qm(cfg).run()
    assert _error(cfg, "j1")["status"] == "error"


# --------------------------------------------------------------------------- log lines


def test_a_file_name_with_a_newline_cannot_forge_log_lines(tmp_path, caplog):
    cfg = make_tester(tmp_path / "tester")
    forged = "x\nERROR vmchecker.storer: forged line"
    make_bundle(cfg.queue_dir, "j1", {"result_files": {forged: "hi"}})
    with caplog.at_level(logging.INFO):
        _qm(cfg).run()
    assert "not sent to the storer" in caplog.text
    assert not any(line.startswith("ERROR vmchecker.storer") for line in caplog.text.splitlines())
    assert "x\\nERROR" in caplog.text
    assert not (cfg.done_dir / "j1" / forged).exists()


# --------------------------------------------------------------------------- done/ grace


def test_results_the_storer_has_are_removed_after_the_grace(tmp_path):
    cfg = make_tester(tmp_path / "tester", done_grace=60)
    make_bundle(cfg.queue_dir, "fetched", {})   # no notify URL: nothing pending for it
    make_bundle(cfg.queue_dir, "pending", {}, notify_url=f"http://127.0.0.1:{free_port()}/")
    make_bundle(cfg.queue_dir, "recent", {})
    manager = _qm(cfg)
    manager.run()
    old = time.time() - 120
    for job in ("fetched", "pending"):
        os.utime(cfg.done_dir / job / results.MARKER, (old, old))
    assert manager.cleanup_done() == ["fetched"]
    assert sorted(p.name for p in cfg.done_dir.iterdir()) == ["pending", "recent"]   # not told yet; too new


def test_done_grace_defaults_to_a_day_and_is_checked(tmp_path):
    from vmchecker.errors import ConfigError

    assert make_tester(tmp_path / "a").tester.done_grace == 86400
    with pytest.raises(ConfigError, match="done_grace"):
        make_tester(tmp_path / "b", done_grace=-1)
