"""How a one-shot process ends: at once, without the interpreter's teardown.

Tearing down the modules and objects of a process with the executor's bindings loaded
took 50-80 ms of CPU here, on every job's path between its results and their commit; a
command's exit paid a smaller share of the same. :func:`exit_now` does what an exit must
still do and no more. It lives in the core, not in ``cli/``, because the tester's fork
server ends its forked executors with it too (vmchecker/tester/forkserver.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import NoReturn


def exit_now(code: int | None) -> NoReturn:
    """End a one-shot process with ``code``, skipping the interpreter's teardown of its
    modules and objects: 50-80 ms of CPU for the executor with its bindings, on a job's
    path between its results and their commit. What an exit must still do is done: the
    atexit handlers (the KVM and VMware backends close their connections there), the
    logs and stdio flushed. For commands whose work is over when ``main`` returns, never
    for a daemon (its threads would be cut, not joined)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: nothing left to write to
            pass
    os._exit(code or 0)
