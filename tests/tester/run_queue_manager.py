"""Run a queue manager whose executor is fake_executor.py, as its own process.

``python -m tests.tester.run_queue_manager [--once] TESTER_DIR``: what the kill -9 and
restart tests start, since the executor command can only be injected in code.
Backend clean-up is recorded on stderr instead of run."""

import sys

from tests.tester.helpers import FAKE_COMMAND
from vmchecker import tester_config
from vmchecker.cli import common
from vmchecker.tester import queue_manager
from vmchecker.tester.queue_manager import QueueManager


def record_cleanup(machine_type: str, machines=()) -> None:
    """The fake jobs say ``lxc`` but have no guests: note the request, touch no container."""
    print(f"cleanup requested for {machine_type}", file=sys.stderr)


if __name__ == "__main__":
    queue_manager.cleanup_backend = record_cleanup
    common.setup_logging(True)
    once = "--once" in sys.argv
    cfg = tester_config.load_tester(sys.argv[-1])
    sys.exit(QueueManager(cfg, once=once, notify_timeout=2, notify_base_delay=0.1, notify_max_delay=0.5,
                          kill_grace=2, _executor_command=FAKE_COMMAND).run())
