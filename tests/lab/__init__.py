"""Real-component test infrastructure: tester hosts in network namespaces
(:mod:`tests.lab.netns`) and real OpenSSH servers (:mod:`tests.lab.sshd`).

Everything these helpers create carries the prefix ``vmck`` and the pid of the
test process that made it, so a leftover from a crashed run is recognisable and
removed at the next start (only when its owner is dead: parallel runs coexist).
"""


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
    return None
