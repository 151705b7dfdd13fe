"""Real-component test infrastructure: tester hosts in network namespaces
(:mod:`tests.lab.netns`) and real OpenSSH servers (:mod:`tests.lab.sshd`).

Everything these helpers create carries the prefix ``vmck`` and the pid of the
test process that made it, so a leftover from a crashed run is recognisable and
removed at the next start (only when its owner is dead: parallel runs coexist).

A helper that starts a real component first calls :func:`require_marker`: a test that
uses the component must carry its pytest marker, so ``-m "not netns"`` and the like
leave it out (tests/conftest.py also checks the fixtures each test uses, at collection).
"""

# The markers of the test running now (set by tests/conftest.py), None outside a test.
current_markers: set[str] | None = None


def require_marker(marker: str, what: str) -> None:
    """Fail the running test if it starts ``what`` without carrying ``marker``."""
    if current_markers is not None and marker not in current_markers:
        raise AssertionError(f"this test uses {what} but is not marked {marker!r}: add pytest.mark.{marker}"
                             f" (to the test or the module's pytestmark) so that -m 'not {marker}' leaves it out")


def skip_unless_lab() -> None:
    """Skip the calling test (with the reason) where namespaces or a real sshd cannot run."""
    import pytest

    from tests.lab import netns, sshd

    reason = netns.available() or sshd.available()
    if reason:
        pytest.skip(reason)


def lxc_unusable(base: str = "vmchecker-base") -> str | None:
    """Why real LXC guests cannot run here (no root, no binding, no base), or None."""
    import os

    if os.geteuid() != 0:
        return "LXC tests need root"
    try:
        import lxc  # the binding, not vmchecker.executor.lxc
    except ImportError as exc:
        return f"the LXC Python binding is not installed ({exc}); pip install -e '.[lxc]'"
    if not lxc.Container(base).defined:
        return f"the LXC base container {base!r} does not exist: run 'make base'"
    require_marker("lxc", "LXC guests")
    return None
