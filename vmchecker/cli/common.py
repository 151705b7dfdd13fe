"""What every command shares: one logging set-up and mapping errors to exit codes.

Each command module has a work function (what tests call) and ``main(argv=None) -> int``
which parses arguments and hands the work to :func:`run`, so an error becomes one line
on stderr and the error's exit code in exactly one place.

Every process, the daemons as much as a grader's one-shot command, logs through
:func:`setup_logging`: one plain line format, or with ``--log-format json`` one JSON
object per line for a log shipper. Nothing here imports more than a command's start
needs (``--help`` must stay fast: tests/test_commands.py), so the JSON formatter imports
``json`` only when it writes its first line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from vmchecker.errors import VmcheckerError

log = logging.getLogger(__name__)

# The one plain format: the daemons' slots and helpers are threads, and a journal of
# several processes tells them apart by pid.
PLAIN_FORMAT = "%(asctime)s %(name)s[%(process)d] %(threadName)s %(levelname)s: %(message)s"
LOG_FORMATS = ("plain", "json")

_log_format = "plain"   # what setup_logging chose: run() reports errors the same way


# What --wait's exit status says (vmchecker-submit, vmchecker-resubmit; the values are
# vmchecker.waiting.Verdict's), shown under their --help.
WAIT_EXIT_STATUS = """exit status with --wait:
  0  passed: graded; the build and the run completed and no grade line took points away
     (a late penalty does not count)
  1  failed: graded, but the build failed, the run did not complete or the tests took points away
  2  error: the job ended in error, the assignment is never tested (submit_only), the
     upload was refused, or any other error
  3  timed out: no results within --wait-timeout seconds (the job goes on)"""


def parser(prog: str, description: str, *, global_config: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``-v``, ``--log-format`` and, for the commands that read the
    global config (``global_config``), ``--config``. A command that reads no global config
    (the tester's commands, which take their own file, and the INI migration) must not
    offer a ``--config`` it would ignore."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail to stderr")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="plain",
                   help="plain lines (the default) or json: one JSON object per line (time, level, logger,"
                        " message, exception) for a log shipper")
    if global_config:
        p.add_argument("--config", metavar="FILE",
                       help="global config (default: $VMCHECKER_CONFIG or /etc/vmchecker/config.yaml)")
    return p


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, local, with its offset), ``level``,
    ``logger``, ``message``, ``process``, ``thread`` and, when there is one, ``exception``
    (the traceback as text). A message's newlines stay inside its string, so one record
    is always one line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        local = time.localtime(record.created)
        return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(record.msecs):03d}"
                + time.strftime("%z", local))

    def format(self, record: logging.LogRecord) -> str:
        import json  # here, not at the top: a command's start must not pay for it

        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "process": record.process, "thread": record.threadName}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(verbose: bool = False, log_format: str = "plain") -> None:
    """Log to stderr in ``log_format`` (``plain`` or ``json``), at DEBUG with ``verbose``.
    The only place a vmchecker process configures logging. As :func:`logging.basicConfig`,
    it leaves a root logger that already has a handler alone (a test's capture)."""
    global _log_format
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (known: {', '.join(LOG_FORMATS)})")
    _log_format = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.captureWarnings(True)   # a library's warning is a record too, not a stray line


def _report(prog: str, message: str) -> None:
    """An error that ends the command: ``prog: message`` for a person at a terminal, or a
    log record when the logs go to a shipper (every line on stderr is then JSON)."""
    if _log_format == "json":
        log.error("%s: %s", prog, message)
    else:
        print(f"{prog}: {message}", file=sys.stderr)


def run(prog: str, work: Callable[[], int | None], verbose: bool = False, error_code: int | None = None) -> int:
    """Call ``work`` and turn a VmcheckerError into ``prog: message`` and its exit code
    (``error_code`` instead, when given: ``--wait``'s one status for every error);
    with ``verbose``, log how it ended and how long it took."""
    started = time.monotonic()
    code = 1
    try:
        code = work() or 0
    except VmcheckerError as exc:
        _report(prog, exc.message)
        code = exc.exit_code if error_code is None else error_code
    except KeyboardInterrupt:
        _report(prog, "interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    if verbose:
        log.debug("%s: exit %d after %.3f s", prog, code, time.monotonic() - started)
    return code
