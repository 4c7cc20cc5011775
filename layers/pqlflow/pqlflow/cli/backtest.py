"""`pqlflow backtest`: evaluate PQL definitions against an exported usage history, in memory, and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pqlflow.analysis.backtest import no_valid_event
from pqlflow.analysis.columnar import ENGINES, run_backtest_engine
from pqlflow.analysis.partitions import parse_partitions
from pqlflow.analysis.report import render_html, render_json, render_text
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.definition import load_definition

_EPILOG = """\
EVENTS are JSON Lines files (plain or gzip) of Segment messages (track, identify, group, page, screen), or
of EventBridge events whose `detail` is the message; or Parquet files, directories of them (every *.parquet
under it) or globs, one row per message or one table per event as Segment's warehouse and Data Lakes
exports write them (column mapping: docs/backtest.md; needs DuckDB: pip install 'pqlflow[parquet]').
The kind of a file is told by its first bytes. Duplicates (same messageId) count once; events are sorted by their
timestamp before they are replayed, so an export in any order gives the same answer. A bad line is
reported with its line (or row) number and skipped; it never stops the run. A history with no valid
event at all is an error (exit 2), with the first bad line's reason.

Conversion means a conversion event (e.g. Subscription Started) within --window days after the account
qualified; for accounts that never qualified, at any time in the history.

Examples:
  pqlflow backtest history.jsonl --definition examples/definitions/slack-messages.yaml
  pqlflow backtest a.jsonl b.jsonl --definition new.yaml --compare current.yaml --out report/
  pqlflow backtest history.jsonl.gz 'lake/segment-data/*/*.parquet' --definition scoring.yaml
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="test a PQL definition against exported usage history (volume, conversion, lift, sweeps)",
        description="Replay an exported usage history through a PQL definition in memory (no AWS) "
        "and measure "
        "how well it predicts upgrades: PQLs per week, PQL vs non-PQL conversion, precision, recall, lift, "
        "time to conversion, per-signal lift and threshold sweeps.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "events",
        nargs="+",
        type=Path,
        metavar="EVENTS",
        help="JSON Lines (plain or gzip) or Parquet files, directories or globs of events",
    )
    parser.add_argument(
        "--definition", required=True, type=Path, metavar="FILE", help="the PQL definition (YAML)"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="FILE2",
        help="a second definition to compare side by side on the same history",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="conversion window after qualification, in days (default 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write report.html (and report.json) into DIR"
    )
    parser.add_argument(
        "--partitions",
        default="auto",
        metavar="N",
        help="1: hold the whole history in memory; N > 1: spill it by account into N temporary files and "
        "run them one at a time (histories larger than memory; same answers); auto (default): in memory "
        "up to ~2M events (estimated from the files' sizes), else ~1M events per partition",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="reference",
        help="reference (default): the event-by-event engine; columnar (experimental): DuckDB reads and "
        "aggregates the history (one lifetime-count rule; an error for other definitions); auto: columnar "
        "when DuckDB is installed, the definitions are in its subset and the history fits in memory. The "
        "columnar engine hands a history it cannot answer exactly (a bad line, a same-millisecond tie, a key "
        "given twice...) to the reference, and the output says so. It is not the default because it is "
        "not faster once it checks all that (docs/backtest.md)",
    )
    parser.add_argument(
        "--no-decode-baseline",
        action="store_true",
        help="skip timing bare JSON decoding of the same files (saves one pass)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.window > 0:
        raise UsageError(f"--window {args.window:g}: must be a positive number of days")
    definitions = [(load_definition(args.definition), str(args.definition))]
    if args.compare is not None:
        definitions.append((load_definition(args.compare), str(args.compare)))
    partitions = parse_partitions(args.partitions)
    result = run_backtest_engine(
        args.events,
        definitions,
        engine=args.engine,
        window_days=args.window,
        measure_decode=not args.no_decode_baseline,
        partitions=partitions,
    )
    reason = no_valid_event(result.history)
    if reason is not None:
        raise UsageError(reason)
    data = result.to_dict()
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "report.html").write_text(render_html(data), encoding="utf-8")
            (args.out / "report.json").write_text(render_json(data), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{args.out}: cannot write the report ({exc.strerror or exc})") from None
    sys.stdout.write(render_json(data) if args.json else render_text(data))
    if not args.json:
        print(engine_line(result.engine, result.fallback))
    if args.out is not None and not args.json:
        print(f"report: {args.out / 'report.html'}")
    return 0


def engine_line(engine: str, fallback: str | None) -> str:
    """The line the text output ends with: which engine answered, and why not the columnar one."""
    if fallback is None:
        return f"engine: {engine}"
    return f"engine: {engine} (not columnar: {fallback})"
