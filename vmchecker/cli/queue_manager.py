"""``vmchecker-queue-manager [--once] [-v] TESTER_DIR_OR_CONFIG``: the tester's daemon.

Watches the tester's ``queue/`` and runs each bundle that arrives (see
:mod:`vmchecker.tester.queue_manager`). ``--once`` runs what is queued now, tries the
pending notifications once, and exits: for tests and cron.
"""

from __future__ import annotations

import logging
import sys

from vmchecker import tester_config
from vmchecker.cli import common
from vmchecker.tester.queue_manager import QueueManager

log = logging.getLogger(__name__)

PROG = "vmchecker-queue-manager"


def queue_manager(tester: str, once: bool = False, pid_file: str | None = None,
                  keep_done_days: float | None = None) -> int:
    """Load the tester config and serve until stopped (or, with ``once``, drained)."""
    cfg = tester_config.load_tester(tester)
    return QueueManager(cfg, once=once, pid_file=pid_file, keep_done_days=keep_done_days).run()


def main(argv: list[str] | None = None) -> int:
    p = common.parser(PROG, "Run the bundles that arrive in a tester's queue/ and notify the storer.",
                      global_config=False)
    p.add_argument("--once", action="store_true", help="run what is queued now, notify, and exit")
    p.add_argument("--pid-file", metavar="FILE", help="pid file (default: STATE/queue-manager.pid)")
    p.add_argument("--keep-done-days", type=float, metavar="DAYS",
                   help="remove results in done/ older than DAYS once notified (default: tester.done_grace)")
    p.add_argument("tester", metavar="TESTER_DIR_OR_CONFIG", help="the tester folder or its config.yaml")
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: queue_manager(args.tester, args.once, args.pid_file, args.keep_done_days),
                      args.verbose)


if __name__ == "__main__":
    sys.exit(main())
