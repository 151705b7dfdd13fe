"""``vmchecker-storer-daemon``: the storer's XML-RPC daemon (journal, scheduler, SFTP)."""

from __future__ import annotations

import argparse
import sys

from vmchecker.cli import common
from vmchecker.storer.daemon import StorerDaemon

PROG = "vmchecker-storer-daemon"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Run the storer daemon: accept jobs (queue_task), send bundles to the tester"
                            " expected to finish soonest, pull results when a tester calls notify.")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve XML-RPC on (default: daemon.listen of the global config,"
                        " 127.0.0.1:19999)")
    p.add_argument("--state", metavar="DIR",
                   help="folder for the job journal and outgoing bundles (default: daemon.state of the"
                        " global config, /var/lib/vmchecker)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (default: daemon.metrics_listen of the global config;"
                        " empty: none)")
    p.add_argument("--pid-file", metavar="FILE", help="write the pid here; refuse to start if it is held")
    p.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                   help="how often the dispatcher re-reads the journal without a wake-up (default 2)")
    p.add_argument("--once", action="store_true",
                   help="drain, then exit 0: queue the submissions left saved, send every queued job,"
                        " answer notify, queue_task and status meanwhile, and exit as soon as the journal"
                        " holds no job queued (one waiting to be retried counts) or sent, i.e. every job"
                        " has ended in done or error; for tests and scripts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: StorerDaemon(args.config, listen=args.listen, state_dir=args.state,
                                                 poll=args.poll, pid_file=args.pid_file, once=args.once,
                                                 metrics_listen=args.metrics_listen).run(), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
