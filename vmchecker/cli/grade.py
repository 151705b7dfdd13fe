"""``vmchecker-grade``: a grader's lines in a submission's ``grade.vmr``, from the shell.

``--add LINE`` (repeatable) adds lines such as ``-0.5: leak in list_free``, signed with
``--grader`` (default: the login name); ``--edit`` opens ``$VISUAL`` or ``$EDITOR`` on a
copy of the file, checks what was written and saves it. Without either, the file, its
grade and its earlier versions are printed. Every save goes through
:mod:`vmchecker.grading`, as the web's grade form does: checked, under the repository
lock, the earlier file kept as ``results/grade.vmr.N``, the grades database updated.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from vmchecker import config, grading, penalty
from vmchecker.cli import common
from vmchecker.contract import GRADE_VMR
from vmchecker.errors import GradeRefused, VmcheckerError
from vmchecker.repo import CURRENT, Repository, Submission

PROG = "vmchecker-grade"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, f"Add grade lines to (or edit) the {GRADE_VMR} of ACCOUNT's submission for ASSIGNMENT;"
                            " without --add or --edit, print it.")
    p.add_argument("course", metavar="COURSE", help="course id from the global config")
    p.add_argument("assignment", metavar="ASSIGNMENT")
    p.add_argument("account", metavar="ACCOUNT")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--add", metavar="LINE", action="append", default=[],
                      help=f"add a grade line: a number, a colon and a reason, such as {grading.EXAMPLE}"
                           " (repeat for more lines)")
    what.add_argument("--edit", action="store_true",
                      help="edit the whole file in $VISUAL or $EDITOR (default vi); it is checked before it is saved")
    p.add_argument("--grader", metavar="NAME", help="who signs the lines (default: your login name)")
    p.add_argument("--submission", metavar="FOLDER", default=CURRENT,
                   help="the submission folder's name (default: the current one)")
    return p


def grader_name(given: str | None) -> str:
    return grading.check_grader(given if given is not None else getpass.getuser())


def show(course: config.CourseConfig, sub: Submission) -> None:
    text = sub.grade_text()
    print(f"{course.id}/{sub.assignment}/{sub.account}/{sub.name}: {sub.results_dir / GRADE_VMR}")
    print((text or f"(no {GRADE_VMR})\n").rstrip("\n"))
    result = penalty.compute(course.assignment(sub.assignment), course.course.holidays, sub.upload_time, text)
    print(penalty.describe(result), end="")
    for earlier in grading.earlier_versions(sub):
        print(f"earlier version: {earlier}")


def edit(course: config.CourseConfig, sub: Submission, grader: str) -> grading.Saved | None:
    """Open the editor on a copy; check and save what it left. The copy is kept when it
    cannot be saved, so nothing the grader wrote is lost."""
    before = sub.grade_text()
    fd, name = tempfile.mkstemp(prefix="grade-", suffix=".vmr")
    copy = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(before or "")
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        done = subprocess.run([*shlex.split(editor), str(copy)], check=False)
    except OSError as exc:
        copy.unlink(missing_ok=True)
        raise VmcheckerError(f"cannot start the editor {editor!r}: {exc.strerror}") from None
    if done.returncode != 0:
        copy.unlink(missing_ok=True)
        raise GradeRefused(f"the editor {editor!r} exited with status {done.returncode}: nothing was saved")
    try:
        saved = grading.replace_text(course, sub, copy.read_text(encoding="utf-8", errors="replace"), grader,
                                     before)
    except VmcheckerError as exc:
        raise type(exc)(f"{exc.message} (your version is kept in {copy})") from None
    copy.unlink(missing_ok=True)
    return saved


def work(args: argparse.Namespace) -> int:
    course = config.find_course(args.course, args.config)
    owner = course.teams.owner(args.assignment, args.account)   # a team's member: the team's submission
    sub = Repository(course).submission(args.assignment, owner, args.submission)
    if not args.add and not args.edit:
        show(course, sub)
        return 0
    grader = grader_name(args.grader)
    saved = edit(course, sub, grader) if args.edit else grading.add_lines(course, sub, args.add, grader)
    if saved is None:
        print("no change: nothing saved")
        return 0
    kept = f"; the earlier file is kept as {saved.earlier}" if saved.earlier else ""
    grade = penalty.format_points(saved.result.grade or 0)
    print(f"saved {saved.submission.results_dir / GRADE_VMR}{kept}")
    print(f"grade: {grade} / {penalty.format_points(saved.result.total_points)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
