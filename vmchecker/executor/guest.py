"""What every backend needs about its guests: their names, leftovers of dead
executors, the guest user, the environment and limits of a step, and the programs that
run inside a guest (real files in the folder ``guest/`` beside this module, shipped as
package data and loaded once).

A job guest is named ``vmck-<job>-<executor pid>-<random>``: the pid lets a later
executor tell a leftover of a dead one from a guest still in use. A warm guest
(:mod:`.warm`) carries the pid of the queue manager that keeps it instead.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from importlib import resources

from vmchecker.errors import VmcheckerError
from vmchecker.executor.hostcmds import pid_alive

log = logging.getLogger(__name__)

GUEST_PREFIX = "vmck-"
_GUEST_RE = re.compile(rf"^{re.escape(GUEST_PREFIX)}[A-Za-z0-9]*-(\d+)-[0-9a-f]+$")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COPY_TIMEOUT = 120           # seconds for copying files in or out
CPU_PERIOD_US = 100_000

_name_owner: int | None = None   # the pid guests made here are named after, if not this process's


@functools.cache
def program(name: str) -> str:
    """The text of the program ``guest/NAME`` that runs in the guest (package data),
    read once per process: the payload of every job carries two of them."""
    return resources.files(__package__).joinpath("guest", name).read_text(encoding="utf-8")


# sh, as root: the first N regular *.vmr files of the job folder, capped, as a tar
# (arguments: folder, cap, N, output file or "-"; see the file's header).
COPY_OUT = program("copy-out.sh")


def guest_name(job_id: str) -> str:
    """A job guest's name, ``vmck-<job>-<executor pid>-<random>``: the pid lets a later
    executor tell a leftover of a dead one from a guest still in use."""
    job = re.sub(r"[^A-Za-z0-9]", "", job_id)[:20]
    return f"{GUEST_PREFIX}{job}-{_name_owner or os.getpid()}-{secrets.token_hex(3)}"


def name_guests_for(pid: int) -> None:
    """Name the guests this process makes after ``pid``: a warm-up executor's guests
    outlive it, kept by its queue manager, and must count as leftovers only once that
    one is gone."""
    global _name_owner
    _name_owner = pid


def owner_alive(name: str) -> bool:
    """Whether the executor that made guest ``name`` may still run (this one included).
    A name :func:`guest_name` did not make counts as alive: it is not ours to remove."""
    match = _GUEST_RE.match(name)
    if not match:
        return True
    pid = int(match.group(1))
    return pid == os.getpid() or pid_alive(pid)


def remove_leftovers(names: Iterable[str], remove: Callable[[str], None], what: str) -> list[str]:
    """Call ``remove`` on each guest of ``names`` whose executor is dead; the names
    removed. A failure is logged and the rest go on."""
    removed = []
    for name in names:
        if not name.startswith(GUEST_PREFIX) or owner_alive(name):
            continue
        log.warning("removing %s %s left by a dead executor", what, name)
        try:
            remove(name)
        except (VmcheckerError, OSError) as exc:
            log.error("removing %s %s failed: %s", what, name, getattr(exc, "message", exc))
            continue
        removed.append(name)
    return removed


def cpu_quota_us(cpus: float) -> int:
    """The CFS quota per CPU_PERIOD_US for a ``cpus`` limit (at least 1 ms)."""
    return max(int(cpus * CPU_PERIOD_US), 1000)


def passwd_entry(text: str, user: str) -> tuple[int, int, str] | None:
    """(uid, gid, home) of ``user`` in passwd-format ``text``, or None: who owns the
    payload in the guest and whom the steps run as."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            try:
                return int(fields[2]), int(fields[3]), fields[5] or "/"
            except ValueError:
                return None
    return None
