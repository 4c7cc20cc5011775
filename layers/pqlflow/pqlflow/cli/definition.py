"""`pqlflow definition validate|explain|publish`: check a PQL definition, see why it fires, put it in force.

- `validate FILE...`: every error (file:line: key: message) and warning; exit 2 on an error.
- `explain FILE --state STATE`: which signals, rules and points fire for each account in STATE, and
  why. STATE is Segment messages (a JSON array, or JSON Lines; EventBridge envelopes work too),
  folded exactly as ingest folds them, or a usage item in DynamoDB JSON (`aws dynamodb get-item`
  output, or a stream record's NewImage).
- `publish FILE [--table NAME]`: validate, store as the file's `version`, make it active.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pqlflow.contracts.usage_events import Rejection, UsageEvent, parse_message
from pqlflow.ingest.usage import AccountUsage, GaugeError
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.yamlfile import read_text
from pqlflow.qualify.definition import load_definition
from pqlflow.qualify.evaluation import evaluate, iso
from pqlflow.qualify.language import Definition, DefinitionError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "definition",
        help="validate, explain and publish PQL definitions",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    validate = sub.add_parser("validate", help="check definition files: errors and warnings")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--strict", action="store_true", help="treat warnings as errors")
    validate.set_defaults(func=run_validate)

    explain = sub.add_parser("explain", help="show which signals, rules and points fire for an account state")
    explain.add_argument("file", metavar="FILE")
    explain.add_argument(
        "--state",
        required=True,
        metavar="STATE",
        help="Segment messages (JSON array or JSON Lines) or a usage item (DynamoDB JSON)",
    )
    explain.add_argument("--account", help="only this account id")
    explain.add_argument("--at", help="evaluate at this ISO 8601 time (default: the state's last event)")
    explain.add_argument(
        "--was-qualified",
        action="store_true",
        help="the account is already qualified (hysteresis: the lower score applies)",
    )
    explain.set_defaults(func=run_explain)

    publish = sub.add_parser("publish", help="store a definition as a new version and make it active")
    publish.add_argument("file", metavar="FILE")
    publish.add_argument("--table", default=None, help="DynamoDB table (default: $TABLE_NAME)")
    publish.set_defaults(func=run_publish)


# ---- validate ----------------------------------------------------------------------------------------


def run_validate(args: argparse.Namespace) -> int:
    failed = False
    for file in args.files:
        try:
            defn = load_definition(file)
        except DefinitionError as exc:
            failed = True
            for error in exc.all:
                print(f"error: {error}", file=sys.stderr)
            continue
        for warning in defn.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.strict and defn.warnings:
            failed = True
            continue
        signals = f"{len(defn.signals)} signal{'' if len(defn.signals) == 1 else 's'}"
        print(
            f"{file}: ok: {defn.name} v{defn.version} ({defn.unit}; {signals}"
            f"{'; rules' if defn.qualify else ''}{'; points' if defn.points else ''})"
        )
    return 2 if failed else 0


# ---- explain -----------------------------------------------------------------------------------------


def run_explain(args: argparse.Namespace) -> int:
    defn = load_definition(args.file)
    for warning in defn.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    subjects = load_state(args.state, defn)
    if args.account is not None:
        subjects = [u for u in subjects if u.account_id == args.account]
        if not subjects:
            raise UsageError(f"{args.state}: no account {args.account!r} in this state")
    at_ms = _parse_at(args.at) if args.at else None
    for i, usage in enumerate(subjects):
        now = at_ms if at_ms is not None else usage.last_seen_ms
        if now is None:
            continue
        if i:
            print()
        who = usage.account_id + (f" / user {usage.user_id}" if usage.user_id else "")
        print(f"== {who}")
        ev = evaluate(defn, usage, now, was_qualified=args.was_qualified)
        for line in ev.explain:
            print(line)
    return 0


def _parse_at(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: expected an ISO 8601 time like 2024-05-01T12:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        raise UsageError(f"--at: {text!r} has no time zone (add Z for UTC)")
    return int(moment.timestamp() * 1000)


def load_state(path: str, defn: Definition) -> list[AccountUsage]:
    """Usage states from a file: folded Segment messages, or decoded usage items (DynamoDB JSON)."""
    text = read_text(path, lambda problem: UsageError(f"{path}: {problem}"))
    stripped = text.lstrip()
    records: list[tuple[int, Any]]
    if stripped.startswith("["):
        try:
            records = [(1, m) for m in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    else:
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            if isinstance(whole.get("Items"), list):  # `aws dynamodb query` of the account: hot + cold items
                return [_decode_items(whole["Items"], path)]
            image = (
                whole.get("Item")
                or whole.get("NewImage")
                or whole.get("dynamodb", {}).get("NewImage")
                or whole
            )
            if "pk" in image and isinstance(image["pk"], dict):
                return [_decode_items([image], path)]
            records = [(1, whole)]
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
    return fold(records, defn, path)


def _decode_items(items: list[Any], path: str) -> AccountUsage:
    """An account's usage from its DynamoDB items: the usage item and, once compacted, its cold item."""
    from pqlflow.ingest.cold import COLD_KIND, ColdUsage, StaleCold
    from pqlflow.ingest.item import KIND, decode_image

    hot = [i for i in items if isinstance(i, dict) and i.get("kind", {}).get("S", KIND) == KIND]
    cold = [i for i in items if isinstance(i, dict) and i.get("kind", {}).get("S") == COLD_KIND]
    if not hot:
        raise UsageError(f"{path}: no usage item (kind usage) in the file")
    try:
        return decode_image(hot[0], ColdUsage.parse(cold[0]) if cold else None)
    except StaleCold:
        raise UsageError(f"{path}: the usage item has been compacted and its cold item is not in the file "
                         "(or is of another version); export both with: aws dynamodb query --table-name T "
                         "--key-condition-expression 'pk = :a AND begins_with(sk, :u)' --expression-attribute-values "
                         "'{\":a\": {\"S\": \"A#<account>\"}, \":u\": {\"S\": \"USAGE\"}}'") from None


