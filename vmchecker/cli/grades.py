"""vmchecker-grades COURSE: rebuild the grades database from the repository and print it.

For graders and sysadmins: every account's current submission per assignment, with
its status or grade, late days, penalty, upload time and a short reason beside a grade
below the maximum (the first grade line that took points away: why a run failed, or the
tests' or a grader's complaint), as an aligned table, CSV or JSON. A team's grade is
listed for every member, with the team's name (``team``; the table shows the column when
the course has a team's row); ``--account`` takes a member or a team.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from typing import TextIO

from vmchecker import config, confparse, grades
from vmchecker.cli import common
from vmchecker.penalty import format_points

log = logging.getLogger(__name__)

PROG = "vmchecker-grades"
FORMATS = ("table", "csv", "json")
_HEADERS = ("account", "assignment", "status", "grade", "late_days", "penalty", "upload_time", "reason", "team")


def _cells(row: grades.GradeRow) -> list[str]:
    return [row.account, row.assignment, row.status,
            "" if row.grade is None else format_points(row.grade),
            str(row.late_days), format_points(row.penalty), confparse.format_datetime(row.upload_time),
            _one_line(row.reason or ""), row.team]


def _table_order(cells: list[str], teams: bool) -> list[str]:
    """The table's columns: the team beside the account, only when there is one."""
    return [cells[0], *cells[-1:], *cells[1:-1]] if teams else cells[:-1]


def _one_line(text: str) -> str:
    """A reason comes from grade lines a course's tests wrote: one line of printable text."""
    return "".join(c if c.isprintable() else " " for c in text)


def render(found: list[grades.GradeRow], fmt: str, out: TextIO) -> None:
    """Write rows in one of FORMATS."""
    if fmt == "json":
        json.dump([r.to_dict() for r in found], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_HEADERS)
        writer.writerows(_cells(r) for r in found)
    else:
        teams = any(r.team for r in found)
        table = [_table_order([h.replace("_", " ") for h in _HEADERS], teams)]
        table += [_table_order(_cells(r), teams) for r in found]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
        if not found:
            out.write("(no submissions)\n")


def show_grades(course_id: str, fmt: str = "table", assignment: str | None = None,
                account: str | None = None, config_path: str | None = None,
                out: TextIO | None = None) -> list[grades.GradeRow]:
    """Rebuild the course's grades database, then print the (filtered) rows."""
    course = config.find_course(course_id, config_path)
    if assignment is not None:
        course.assignment(assignment)  # NotFound naming the known assignments
    grades.rebuild(course)
    found = grades.rows(course, assignment=assignment, account=account)
    render(found, fmt, out or sys.stdout)
    return found


def main(argv: list[str] | None = None) -> int:
    p = common.parser(PROG, "Rebuild a course's grades from its repository and print them.")
    p.add_argument("course", metavar="COURSE", help="course id (as registered in the global config)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--assignment", metavar="X", help="only this assignment")
    p.add_argument("--account", metavar="A", help="only this account (or team: its members' rows)")
    args = p.parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)

    def work() -> int:
        show_grades(args.course, args.format, args.assignment, args.account, args.config)
        return 0

    return common.run(PROG, work, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
