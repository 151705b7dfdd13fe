"""``vmchecker-submit``: store an archive as an account's submission (graders, CLI students).

The same :func:`vmchecker.submit.submit` the web form calls, so every check applies;
``--skip-time-checks`` lets a grader store an upload outside the window, after a hard
deadline or sooner than the minimum interval.

ACCOUNT must take part in the course, as on the web: one of its students
(``course.students``, ``course.students_file``) or admins, unless the course is
``open_to_all_users``. An LDAP group of students (``course.students_ldap_group``) is
known only to ``vmchecker-web``, which has the LDAP connection; for such a student
``--not-listed`` says the grader has checked. A member of a team uploads for the team
(:mod:`vmchecker.teams`): the submission is stored under the team's name.

``--wait`` waits for the results (the place in the queue and the estimated finish on
stderr meanwhile), prints them and the grade, and exits 0 passed, 1 failed, 2 error or
3 timed out (:mod:`vmchecker.waiting`), so a script can tell.

The module imports only what parsing the command line needs; the configuration,
repository and daemon modules (PyYAML, the archive formats, the XML-RPC client) are
imported by the functions that use them, so ``--help`` and a mistyped command line answer
at once (tests/test_commands.py checks which modules a start loads; bench/commands.py
times it).
"""

from __future__ import annotations

import argparse
import sys

from vmchecker.cli import common
from vmchecker.errors import SubmissionRefused

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    import datetime as dt

    from vmchecker.config import CourseConfig
    from vmchecker.repo import Submission

PROG = "vmchecker-submit"


def upload_time(value: str) -> dt.datetime:
    """argparse type for ``--upload-time``."""
    from vmchecker.confparse import parse_datetime

    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Store ARCHIVE (zip or tar.gz) as ACCOUNT's submission for ASSIGNMENT.")
    p.add_argument("--skip-time-checks", action="store_true",
                   help="accept outside the upload window, after a hard deadline and sooner than"
                        " the minimum interval (graders)")
    p.add_argument("--not-listed", action="store_true",
                   help="store it even if ACCOUNT is not listed as a student of the course (a member of"
                        " the course's LDAP group, which this command cannot look up)")
    p.add_argument("--upload-time", type=upload_time, metavar="'YYYY-MM-DD HH:MM:SS'",
                   help="the upload time to record (default: now)")
    p.add_argument("--no-queue", action="store_true",
                   help="only store the submission; do not ask the storer daemon to test it")
    add_wait_options(p)
    p.add_argument("course", metavar="COURSE", help="course id from the global config")
    p.add_argument("assignment", metavar="ASSIGNMENT")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("archive", metavar="ARCHIVE")
    return p


def add_wait_options(p: argparse.ArgumentParser) -> None:
    """``--wait`` and ``--wait-timeout`` (vmchecker-resubmit offers them too), and what
    the exit status then says."""
    p.add_argument("--wait", action="store_true",
                   help="wait for the results (position in the queue and estimated finish meanwhile, on"
                        " stderr), print them and the grade; the exit status says how it went (below)")
    p.add_argument("--wait-timeout", type=float, default=600.0, metavar="S",
                   help="with --wait, give up waiting after S seconds (default: 600)")
    p.epilog = common.WAIT_EXIT_STATUS
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def wait_and_report(course: CourseConfig, subs: list[Submission], timeout: float) -> int:
    """Wait for ``subs``' results, print each, and return the worst verdict as the exit status."""
    from vmchecker import waiting

    outcomes = waiting.wait(course, subs, timeout, sys.stderr)
    for outcome in outcomes:
        waiting.report(course, outcome, sys.stdout)
    return max(o.verdict for o in outcomes)


def check_student(course: CourseConfig, account: str) -> None:
    """Refuse an account that does not take part in the course, saying how to fix it."""
    from vmchecker.repo import check_account

    check_account(account)
    if course.admits(account):
        return
    group = course.course.students_ldap_group
    if group:
        raise SubmissionRefused(
            f"{account!r} is not listed as a student of course {course.id} (course.students, course.students_file"
            f" in {course.path}); the course also admits the LDAP group {group}, which {PROG} cannot look up:"
            f" if {account} is a member, run again with --not-listed")
    raise SubmissionRefused(
        f"{account!r} is not a student of course {course.id}: add it to course.students or course.students_file"
        f" in {course.path} (or set course.open_to_all_users: true)")


def work(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vmchecker.config import find_course
    from vmchecker.confparse import format_datetime
    from vmchecker.queueing import queue_submission
    from vmchecker.submit import submit

    course = find_course(args.course, args.config)
    if not args.not_listed:
        check_student(course, args.account)
    sub = submit(course, args.assignment, args.account, Path(args.archive),
                 upload_time=args.upload_time, skip_time_checks=args.skip_time_checks)
    team = f" (team {sub.account}'s, uploaded by {args.account})" if sub.account != args.account else ""
    print(f"saved {course.id}/{sub.assignment}/{sub.account} upload of"
          f" {format_datetime(sub.upload_time)}{team} in {sub.path}")
    if args.no_queue:
        print(f"status: {sub.status().value} (not queued: --no-queue)")
        return 0
    job_id, why = queue_submission(course, sub)
    print(f"status: queued as job {job_id}" if job_id else f"status: saved (not queued: {why})", flush=True)
    return wait_and_report(course, [sub], args.wait_timeout) if args.wait else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wait and args.no_queue:
        parser.error("--wait cannot be combined with --no-queue: nothing would come to wait for")
    common.setup_logging(args.verbose, args.log_format)
    if args.wait:   # every error is --wait's "error" status, so scripts read one number
        from vmchecker.waiting import Verdict

        return common.run(PROG, lambda: work(args), args.verbose, error_code=Verdict.ERROR)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
