"""What every command shares: logging set-up and mapping errors to exit codes.

Each command module has a work function (what tests call) and ``main(argv=None) -> int``
which parses arguments and hands the work to :func:`run`, so an error becomes one line
on stderr and the error's exit code in exactly one place.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)


def parser(prog: str, description: str, *, global_config: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``-v`` and, for the commands that read the global config
    (``global_config``), ``--config``. A command that reads no global config (the tester's
    commands, which take their own file, and the INI migration) must not offer a
    ``--config`` it would ignore."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail to stderr")
    if global_config:
        p.add_argument("--config", metavar="FILE",
                       help="global config (default: $VMCHECKER_CONFIG or /etc/vmchecker/config.yaml)")
    return p


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def run(prog: str, work: Callable[[], int | None], verbose: bool = False) -> int:
    """Call ``work`` and turn a VmcheckerError into ``prog: message`` and its exit code."""
    try:
        return work() or 0
    except VmcheckerError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
