"""The host check behind the queue manager's warning about slow cgroup moves."""

from __future__ import annotations

import platform
import re

import pytest

from vmchecker.executor.cgroups import migration_hint

HYBRID = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime{extra} 0 0
"""


def test_a_cgroup2_mount_without_favordynmods_is_named_with_the_fix():
    hint = migration_hint(HYBRID.format(extra=""))
    assert hint is not None
    assert "/sys/fs/cgroup/unified" in hint and "tools/tune-host.sh" in hint


def test_favordynmods_or_no_cgroup2_at_all_needs_no_hint():
    assert migration_hint(HYBRID.format(extra=",favordynmods")) is None
    assert migration_hint("proc /proc proc rw 0 0\n") is None


def test_this_host_was_tuned_by_the_make_targets():
    """make test runs tools/tune-host.sh first; on a kernel that knows the option (6.0
    and later) the mount has it: the check that the script worked."""
    major, minor = (int(n) for n in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    if (major, minor) < (6, 0):
        pytest.skip(f"kernel {platform.release()} has no favordynmods")
    assert migration_hint() is None
