"""Run a queue manager whose executor is fake_executor.py, as its own process.

``python -m tests.tester.run_queue_manager [--once] [--hour-timers] [--prestart] TESTER_DIR``: what the
kill -9 and restart tests start, since the executor command can only be injected in code.
Backend clean-up is recorded on stderr instead of run. ``--hour-timers`` sets every
fallback timer of the queue manager (its idle wait, its rescan of queue/, the notifier's
retries) to an hour: a job that still goes through was moved on by events alone.
``--prestart`` keeps pre-started fake executors, as the real executor gets."""

import sys

from tests.tester.helpers import FAKE_COMMAND
from vmchecker import tester_config
from vmchecker.cli import common
from vmchecker.tester import queue_manager
from vmchecker.tester.queue_manager import QueueManager

HOUR = 3600.0


def record_cleanup(machine_type: str, machines=()) -> None:
    """The fake jobs say ``lxc`` but have no guests: note the request, touch no container."""
    print(f"cleanup requested for {machine_type}", file=sys.stderr)


if __name__ == "__main__":
    queue_manager.cleanup_backend = record_cleanup
    common.setup_logging(True)
    once = "--once" in sys.argv
    delays = {"notify_base_delay": 0.1, "notify_max_delay": 0.5}
    if "--hour-timers" in sys.argv:
        queue_manager.IDLE_WAIT = queue_manager.SWEEP_SECONDS = HOUR
        delays = {"notify_base_delay": HOUR, "notify_max_delay": HOUR}
    cfg = tester_config.load_tester(sys.argv[-1])
    sys.exit(QueueManager(cfg, once=once, notify_timeout=2, **delays, kill_grace=2,
                          _executor_command=FAKE_COMMAND, _prestart="--prestart" in sys.argv).run())
