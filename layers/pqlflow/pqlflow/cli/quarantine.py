"""`pqlflow quarantine list`: the usage events ingest rejected, with the reason and the raw body."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict

from pqlflow.kernel.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("quarantine", help="inspect usage events that ingest rejected")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="list quarantined events, newest first")
    ls.add_argument("--table", default=os.environ.get("TABLE_NAME"),
                    help="the pqlflow table (default: $TABLE_NAME; the stack's TableName output)")
    ls.add_argument("--days", type=int, default=7, help="how many days back to look (default 7)")
    ls.add_argument("--limit", type=int, default=50, help="show at most this many (default 50)")
    ls.add_argument("--raw", action="store_true", help="print each raw body in full")
    ls.add_argument("--json", action="store_true", help="JSON Lines, one event per line")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    if not args.table:
        raise UsageError("--table is required (or set TABLE_NAME): the stack's TableName output")
    if args.days < 1 or args.limit < 1:
        raise UsageError("--days and --limit must be at least 1")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from pqlflow.ingest.quarantine import list_quarantine

    shown = 0
    reasons: Counter[str] = Counter()
    try:
        for event in list_quarantine(boto3.client("dynamodb"), args.table, args.days):
            reasons[event.field] += 1
            if shown >= args.limit:
                continue
            shown += 1
            if args.json:
                print(json.dumps(asdict(event)))
                continue
            raw = event.raw if args.raw else (event.raw[:160] + "…" if len(event.raw) > 160 else event.raw)
            print(f"{event.received_at}  {event.message_id or '-'}\n  reason: {event.reason}\n  raw:    {raw}")
    except (ClientError, BotoCoreError) as exc:
        raise UsageError(f"cannot read table {args.table!r}: {exc}") from None
    if not args.json:
        total = sum(reasons.values())
        by_field = ", ".join(f"{f} {n}" for f, n in reasons.most_common())
        suffix = f" — by field: {by_field}" if total else ""
        print(f"{total} quarantined event(s) in the last {args.days} day(s){suffix}", file=sys.stderr)
    return 0
