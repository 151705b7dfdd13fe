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
