"""status() names every course the daemon cannot use instead of leaving it out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.util import write_course
from vmchecker.cli import status as status_cli
from vmchecker.storer.daemon import StorerDaemon


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two courses; ``pc`` has a job queued and then a config edit that breaks it."""
    write_course(tmp_path, "so")
    pc = write_course(tmp_path, "pc")
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    d.job = d.journal.enqueue("pc", "1-hello", "bob", "2026.02.20 10.00.00", "linux")
    pc.write_text(pc.read_text().replace("course:\n", "course: [\n", 1))
    yield d
    d.server.server_close()
    d.courses.close()
    d.journal.close()


def test_a_course_whose_config_does_not_load_is_reported(daemon: StorerDaemon, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        answer = daemon.status("127.0.0.1")
    assert [e["course"] for e in answer["errors"]] == ["pc"]
    assert "pc/config.yaml" in answer["errors"][0]["error"]
    assert "status: course pc is unusable" in caplog.text
    # its job is still listed (without an estimate), the other course is whole
    assert [(j["job_id"], j["estimated_finish"]) for j in answer["jobs"]] == [(daemon.job.id, None)]
    assert {t["course"] for t in answer["testers"]} == {"so"}
    text = status_cli.render(answer)
    assert "course pc is unusable: " in text and "tester so/t1" in text


def test_a_course_loaded_before_then_removed_is_reported(daemon: StorerDaemon, tmp_path: Path) -> None:
    assert daemon.courses.get("so")
    (tmp_path / "so" / "config.yaml").unlink()
    answer = daemon.status("127.0.0.1")
    assert sorted(e["course"] for e in answer["errors"]) == ["pc", "so"]
    assert answer["testers"] == []


def test_a_sound_daemon_reports_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_course(tmp_path, "so")
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    d = StorerDaemon(tmp_path / "global.yaml", listen="127.0.0.1:0", state_dir=tmp_path / "state")
    try:
        answer = d.status("127.0.0.1")
    finally:
        d.server.server_close()
        d.journal.close()
    assert answer["errors"] == [] and [t["tester"] for t in answer["testers"]] == ["t1"]
    assert "unusable" not in status_cli.render(answer)
