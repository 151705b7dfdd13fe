"""``vmchecker-status``: what the storer daemon is doing (waiting jobs, testers).

The module imports only what parsing the command line needs: the configuration (PyYAML)
is read by :func:`fetch` only when no ``--url`` is given, and the XML-RPC client is
imported there too, so ``--help`` answers at once (tests/test_commands.py checks which
modules a start loads; bench/commands.py times it).
"""

from __future__ import annotations

import argparse
import sys
import time

from vmchecker.cli import common

PROG = "vmchecker-status"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Print the storer daemon's view: every waiting and running job with its tester"
                            " and estimated finish, and each tester's health.")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("--url", help="daemon URL (default: from daemon.listen of the global config, unless COURSE,"
                                 " else the first course, sets storer.daemon)")
    p.add_argument("--job", metavar="ID", help="print one job's timeline instead: when each stage happened,"
                                               " the time since the previous one and since the upload was stored")
    p.add_argument("course", metavar="COURSE", nargs="?", help="only this course")
    return p


def _when(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _url(args: argparse.Namespace) -> str:
    if args.url is not None:
        return args.url
    from vmchecker import config

    glob = config.load_global(args.config)
    course_id = args.course or next(iter(sorted(glob.courses)), None)
    return config.find_course(course_id, args.config).storer.daemon if course_id else glob.daemon_url


def fetch(args: argparse.Namespace) -> dict:
    from vmchecker import rpc

    status = rpc.Client(_url(args)).status()
    if args.course:
        status["jobs"] = [j for j in status["jobs"] if j["course"] == args.course]
        status["testers"] = [t for t in status["testers"] if t["course"] == args.course]
        status["errors"] = [e for e in status.get("errors", []) if e["course"] in (args.course, "")]
    return status


def render(status: dict) -> str:
    lines = ["jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(status.get("counts", {}).items()))]
    if status["jobs"]:
        lines.append(f"{'job':34} {'state':7} {'course/assignment/account':34} {'tester':8} {'pos':>3} finish")
        for j in status["jobs"]:
            who = f"{j['course']}/{j['assignment']}/{j['account']}"
            lines.append(f"{j['job_id']:34} {j['state']:7} {who:34} {j['tester'] or '-':8} "
                         f"{j['position'] or '':>3} {_when(j['estimated_finish'])}")
    else:
        lines.append("no job waiting or running")
    for t in status["testers"]:
        health = "healthy" if t["healthy"] else f"failing ({t['failures']}): {t['last_failure']}"
        lines.append(f"tester {t['course']}/{t['tester']}: {t['in_flight']}/{t['slots']} slots busy,"
                     f" {t['done']} done, {health}")
        if t.get("link_error"):  # why the storer cannot use it now, in words to act on
            lines.append(f"  unreachable: {t['link_error']}")
        elif t.get("reachable") is None:
            lines.append("  not contacted yet")
    for e in status.get("errors", []):  # courses the daemon cannot use now
        where = f"course {e['course']}" if e["course"] else "the global config"
        lines.append(f"{where} is unusable: {e['error']}")
    return "\n".join(lines)


def fetch_timeline(args: argparse.Namespace) -> dict:
    """The daemon's timeline of job ``args.job`` (NotFound if it does not know it)."""
    from vmchecker import rpc
    from vmchecker.errors import NotFound

    found = rpc.Client(_url(args)).timelines([args.job])
    if not isinstance(found, dict) or args.job not in found:
        raise NotFound(f"the storer daemon knows no job {args.job!r}")
    return found[args.job]


def _at(epoch: float) -> str:
    seconds, ms = divmod(round(epoch * 1000), 1000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{ms:03d}"


def render_timeline(t: dict) -> str:
    """A table: stage, time (the storer's clock), time since the previous stage (``~``: an
    estimate across the two machines' clocks), time since the upload was stored."""
    attempts = f", {t['attempts'] + 1} attempts" if t["attempts"] else ""
    lines = [f"job {t['job_id']}: {t['course']}/{t['assignment']}/{t['account']}/{t['submission']},"
             f" {t['state']}{' on ' + t['tester'] if t['tester'] else ''}{attempts}",
             f"{'stage':22} {'clock':6} {'time':12} {'+previous':>10} {'since stored':>12}"]
    for n, row in enumerate(t["stages"]):
        stage = row["stage"] + (f" #{row['attempt'] + 1}" if t["attempts"] else "")
        step = "-" if n == 0 else ("~" if row["estimated"] else "") + f"{row['since_previous_s']:+.3f}"
        lines.append(f"{stage:22} {row['clock']:6} {_at(row['at']):12} {step:>10} {row['since_stored_s']:12.3f}")
    if not t["stages"]:
        lines.append("no stage recorded")
    lines += [f"note: {note}" for note in t["notes"]]
    return "\n".join(lines)


def work(args: argparse.Namespace) -> int:
    import json

    if args.job:
        timeline = fetch_timeline(args)
        print(json.dumps(timeline, indent=2, sort_keys=True) if args.json else render_timeline(timeline))
        return 0
    status = fetch(args)
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
