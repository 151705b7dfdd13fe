"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import write_course
from vmchecker import config


@pytest.fixture
def course(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config.CourseConfig:
    """A course ``so`` in a temporary folder, registered in a global config that
    ``$VMCHECKER_CONFIG`` points to."""
    path = write_course(tmp_path)
    monkeypatch.setenv("VMCHECKER_CONFIG", str(tmp_path / "global.yaml"))
    return config.load_course(path)
