"""`pqlflow discover`: which behaviours predict upgrading, ranked on a time split, with a proposed definition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pqlflow.kernel.errors import UsageError

_EPILOG = """\
EVENTS are read exactly as `pqlflow backtest` reads them: JSON Lines (plain or gzip) of Segment messages
or EventBridge events, or Parquet files, directories or globs (docs/backtest.md). A bad line is reported
with its line (or row) and skipped; a history with no valid event at all is an error (exit 2).

Every 7 days, each account not yet converted (nor excluded) is a snapshot: its signals count only events
before that moment, and its label is converting within --window days after it. Thresholds are chosen on
the accounts first seen earlier (the learn cohorts) and checked on the later ones (held out); the proposed
definition is backtested on the held-out accounts. See docs/discover.md.

Examples:
  pqlflow discover history.jsonl
  pqlflow discover history.jsonl --conversions 'Subscription Started,Plan Upgraded' --window 21 --out disc/
  pqlflow backtest history.jsonl --definition disc/proposed.yaml
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "discover",
        help="find the behaviours that predict upgrading, and propose a definition",
        description="Mine candidate signals (event counts, property values, active users, velocity, gauges "
        "against limits, traits) from a history, rank them by how well they predict converting on a time "
        "split, and propose a PQL definition backtested on the held-out accounts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("events", nargs="+", type=Path, metavar="EVENTS",
                        help="JSON Lines (plain or gzip) or Parquet files, directories or globs of events")
    parser.add_argument("--conversions", metavar="NAMES", default=None,
                        help="comma-separated conversion event names (default: Subscription Started, "
                        "Plan Upgraded, Order Completed)")
    parser.add_argument("--window", type=float, default=30.0, metavar="DAYS",
                        help="a snapshot is labelled converting when it converts within DAYS after it (default 30)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write discover.json, discover.html and proposed.yaml into DIR")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--partitions", default="auto", metavar="N",
                        help="as for `pqlflow backtest`: 1 holds the history in memory, N > 1 reads it one "
                        "partition of accounts at a time (same results), auto (default) chooses by size")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The analysis is imported here: building the parser for another command should not pay for it.
    from pqlflow.analysis.discover import run_discover
    from pqlflow.analysis.discover_report import render_html, render_json, render_text
    from pqlflow.analysis.partitions import parse_partitions

    if not args.window > 0:
        raise UsageError(f"--window {args.window:g}: must be a positive number of days")
    names = args.conversions.split(",") if args.conversions is not None else None
    partitions = parse_partitions(args.partitions)
    result = run_discover(args.events, conversions=names, window_days=args.window, partitions=partitions)
    data = result.to_dict()
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "discover.json").write_text(render_json(data), encoding="utf-8")
            (args.out / "discover.html").write_text(render_html(data), encoding="utf-8")
            if result.proposal_yaml:
                (args.out / "proposed.yaml").write_text(result.proposal_yaml, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{args.out}: cannot write the results ({exc.strerror or exc})") from None
    sys.stdout.write(render_json(data) if args.json else render_text(data))
    if args.out is not None and not args.json:
        print(f"written: {args.out / 'discover.html'}, {args.out / 'discover.json'}"
              + (f", {args.out / 'proposed.yaml'}" if result.proposal_yaml else ""))
        if result.proposal_yaml:
            files = " ".join(str(p) for p in args.events)
            print(f"on the whole history: pqlflow backtest {files} --definition {args.out / 'proposed.yaml'}")
            if names is not None:
                print("  (backtest counts its own conversions: Subscription Started, Plan Upgraded, Order Completed)")
    return 0
