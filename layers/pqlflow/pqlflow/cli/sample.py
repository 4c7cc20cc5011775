"""`pqlflow sample`: write a synthetic, seed-deterministic usage history (Segment JSON Lines) to try on."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pqlflow.analysis.sample import Sample, SampleConfig, parse_start
from pqlflow.contracts.usage_events import DEFAULT_RETENTION_DAYS
from pqlflow.kernel.errors import UsageError

_EPILOG = """\
The same seed and options give a byte-identical file. Without --start the history ends at today's
UTC midnight (so it is inside the 90-day retention window all day); replay simulates time from the
events, so a fixed --start is fine there and keeps the file identical from day to day.
--duplicates and --shuffle-window damage delivery (redelivered copies, out-of-order messages) without
changing the set of distinct messages: compare a damaged file's results with the clean one's.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate a synthetic usage history (freemium B2B SaaS) as Segment JSON Lines",
        description="Generate a realistic synthetic usage history of a freemium B2B SaaS: accounts, users, "
        "plans and limits, behaviors driven by a hidden propensity to convert, and conversions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--accounts", type=int, default=200, help="number of accounts (default 200)")
    parser.add_argument("--days", type=int, default=60, help="days of history (default 60)")
    parser.add_argument("--start", type=str, default=None, metavar="YYYY-MM-DD",
                        help="first day (UTC); default: the history ends at today's UTC midnight")
    parser.add_argument("--events", type=int, default=None, metavar="N",
                        help="aim for about N events by scaling the intensity of chatty behaviors")
    parser.add_argument("--duplicates", type=float, default=0.0, metavar="RATE",
                        help="share of messages delivered a second time, up to 1,000 lines later (default 0)")
    parser.add_argument("--shuffle-window", type=int, default=0, metavar="N",
                        help="deliver messages out of order, each at most N lines from its place (default 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="output file (default stdout)")
    parser.add_argument("--answers", type=Path, default=None, metavar="FILE",
                        help="also write the hidden truth (propensity, milestones, conversions) as JSON")
    parser.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SampleConfig(
        seed=args.seed,
        accounts=args.accounts,
        days=args.days,
        start=parse_start(args.start) if args.start is not None else None,
        events=args.events,
        duplicates=args.duplicates,
        shuffle_window=args.shuffle_window,
    )
    started = time.perf_counter()
    sample = Sample(config)
    if args.out is None:
        try:
            sample.write(sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # `pqlflow sample | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    else:
        try:
            with args.out.open("w", encoding="utf-8", newline="\n") as out:
                sample.write(out)
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    elapsed = time.perf_counter() - started
    if args.answers is not None:
        try:
            args.answers.write_text(json.dumps(sample.answers(), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--answers {args.answers}: cannot write ({exc.strerror or exc})") from None
    if not args.quiet:
        if config.start is None and config.days > DEFAULT_RETENTION_DAYS:
            print(f"pqlflow sample: note: events older than {DEFAULT_RETENTION_DAYS} days are outside live "
                  "ingest's retention window (replay and backtest simulate time and are unaffected)",
                  file=sys.stderr)
        st = sample.stats
        where = args.out if args.out is not None else "stdout"
        extra = f" + {st.duplicates:,} redelivered copies" if st.duplicates else ""
        rate = st.lines / elapsed if elapsed > 0 else 0.0
        print(f"pqlflow sample: {st.messages:,} messages{extra} for {st.accounts:,} accounts "
              f"({st.converted:,} converted), {st.start} to {st.end}, to {where} "
              f"in {elapsed:.1f} s ({rate:,.0f} lines/s)", file=sys.stderr)
    return 0
