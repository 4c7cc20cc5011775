"""`pqlflow replay`: run a usage history through the whole system locally, on simulated time, and show what it did."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pqlflow.analysis.report import table
from pqlflow.kernel.errors import UsageError

_EPILOG = """\
EVENTS are JSON Lines files of Segment messages (track, identify, group, page, screen), or of EventBridge
events whose `detail` is the message. They are sorted by timestamp and put on the local event bus in
steps of simulated time; every function of template.yaml runs in-process against an embedded AWS
emulator (moto), with no AWS account. Time is simulated from the events: windows, decay, cooldowns,
quiet hours and offer expiry follow it.

Writes to DIR (replacing a previous replay there): transitions.jsonl, actions.jsonl, emails/ (.eml as
given to SES, and .html), offers.jsonl, tasks.jsonl, quarantine.jsonl, summary.json (counts,
invocations, AWS requests, estimated cost per million events) and report.html. See docs/replay.md.

Examples:
  pqlflow replay events/demo/history.jsonl
  pqlflow replay export.jsonl --definition my-pql.yaml --policy examples/policies/sales-led.yaml --out run2
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pqlflow.local import DEFAULT_SAMPLE_ACCOUNTS

    parser = subparsers.add_parser(
        "replay",
        help="replay a usage history through the whole system locally (what would pqlflow have done?)",
        description="Replay an exported usage history through every function of template.yaml, locally, "
        "on simulated time, and write the transitions, actions, emails, offers, tasks and a report.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("events", nargs="+", type=Path, metavar="EVENTS", help="JSON Lines file(s) of events")
    parser.add_argument("--definition", type=Path, metavar="FILE",
                        help="PQL definition to publish first (default: the bundled default definition)")
    parser.add_argument("--policy", type=Path, metavar="FILE",
                        help="nurture policy for the route function (default: the template's NurturePolicyFile)")
    parser.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output folder (default out/)")
    parser.add_argument("--template", type=Path, default=Path("template.yaml"), metavar="FILE",
                        help="the SAM template to run (default ./template.yaml)")
    parser.add_argument("--step-hours", type=float, default=6.0, metavar="H",
                        help="simulated time fed per step before the system runs until idle (default 6)")
    parser.add_argument("--price-sample", type=int, default=DEFAULT_SAMPLE_ACCOUNTS, metavar="N",
                        help="accounts whose events the cost estimate runs through ingest and qualify in the batches "
                        f"AWS would form (default {DEFAULT_SAMPLE_ACCOUNTS}; 0 = price replay's own batches, "
                        "which understates ingest)")
    parser.add_argument("--simulate-recipients", action="store_true",
                        help="simulated people open, click and unsubscribe from the emails and view, accept or "
                        "dismiss the offers (a hash of each action decides; `make demo` uses it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pqlflow.local.replay import DEFAULT_MAX_BATCH, ProgressBar, replay

    if not args.step_hours > 0:
        raise UsageError(f"--step-hours {args.step_hours:g}: must be a positive number of hours")
    if args.price_sample < 0:
        raise UsageError(f"--price-sample {args.price_sample}: must be 0 (no pricing run) or more accounts")
    summary = replay(
        args.events,
        out=args.out,
        template=args.template,
        definition=args.definition,
        policy=args.policy,
        step_seconds=args.step_hours * 3600,
        max_batch=DEFAULT_MAX_BATCH,
        progress=None if args.no_progress else ProgressBar(sys.stderr),
        price_sample=args.price_sample,
        simulate_recipients=args.simulate_recipients,
    )
    sys.stdout.write(render_summary(summary, args.out))
    return 0


def _worth_rows(worth: dict[str, Any]) -> list[list[str]]:
    """What PQLs were worth, in two lines (the whole tables are in report.html and summary.json)."""
    rows = []
    customers = worth.get("customers")
    if customers:
        from pqlflow.analysis.worth import amount_unit

        currency = amount_unit(customers)

        def line(g: dict[str, Any]) -> str:
            rate = "—" if g["conversion_rate"] is None else f"{g['conversion_rate']:.1%}"
            ltv = "—" if g["ltv_per_customer"] is None else f"{currency}{g['ltv_per_customer']:,.0f}"
            return f"{g['customers']} of {g['accounts']} ({rate}), LTV so far {ltv} per customer"

        rows.append(["customers", f"{customers['pql']['customers'] + customers['other']['customers']:,}",
                     f"PQL-sourced {line(customers['pql'])}; others {line(customers['other'])}"])
    steps = worth.get("steps")
    if steps and steps["steps"]:
        measured = sum(1 for r in steps["steps"] if r["lift"]["enough"])
        rows.append(["journey steps × channels", f"{len(steps['steps']):,}",
                     f"{measured} with enough data for a lift interval against the holdout (report.html)"])
    return rows


def render_summary(summary: dict[str, Any], out: Path) -> str:
    """The closing table: what pqlflow would have done, what it took, and what it would cost."""
    c = summary["counts"]
    i = summary["input"]
    cost = summary["cost"]
    rows = [
        ["events replayed", f"{i['events']:,}", f"{i['start']} → {i['end']}"],
        ["quarantined", f"{c['quarantined']:,}", "rejected by ingest, with reasons"],
        ["PQL transitions", f"{c['transitions']:,}",
         f"{c['qualified']} qualified · {c['disqualified']} disqualified · {c['converted']} converted · "
         f"{c.get('churned', 0)} churned"],
        ["accounts qualified", f"{c['accounts_qualified']:,}",
         f"definition {summary['definition']['name']} v{summary['definition']['version']}"],
        ["nurture actions", f"{c['actions']:,}",
         " · ".join(f"{k} {v}" for k, v in c["actions_by_outcome"].items())],
        ["emails", f"{c['emails']:,}", "emails/*.eml (exact MIME sent to SES) and .html"],
        ["in-app offers", f"{c['offers']:,}", "offers.jsonl"],
        ["rep tasks", f"{c['tasks']:,}", "tasks.jsonl"],
    ]
    if stopped := c.get("journeys_stopped"):
        rows.append(["journeys ended", f"{sum(stopped.values()):,}",
                     " · ".join(f"{k.replace('_', ' ')} {v}" for k, v in stopped.items())])
    if people := summary.get("simulated_recipients"):
        rows.append(["simulated recipients", f"{sum(people.values()):,}",
                     " · ".join(f"{k.removeprefix('Email ').lower()} {v}" for k, v in people.items())])
    rows += [
        ["Lambda invocations", f"{sum(summary['lambda']['invocations'].values()):,}",
         " · ".join(f"{k.removesuffix('Function')} {v}" for k, v in summary["lambda"]["invocations"].items())],
        ["AWS requests", f"{sum(sum(ops.values()) for ops in summary['aws_requests'].values()):,}",
         " · ".join(f"{svc} {sum(ops.values())}" for svc, ops in summary["aws_requests"].items())],
        ["cost / million events", f"${cost['total_per_million']:.2f}",
         f"EventBridge ingest ${cost['eventbridge_ingest_per_million']:.2f} + pqlflow "
         f"${cost['pqlflow_per_million']:.2f} ({(cost['ratio_to_ingest'] or 0):.0%} of ingest; target ≤ 50%)"],
    ]
    rows += _worth_rows(summary.get("worth") or {})
    pipeline = cost.get("usage_pipeline")
    if pipeline:
        transport = pipeline.get("transport", "sqs")
        via = "Firehose objects" if transport == "firehose" else f"{transport} batches"
        rows.append(["", "", f"ingest + qualify priced as AWS delivers them (the template's IngestTransport: "
                     f"{via}): {pipeline['ingest_batches']:,} "
                     f"ingest invocations ({pipeline['events_per_batch']:.2f} events each), run on "
                     f"{pipeline['sampled_accounts']} of {pipeline['accounts']} accounts"])
    else:
        rows.append(["", "", "priced on replay's own batches (--price-sample 0): understates ingest"])
    text = table(["", "count", ""], rows, [False, True, False])
    return (
        f"\n{text}\n\nOutput in {out}/ (summary.json, report.html) · replayed in {summary['seconds']:.0f} s\n"
    )
