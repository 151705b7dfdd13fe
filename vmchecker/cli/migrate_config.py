"""vmchecker-migrate-config OLD_CONFIG: print the YAML equivalent of an original INI
course config.

The YAML goes to stdout, every key that could not be carried over goes to stderr as
a warning, and the YAML is loaded once as a check so a problem is named before the
sysadmin installs the file. Warnings do not change the exit status; only a file
that cannot be read or parsed does.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from vmchecker import config, migrate
from vmchecker.cli import common
from vmchecker.errors import ConfigError

log = logging.getLogger(__name__)

PROG = "vmchecker-migrate-config"


def check_loads(text: str) -> str | None:
    """Load the YAML as a course config; return what is wrong, or None."""
    with tempfile.TemporaryDirectory(prefix="vmchecker-migrate-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            config.load_course(path)
        except ConfigError as exc:
            return f"{exc.key or 'file'}: {exc.reason}"
    return None


def migrate_config(old_config: str, course_id: str | None = None,
                   out: TextIO | None = None, err: TextIO | None = None) -> migrate.Migration:
    """Print the YAML of ``old_config`` to ``out`` and the warnings to ``err``."""
    out, err = out or sys.stdout, err or sys.stderr
    result = migrate.migrate(old_config, course_id)
    text = result.to_yaml()
    problem = check_loads(text)
    if problem:
        result.warnings.append(f"the YAML does not load as is: {problem}")
    out.write(f"# migrated by {PROG} from {Path(old_config).absolute()}\n")
    out.write(text)
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=err)
    return result


def main(argv: list[str] | None = None) -> int:
    p = common.parser(PROG, "Print the YAML equivalent of an original vmchecker INI course config.",
                      global_config=False)
    p.add_argument("old_config", metavar="OLD_CONFIG", help="the original course config (INI)")
    p.add_argument("--course-id", metavar="ID",
                   help="course id for the YAML (default: from the file name, e.g. so.config -> so)")
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)

    def work() -> int:
        migrate_config(args.old_config, args.course_id)
        return 0

    return common.run(PROG, work, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
