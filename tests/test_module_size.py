"""The house stays readable as it grows: no module of the package over 450 lines, and
each backend's own file under 300 (docs/ARCHITECTURE.md, "The executor"). A module
that grows past it is split along its seams, not allowed to creep."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vmchecker"
MAX_MODULE_LINES = 450
MAX_BACKEND_LINES = 300
BACKENDS = ("lxc.py", "kvm.py", "vmware.py")


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_over_450_lines():
    too_long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := _lines(p)) > MAX_MODULE_LINES}
    assert not too_long, f"split these along their seams: {too_long}"


def test_each_backend_file_is_under_300_lines():
    sizes = {name: _lines(PACKAGE / "executor" / name) for name in BACKENDS}
    assert all(n < MAX_BACKEND_LINES for n in sizes.values()), sizes
