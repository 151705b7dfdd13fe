"""``vmchecker-resubmit``: recheck the ``current`` submission of some accounts.

Earlier results are never destroyed: each recheck moves ``results/`` aside to the next
free ``results.N/``. ``--dry-run`` lists what would be rechecked and changes nothing.
Submissions of ``submit_only`` assignments are graded by hand and never tested: they
are listed as skipped, their grade left where the grader wrote it. ``--wait`` waits for
every rechecked submission as ``vmchecker-submit --wait`` does; the exit status is the
worst of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from vmchecker import config
from vmchecker.cli import common
from vmchecker.cli.submit import add_wait_options, wait_and_report
from vmchecker.errors import NotFound
from vmchecker.queueing import SUBMIT_ONLY, never_tested, queue_submission
from vmchecker.repo import Repository, Submission
from vmchecker.submit import recheck
from vmchecker.waiting import Verdict

PROG = "vmchecker-resubmit"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Mark the current submission of matching accounts for testing again.")
    p.add_argument("course", metavar="COURSE", help="course id from the global config")
    p.add_argument("--account", metavar="A", help="only this account, or team (may be combined with --assignment);"
                                                  " a team's member names the team's submissions")
    p.add_argument("--assignment", metavar="X", help="only this assignment (may be combined with --account)")
    p.add_argument("--all", action="store_true", help="every account of every assignment")
    p.add_argument("--no-queue", action="store_true",
                   help="only mark for testing; do not ask the storer daemon now")
    p.add_argument("--dry-run", action="store_true", help="list what would be rechecked, change nothing")
    add_wait_options(p)
    return p


def select(repo: Repository, account: str | None, assignment: str | None) -> Iterator[Submission]:
    """The current submissions matching the filters (None matches everything). An
    account in a team matches the team's submissions of the assignments the team covers."""
    if assignment is not None:
        repo.course.assignment(assignment)  # NotFound names the known ones
    teams = repo.course.teams
    for sub in repo.iter_current(assignment):
        if account is None or sub.account in (account, teams.owner(sub.assignment, account)):
            yield sub


def work(args: argparse.Namespace) -> int:
    course = config.find_course(args.course, args.config)
    repo = Repository(course)
    chosen = list(select(repo, args.account, args.assignment))
    if not chosen:
        if args.account is not None:
            where = f" for {args.assignment}" if args.assignment else ""
            raise NotFound(f"{args.account} has no submission{where} in course {course.id}")
        print("nothing to recheck")
        return 0
    rechecked = []
    for sub in chosen:
        label = f"{course.id}/{sub.assignment}/{sub.account}/{sub.name}"
        if never_tested(course, sub.assignment):
            print(f"skipped {label}: {SUBMIT_ONLY.format(assignment=sub.assignment)}")
            continue
        if args.dry_run:
            print(f"would recheck {label} (status {sub.status().value})")
            continue
        sub = recheck(sub)
        aside = sub.earlier_results()
        moved = f"; earlier results in {aside[-1].name}" if aside else ""
        print(f"rechecked {label}: status {sub.status().value}{moved}")
        rechecked.append(sub)
        if not args.no_queue:
            job_id, why = queue_submission(course, sub)
            print(f"  queued as job {job_id}" if job_id else f"  not queued: {why}", flush=True)
    return wait_and_report(course, rechecked, args.wait_timeout) if args.wait and rechecked else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all and (args.account or args.assignment):
        parser.error("--all cannot be combined with --account or --assignment")
    if not (args.all or args.account or args.assignment):
        parser.error("say which submissions: --account A, --assignment X (or both), or --all")
    if args.wait and (args.no_queue or args.dry_run):
        parser.error("--wait cannot be combined with --no-queue or --dry-run: nothing would come to wait for")
    common.setup_logging(args.verbose, args.log_format)
    error_code = Verdict.ERROR if args.wait else None   # --wait: every error is its "error" status
    return common.run(PROG, lambda: work(args), args.verbose, error_code=error_code)


if __name__ == "__main__":
    sys.exit(main())