def fold(records: list[tuple[int, Any]], defn: Definition, path: str) -> list[AccountUsage]:
    """Fold Segment messages into one AccountUsage per subject, as ingest does (deduplicated by messageId)."""
    events: list[UsageEvent] = []
    for line, message in records:
        if isinstance(message, dict) and "detail" in message and isinstance(message["detail"], dict):
            message = message["detail"]
        if not isinstance(message, dict):
            raise UsageError(f"{path}:{line}: expected a Segment message (a JSON object)")
        parsed = parse_message(message, now_s=4_102_444_800, retention_days=100_000)  # history: no age limit
        if isinstance(parsed, Rejection):
            raise UsageError(f"{path}:{line}: {parsed}")
        events.append(parsed)
    spec = defn.tracking_spec(_tracking_base())
    seen: set[str] = set()
    subjects: dict[tuple[str, str | None], AccountUsage] = {}
    for event in sorted(events, key=lambda e: e.ms):
        if event.message_id in seen:
            continue
        seen.add(event.message_id)
        user = event.user_id if defn.unit == "user" else None
        usage = subjects.setdefault((event.account_id, user), AccountUsage(event.account_id, user))
        try:
            usage.apply(event, spec)
        except GaugeError as exc:
            raise UsageError(f"{path}: message {event.message_id}: {exc.field}: {exc}") from None
    if not subjects:
        raise UsageError(f"{path}: no usage events in this state")
    return list(subjects.values())


def _tracking_base() -> Any:
    from pqlflow.ingest.usage import TrackingSpec

    names = os.environ.get("CONVERSION_EVENTS")
    if names:
        return TrackingSpec(conversions=frozenset(n.strip() for n in names.split(",") if n.strip()))
    return TrackingSpec()


# ---- publish -----------------------------------------------------------------------------------------


def run_publish(args: argparse.Namespace) -> int:
    table = args.table or os.environ.get("TABLE_NAME")
    if not table:
        raise UsageError("--table: give the table name (or set TABLE_NAME)")
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{args.file}: cannot read the file ({exc.__class__.__name__})") from None
    from pqlflow.qualify.store import DefinitionStore

    store = DefinitionStore(table)
    defn = load_definition(path)  # validate first: nothing reaches the table unless it is valid
    for warning in defn.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        result = store.publish(text, str(path))
    except UsageError:
        raise
    except Exception as exc:  # botocore errors: name the table, not the credentials
        raise UsageError(f"--table {table}: could not publish ({exc.__class__.__name__}: {exc})") from None
    verb = "re-activated" if result.reactivated else "published"
    print(f"{verb} {result.name} v{result.version} in {table} at {iso_now()}; it is now active")
    return 0


def iso_now() -> str:
    from pqlflow.kernel import clock

    return iso(clock.now_ms())
