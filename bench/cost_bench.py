"""Cost bench: pqlflow priced the way AWS bills it, at real arrival times, next to a naive baseline and replay.

Three traffic shapes go through the REAL ingest handler (functions/ingest/app.py) and the REAL qualify handler
(functions/qualify/app.py) on in-process moto:

- ingest batches are formed by `pqlflow.local.batching.sqs_batches` from the events' arrival times with the
  template's IngestBatchSize / IngestBatchingWindowSeconds (Parameters defaults; `--batch-size`, `--window`);
- every item write the handlers make produces the stream record DynamoDB would (NEW_AND_OLD_IMAGES, none for
  a write that changed nothing), filtered by the qualify mapping's FilterCriteria, batched by
  `stream_batches`' model (QualifyBatchSize, the mapping's MaximumBatchingWindowInSeconds, 6 MB) and fed to
  qualify at the time the batch would be invoked;
- `pqlflow.kernel.clock` is the simulated time of each invocation, so caches, dedupe and compaction windows
  see real time;
- `pqlflow.local.billing.Meter` prices every DynamoDB request by the item images before and after it (read
  from moto's backend, un-metered), every PutEvents by its entries; SQS requests (EventBridge's SendMessage
  per event, the poller's ReceiveMessage and DeleteMessageBatch per 10 messages of each batch), Lambda
  requests per batch and billed duration (the handler's measured CPU time, without the emulator's, plus a
  modelled wait of `--aws-latency-ms` per AWS request; the CPU time scaled by Lambda's CPU share at the
  template's MemorySize, `--cpu-scale`; rounded up to 1 ms; GB-s at that MemorySize).

Shapes (live windows are measured; histories only build realistic item state and are not priced):
- sparse: events/demo/history.jsonl (its first `--sparse-accounts` accounts, 15 of 60 by default, for time;
  0 = all), arrival = event timestamp, all of it measured; plus the figure `pqlflow replay` estimates for
  the same events (`pqlflow.local.replay.run_replay` + `summarize`, i.e. summary["cost"]), and the
  difference;
- busy: `--accounts` (1,000) accounts with 90 days of steady history over 10 event names (folded through the
  real handler for 12 prototype accounts, in 6-day batches, then copied to every account), then live traffic
  of one event per account every 2–3 minutes for `--minutes` (60: an hour holds each account's compaction
  once, at its real rate);
- hot: one account at 100,000 events/day (26 hours of history in hourly batches: its item is under size
  pressure) beside 100 ordinary accounts, live for `--minutes` (60).

The naive baseline gets the same live events in the same batches: per event one UpdateItem ADD on a small
per-account counter item, made idempotent by Powertools' idempotency utility (its record keyed by messageId:
a conditional PutItem, then the UpdateItem that completes it), SQS and Lambda priced the same way.

moto is made faster for the run (`moto_speedups`: the same results, a fraction of its CPU).

Run: .venv/bin/python bench/cost_bench.py [--shape sparse|busy|hot|all] [--accounts N] [--minutes M]
     [--window S] [--batch-size N] [--sparse-accounts N] [--aws-latency-ms MS] [--cpu-scale X] [--no-replay]
See docs/cost-model.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "pqlflow"), str(ROOT)]
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                  POWERTOOLS_TRACE_DISABLED="true", POWERTOOLS_METRICS_NAMESPACE="bench")
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)

DEVNULL = io.StringIO()  # what the functions print (Powertools logs and EMF metrics) goes nowhere


class _Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


NULL = _Null()

with contextlib.redirect_stdout(NULL):  # Powertools' logger binds sys.stdout when created
    import boto3
    from moto import mock_aws
    from pqlflow.ingest.objects import bodies, object_text
    from pqlflow.kernel import clock
    from pqlflow.local import pricing
    from pqlflow.local.billing import Bill, Meter, MotoImages, item_size
    from pqlflow.local.cost import PRICES
    from pqlflow.local.pricing import (
        ACCOUNT,
        REGION,
        Event,
        Faithful,
        Measured,
        Settings,
        add_transport,
        cpu_scale,
        message_account,
        moto_speedups,
        sqs_batches,
        transport_batches,
        wire,
    )

    from tests.support.events import iso
    from tests.support.lambda_context import LambdaContext

TEMPLATE = ROOT / "template.yaml"
HISTORY = ROOT / "events" / "demo" / "history.jsonl"
DAY_MS, HOUR_MS, MIN_MS = 86_400_000, 3_600_000, 60_000
LIVE_START_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z: a weekday morning
PROTOTYPES = 12
SPARSE_ACCOUNTS = 15
NAMES = [  # ~10 event names of a B2B SaaS, with weights
    ("Signed In", 18), ("Message Sent", 30), ("Feature Used", 12), ("Page Viewed", 10), ("File Uploaded", 8),
    ("Friend Added", 5), ("Contacts Updated", 6), ("Invite Sent", 3), ("Storage Updated", 5), ("Folder Shared", 3),
]


# ---- the template's settings ----------------------------------------------------------------------------


def template_settings(window: float | None, batch_size: int | None) -> Settings:
    """Everything from template.yaml (its Parameters defaults, or --window / --batch-size)."""
    overrides: dict[str, Any] = {}
    if window is not None:
        overrides["IngestBatchingWindowSeconds"] = window
    if batch_size is not None:
        overrides["IngestBatchSize"] = batch_size
    return pricing.template_settings(TEMPLATE, ROOT, overrides)


# ---- traffic ---------------------------------------------------------------------------------------------


def track(rng: random.Random, ms: int, account: str, user: str, seq: str, name: str) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": name, "messageId": seq, "timestamp": iso(ms),
                               "userId": user, "context": {"groupId": account}, "properties": {}}
    if name == "Page Viewed":
        message.update(type="page", name=rng.choice(["Dashboard", "Inbox", "Settings", "Pricing"]))
        message.pop("event")
    elif name == "Contacts Updated":
        message["properties"] = {"total": rng.randrange(100, 9_000)}
    elif name == "Storage Updated":
        message["properties"] = {"used_bytes": rng.randrange(10**6, 2 * 10**9)}
    elif name == "Feature Used":
        message["properties"] = {"feature": rng.choice(["export", "api", "sso", "reports"]),
                                 "tier": rng.choice(["free", "paid"])}
    return message


def group(ms: int, account: str, user: str, seq: str, rng: random.Random) -> dict[str, Any]:
    return {"type": "group", "messageId": seq, "timestamp": iso(ms), "userId": user, "groupId": account,
            "traits": {"name": f"Company {account}", "plan": rng.choice(["free", "trial"]),
                       "employees": rng.choice([5, 12, 40, 250]), "seats": rng.choice([5, 10]),
                       "industry": rng.choice(["software", "retail", "education"])}}


def choose_name(rng: random.Random) -> str:
    return rng.choices([n for n, _ in NAMES], weights=[w for _, w in NAMES])[0]


def users_of(proto: int, rng: random.Random) -> list[str]:
    """Users of a prototype account; its copies share them (fingerprints are per account item anyway)."""
    return [f"usr-{proto:03d}-{k}" for k in range(rng.choice([1, 2, 3, 4, 5, 8]))]


def steady_history(protos: int, days: int, per_day: int, end_ms: int, seed: int,
                   fold_days: int = 6) -> list[list[Event]]:
    """Batches of `protos` accounts' steady usage, oldest first, the last 24 hours (ending at `end_ms`) in a
    batch of their own, the days before in batches of `fold_days` days.

    Accounts differ in activity (a mean of 0.25× to 2× `per_day` events a day, 1–8 users). A day older than
    the last 24 hours is folded into per-day counts by compaction, whatever hours its events had, so its
    events are stamped within one hour of the day (one slot per name to fold, instead of one per hour and
    name: the same item, a fraction of the emulator's time); the last 24 hours stay pending in the item
    and are spread over the hours as live traffic is. Compaction folds a batch's days when the next batch
    comes (their hours untouched for the dedupe window), so the item at the end is the one daily batches
    would leave, in a sixth of the requests.
    """
    rng = random.Random(seed)
    users = {p: users_of(p, random.Random(f"users-{p}")) for p in range(protos)}
    rates = {p: per_day * rng.uniform(0.25, 2.0) for p in range(protos)}
    daily: list[list[Event]] = []
    n = 0
    for d in range(days):
        start = end_ms - (days - d) * DAY_MS
        last = d == days - 1
        batch = []
        for p in range(protos):
            account = proto_id(p)
            if d == 0:
                n += 1
                batch.append(Event(start, group(start, account, users[p][0], f"h-{seed}-{n}", rng)))
            hour = start + rng.randrange(1, 23) * HOUR_MS
            for _ in range(max(1, int(rng.gauss(rates[p], rates[p] / 4)))):
                n += 1
                ms = start + rng.randrange(DAY_MS) if last else hour + rng.randrange(HOUR_MS)
                batch.append(Event(ms, track(rng, ms, account, rng.choice(users[p]), f"h-{seed}-{n}",
                                             choose_name(rng))))
        daily.append(batch)
    out = [sum(daily[i:min(i + fold_days, days - 1)], []) for i in range(0, days - 1, fold_days)]
    return out + daily[-1:]


def proto_id(p: int) -> str:
    return f"proto-{p:03d}"


def account_id(i: int) -> str:
    return f"acct-{i:05d}"


def live_traffic(accounts: int, start_ms: int, minutes: float, seed: int, gap_s: tuple[float, float] = (120, 180),
                 first: int = 0) -> list[Event]:
    """One event per account every 2–3 minutes, random phases; account i uses prototype i % PROTOTYPES's users."""
    rng = random.Random(seed)
    proto_users = {p: users_of(p, random.Random(f"users-{p}")) for p in range(PROTOTYPES)}
    end = start_ms + int(minutes * MIN_MS)
    events = []
    for i in range(first, first + accounts):
        account = account_id(i)
        users = proto_users[i % PROTOTYPES]
        ms = start_ms + rng.randrange(int(gap_s[1] * 1000))
        k = 0
        while ms < end:
            k += 1
            events.append(Event(ms, track(rng, ms, account, rng.choice(users), f"live-{account}-{k}",
                                          choose_name(rng))))
            ms += int(rng.uniform(*gap_s) * 1000)
    events.sort(key=lambda e: e.arrival_ms)
    return events


def hot_traffic(start_ms: int, end_ms: int, per_day: int, seed: int, prefix: str) -> list[Event]:
    """The hot account: Poisson arrivals at `per_day`, 20 users."""
    rng = random.Random(seed)
    users = [f"hot-user-{k}" for k in range(20)]
    mean_ms = DAY_MS / per_day
    events = []
    ms = float(start_ms)
    k = 0
    while True:
        ms += rng.expovariate(1 / mean_ms)
        if ms >= end_ms:
            return events
        k += 1
        events.append(Event(int(ms), track(rng, int(ms), "hot-0001", rng.choice(users), f"{prefix}-{k}",
                                           choose_name(rng))))


def demo_history(accounts: int | None) -> tuple[list[Event], list[str]]:
    """The demo history (arrival = timestamp, stable), or the events of its first `accounts` accounts (in order
    of first appearance) with the JSON Lines they came from, for replay to read the same subset."""
    from pqlflow.local.replay import _parse_time

    lines = [line for line in HISTORY.read_text().splitlines() if line.strip()]
    messages = [json.loads(line) for line in lines]
    if accounts is not None:
        order: dict[str, None] = {}
        for m in messages:
            order.setdefault(message_account(m), None)
        keep = set(list(order)[:accounts])
        picked = [(line, m) for line, m in zip(lines, messages, strict=True) if message_account(m) in keep]
        lines, messages = [p[0] for p in picked], [p[1] for p in picked]
    events = []
    for message in messages:
        ms = _parse_time(message.get("timestamp"))
        events.append(Event(ms if ms is not None else 0, message))
    events.sort(key=lambda e: e.arrival_ms)
    return events, lines


# ---- the systems -----------------------------------------------------------------------------------------


class Pqlflow(Faithful):
    """The faithful run (`pqlflow.local.pricing.Faithful`), plus the busy shape's account copies."""

    def copy_accounts(self, mapping: dict[str, str]) -> None:
        """Copy each prototype's items (pk A#<proto>) to other accounts, renaming the account inside. Archive
        items (fingerprints of folded hours) are not copied: only a late copy reads them, and live traffic has
        none (a prototype's ~2,000 of them, copied to 1,000 accounts, would only fill the emulator)."""
        backend = MotoImages(ACCOUNT, REGION).backend
        table = backend.get_table(self.s.table)  # written directly: setup, not a request anyone pays
        protos: dict[str, list[dict[str, Any]]] = {}
        for item in table.all_items():
            attrs = item.to_json()["Attributes"]
            pk = attrs["pk"]["S"]
            if pk.startswith("A#proto-") and not attrs["sk"]["S"].startswith("USAGE#F#"):
                protos.setdefault(pk[2:], []).append(wire(attrs))
        for target, proto in mapping.items():
            for attrs in protos.get(proto, []):
                text = json.dumps(attrs).replace(proto, target)
                table.put_item(_bytes_item(json.loads(text)))


def _bytes_item(item: dict[str, Any]) -> dict[str, Any]:
    def conv(v: dict[str, Any]) -> dict[str, Any]:
        ((kind, inner),) = v.items()
        if kind == "B":
            return {"B": base64.b64decode(inner)}
        if kind == "BS":
            return {"BS": [base64.b64decode(x) for x in inner]}
        if kind == "M":
            return {"M": {k: conv(x) for k, x in inner.items()}}
        if kind == "L":
            return {"L": [conv(x) for x in inner]}
        return v

    return {k: conv(v) for k, v in item.items()}


class Baseline:
    """The naive ingest: per event an idempotency record (Powertools) and an UpdateItem ADD on a counter."""

    def __init__(self, settings: Settings, latency_ms: float, cpu_scale: float | None) -> None:
        self.s = settings
        self.latency_ms = latency_ms
        self.cpu_scale = cpu_scale
        self.meter = Meter(MotoImages(ACCOUNT, REGION))
        self.now_ms = 0

    def run(self, name: str, events: list[Event], batches: list[Any], transport: str = "sqs",
            span_ms: int | None = None) -> Measured:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        session = boto3.session.Session(region_name=REGION)
        plain = session.client("dynamodb")
        plain.create_table(TableName="baseline-counters", BillingMode="PAY_PER_REQUEST",
                           AttributeDefinitions=self.s.table_args["AttributeDefinitions"],
                           KeySchema=self.s.table_args["KeySchema"])
        plain.create_table(TableName="baseline-idempotency",
                           AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
        self.meter.attach(session.events)
        client = session.client("dynamodb")
        persistence = DynamoDBPersistenceLayer(table_name="baseline-idempotency", boto3_client=client)
        config = IdempotencyConfig(event_key_jmespath="messageId", raise_on_no_idempotency_key=True)

        @idempotent_function(data_keyword_argument="message", persistence_store=persistence, config=config)
        def count_event(message: dict[str, Any]) -> dict[str, Any]:
            account = (message.get("context") or {}).get("groupId") or message.get("groupId") or message["userId"]
            client.update_item(TableName="baseline-counters", Key={"pk": {"S": f"A#{account}"}, "sk": {"S": "C"}},
                               UpdateExpression="ADD #n :one",
                               ExpressionAttributeNames={"#n": message.get("event") or message.get("type", "?")},
                               ExpressionAttributeValues={":one": {"N": "1"}})
            return {"ok": True}

        s3 = session.client("s3")
        firehose_s3 = boto3.session.Session(region_name=REGION).client("s3")  # Firehose's: not metered
        firehose_s3.create_bucket(Bucket="baseline-objects")

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            config.register_lambda_context(context)
            if event.get("source") == "aws.s3":  # a Firehose object: one event per line
                data = s3.get_object(Bucket="baseline-objects", Key=event["detail"]["object"]["key"])["Body"].read()
                for body in bodies(object_text(data)):
                    count_event(message=json.loads(body)["detail"])
                return {"batchItemFailures": []}
            for record in event["Records"]:
                count_event(message=json.loads(record["body"])["detail"])
            return {"batchItemFailures": []}

        with self.meter.emulator_excluded():
            for n, b in enumerate(batches):
                if transport == "firehose":
                    key = f"o-{n}.gz"
                    data = pricing.firehose_object([e.record()["body"] for e in events[b.start:b.stop]])
                    firehose_s3.put_object(Bucket="baseline-objects", Key=key, Body=data)
                    event = pricing.object_created("baseline-objects", key, len(data))
                else:
                    event = {"Records": [e.record(i) for i, e in enumerate(events[b.start:b.stop])]}
                with self.meter.invocation("ingest"):
                    handler(event, LambdaContext(function_name="baseline"))
                for e in events[b.start:b.stop]:
                    e._record = None
        bill = Bill()
        add_transport(bill, transport, events, batches, span_ms)
        bill.add_invocations("ingest", self.meter.invocations, self.s.ingest_memory, self.latency_ms,
                             cpu_scale(self.s.ingest_memory, self.cpu_scale))
        self.meter.add_to(bill)
        self.meter.detach()
        return Measured(name, len(events), bill, self.meter, len(batches))


# ---- replay's own estimate -------------------------------------------------------------------------------


def replay_estimate(history: Path, sample: int) -> dict[str, Any]:
    """`pqlflow replay`'s cost estimate of a history (summary["cost"]), whole and restricted to what this
    bench's faithful measurement covers (ingest, qualify, the transport to ingest, transitions on the bus)."""
    from pqlflow.local.replay import TRANSITION_TYPES, run_replay, summarize

    started = time.process_time()
    result = run_replay([history], template=TEMPLATE, root=ROOT, function_output=io.StringIO(),
                        price_sample=sample)
    cost = summarize(result, {})["cost"]
    lines = cost["lines"]
    transitions = sum(1 for e in result.observed if e.get("detail-type") in TRANSITION_TYPES)
    def line(name: str) -> float:
        return float((lines.get(name) or {}).get("per_million_events", 0.0))

    by_service = {"SQS": line("usage_sqs"), "Firehose": line("usage_firehose"), "S3": line("usage_s3"),
                  "Lambda": line("usage_lambda"), "DynamoDB": line("usage_dynamodb"),
                  "EventBridge": line("usage_object_events")
                  + transitions / result.stats.events * PRICES["eventbridge_per_million_events"]}
    return {"cost": cost, "scoped": sum(by_service.values()), "by_service": by_service,
            "cpu_seconds": time.process_time() - started, "pipeline": cost["usage_pipeline"]}


# ---- printing --------------------------------------------------------------------------------------------


def pct(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def stats_of(m: Measured, kind: str | None) -> dict[str, Any]:
    sizes = [b for (fn, k), v in m.meter.write_bytes.items() if fn == "ingest" and kind in (None, k) for b in v]
    n = m.events
    return {
        "writes/event": m.meter.write_requests("ingest") / n,
        "WRU/event (ingest)": m.meter.wru("ingest") / n,
        "WRU/event (all)": m.meter.wru() / n,
        "item bytes p50": pct(sizes, 0.5), "item bytes p90": pct(sizes, 0.9), "item bytes max": max(sizes, default=0),
    }


def print_table(title: str, ours: Measured, base: Measured, notes: list[str]) -> None:
    n = ours.events
    keys = list(ours.bill.lines)
    keys += [k for k in base.bill.lines if k not in ours.bill.lines]
    print(f"\n== {title} ==")
    for note in notes:
        print(f"   {note}")
    head = (f"{'service':<12}{'operation':<40}{'pqlflow units/ev':>17}{'$/M ev':>9}"
            f"{'baseline units/ev':>19}{'$/M ev':>9}")
    print(head)
    print("-" * len(head))

    def cell(m: Measured, key: tuple[str, str]) -> tuple[str, str]:
        line = m.bill.lines.get(key)
        if line is None:
            return "", ""
        return f"{line.units / m.events:.4g} {line.unit}", f"{line.cost(m.bill.prices) / m.events * 1e6:.3f}"

    for service in ("SQS", "Kinesis", "Firehose", "S3", "Lambda", "DynamoDB", "EventBridge"):
        rows = [k for k in keys if k[0] == service]
        for key in rows:
            (ou, oc), (bu, bc) = cell(ours, key), cell(base, key)
            print(f"{service:<12}{key[1]:<40}{ou:>17}{oc:>9}{bu:>19}{bc:>9}")
        if rows:
            print(f"{'':<12}{service + ' total':<40}{'':>17}{ours.bill.per_million(n, service):>9.3f}"
                  f"{'':>19}{base.bill.per_million(base.events, service):>9.3f}")
    print("-" * len(head))
    print(f"{'':<12}{'everything pqlflow adds, $/M events':<40}{'':>17}{ours.bill.per_million(n):>9.3f}"
          f"{'':>19}{base.bill.per_million(base.events):>9.3f}")
    print(f"{'':<12}{'(EventBridge ingestion itself: reference)':<40}{'':>17}"
          f"{PRICES['eventbridge_per_million_events']:>9.3f}{'':>19}{PRICES['eventbridge_per_million_events']:>9.3f}")
    so, sb = stats_of(ours, "usage"), stats_of(base, None)
    for label in so:
        fmt = (lambda v: f"{v:,.0f}") if "bytes" in label else (lambda v: f"{v:.3f}")
        print(f"{'':<12}{label:<40}{fmt(so[label]):>17}{'':>9}{fmt(sb[label]):>19}")
    bi = ours.extra["batches"]
    print(f"{'':<12}{'ingest invocations (events/batch)':<40}{f'{len(bi):,} ({n / len(bi):.2f})':>17}")
    print(f"{'':<12}{'stream records → qualify (filtered out)':<40}"
          f"{f'{ours.stream_records - ours.filtered_out:,} ({ours.filtered_out:,})':>17}")
    delivered = ours.stream_records - ours.filtered_out
    per_batch = delivered / max(1, ours.qualify_batches)
    print(f"{'':<12}{'qualify invocations (records/batch)':<40}{f'{ours.qualify_batches:,} ({per_batch:.2f})':>17}")


# ---- shapes ----------------------------------------------------------------------------------------------


def shape_sparse(s: Settings, args: argparse.Namespace) -> None:
    started = time.process_time()
    events, lines = demo_history(args.sparse_accounts)
    accounts = len({message_account(e.message) for e in events})
    with mock_aws(), moto_speedups():
        ours = Pqlflow(s, args.aws_latency_ms, args.cpu_scale)
        ours.start()
        measured, base = measure(ours, s, args, "sparse", events, None)
    clock.set_source(None)
    cpu = time.process_time() - started
    subset = "all its" if args.sparse_accounts is None else f"the first {accounts} (--sparse-accounts) of its"
    notes = [f"events/demo/history.jsonl, {subset} accounts: {len(events):,} events, "
             f"{events[0].message['timestamp'][:10]} .. {events[-1].message['timestamp'][:10]}, "
             "arrival = event timestamp, all measured",
             settings_note(s, args), f"bench CPU {cpu:.0f} s (pqlflow + baseline)"]
    print_table("sparse (demo history)", measured, base, notes)
    if args.no_replay or args.transport != s.transport or args.firehose_interval != s.firehose_interval:
        return  # replay prices the template's transport
    with tempfile.TemporaryDirectory() as folder:
        history = HISTORY
        if args.sparse_accounts is not None:
            history = Path(folder) / "history.jsonl"
            history.write_text("\n".join(lines) + "\n")
        rep = replay_estimate(history, args.replay_sample)
    faithful = measured.bill.per_million(measured.events)
    whole, scoped = rep["cost"]["pqlflow_per_million"], rep["scoped"]
    pipe = rep["pipeline"]
    print(f"\n   pqlflow replay's own estimate for the same history (summary['cost'], {rep['cpu_seconds']:.0f} s CPU; "
          f"ingest and qualify priced on {pipe['sampled_accounts']} of {pipe['accounts']} accounts, "
          f"{pipe['sampled_events']:,} of {pipe['events']:,} events, in the batches of the whole history):")
    print(f"     all functions: ${whole:.3f}/M on top of EventBridge; "
          f"ingest + qualify + transport + transitions only: ${scoped:.3f}/M")
    print(f"     faithful figure (this bench, every account): ${faithful:.3f}/M → replay differs by "
          f"{(scoped - faithful) / faithful * 100:+.1f}% (same scope)")
    for svc, value in rep["by_service"].items():
        exact = measured.bill.per_million(measured.events, svc)
        print(f"     {svc:<12} replay ${value:.3f}/M   faithful ${exact:.3f}/M")


def measure(ours: Pqlflow, s: Settings, args: argparse.Namespace, name: str, events: list[Event],
            span_ms: int | None) -> tuple[Measured, Measured]:
    """pqlflow and the naive baseline on the same events, in the batches `--transport` forms."""
    batches = transport_batches(args.transport, events, s, args.firehose_interval, args.firehose_mb)
    measured = ours.run(name, events, batches, args.transport, span_ms)
    base = Baseline(s, args.aws_latency_ms, args.cpu_scale).run(name, events, batches, args.transport, span_ms)
    return measured, base


TRANSPORT_NOTES = {
    "sqs": "transport: EventBridge → SQS queue → ingest's event source mapping",
    "kinesis": "transport: EventBridge → Kinesis stream (provisioned, shards for the average rate) → ingest's "
               "event source mapping, same BatchSize and window (NOT in the template: priced only)",
    "firehose": "transport: EventBridge → Firehose → S3 object per buffer ({interval:g} s / {mb} MB, gzip, a line "
                "per event) → ingest's object handler, notified per object",
    "lambda": "transport: EventBridge → ingest as the rule's target, one asynchronous invocation per event "
              "(NOT in the template: priced only)",
}


def settings_note(s: Settings, args: argparse.Namespace) -> str:
    scale = cpu_scale(s.ingest_memory, args.cpu_scale)
    transport = TRANSPORT_NOTES[args.transport].format(interval=args.firehose_interval, mb=args.firehose_mb)
    return (f"{transport}; "
            f"template settings: ingest BatchSize {s.ingest_batch_size}, window {s.ingest_window:g} s, "
            f"{s.ingest_memory} MB; qualify BatchSize {s.qualify_batch_size}, window {s.qualify_window:g} s, "
            f"{s.qualify_memory} MB; Lambda billed ms = handler CPU measured × {scale:.2f} (CPU share at "
            f"{s.ingest_memory} MB) + {args.aws_latency_ms:g} ms per AWS request, rounded up per invocation")


def build_steady_accounts(ours: Pqlflow, accounts: list[str], seed: int) -> None:
    """90 days of steady history for PROTOTYPES accounts through the real handler (day-sized batches), then
    their items copied to `accounts`, then each account qualified once on its item."""
    history = steady_history(PROTOTYPES, 90, 40, LIVE_START_MS, seed)
    ours.fold_history(history, lambda batch: max(e.arrival_ms for e in batch) + 1)
    ours.copy_accounts({a: proto_id(i % PROTOTYPES) for i, a in enumerate(accounts)})
    ours.settle_qualification(accounts, LIVE_START_MS)


def shape_busy(s: Settings, args: argparse.Namespace) -> None:
    started = time.process_time()
    accounts = [account_id(i) for i in range(args.accounts)]
    events = live_traffic(args.accounts, LIVE_START_MS, args.minutes, seed=7)
    with mock_aws(), moto_speedups():
        ours = Pqlflow(s, args.aws_latency_ms, args.cpu_scale)
        ours.start()
        build_steady_accounts(ours, accounts, seed=1)
        setup = time.process_time() - started
        measured, base = measure(ours, s, args, "busy", events, int(args.minutes * MIN_MS))
    clock.set_source(None)
    cpu = time.process_time() - started
    notes = [f"{args.accounts:,} accounts, 90 days of steady history (~40 events/day over {len(NAMES)} names; "
             f"{PROTOTYPES} prototypes folded in 6-day batches, copied), live {args.minutes:g} min: "
             f"{len(events):,} events (one per account every 2–3 min)",
             settings_note(s, args), f"bench CPU {cpu:.0f} s (history setup {setup:.0f} s)"]
    print_table(f"busy ({args.accounts:,} accounts, live {args.minutes:g} min)", measured, base, notes)


def shape_hot(s: Settings, args: argparse.Namespace) -> None:
    started = time.process_time()
    ordinary = [account_id(i) for i in range(100)]
    live_end = LIVE_START_MS + int(args.minutes * MIN_MS)
    events = live_traffic(100, LIVE_START_MS, args.minutes, seed=11)
    events += hot_traffic(LIVE_START_MS, live_end, 100_000, seed=12, prefix="hot-live")
    events.sort(key=lambda e: e.arrival_ms)
    with mock_aws(), moto_speedups():
        ours = Pqlflow(s, args.aws_latency_ms, args.cpu_scale)
        ours.start()
        build_steady_accounts(ours, ordinary, seed=2)
        hot_history = hot_traffic(LIVE_START_MS - 26 * HOUR_MS, LIVE_START_MS, 100_000, seed=13, prefix="hot-h")
        hours: dict[int, list[Event]] = {}
        for e in hot_history:
            hours.setdefault(e.arrival_ms // HOUR_MS, []).append(e)
        ours.fold_history([hours[h] for h in sorted(hours)],
                          lambda batch: (batch[0].arrival_ms // HOUR_MS + 1) * HOUR_MS)
        ours.settle_qualification(["hot-0001"], LIVE_START_MS)
        hot_item = MotoImages(ACCOUNT, REGION).get(s.table, {"pk": {"S": "A#hot-0001"}, "sk": {"S": "USAGE"}})
        setup = time.process_time() - started
        measured, base = measure(ours, s, args, "hot", events, int(args.minutes * MIN_MS))
    clock.set_source(None)
    cpu = time.process_time() - started
    hot_live = sum(1 for e in events if e.message["context"]["groupId"] == "hot-0001")
    notes = [f"hot-0001 at 100,000 events/day (26 h of history in hourly batches: {len(hot_history):,} events, its "
             f"item {item_size(hot_item):,} B at the start) beside 100 ordinary accounts (90 days of history)",
             f"live {args.minutes:g} min: {len(events):,} events, {hot_live:,} of them the hot account's",
             settings_note(s, args), f"bench CPU {cpu:.0f} s (history setup {setup:.0f} s)"]
    print_table(f"hot (1 account at 100k/day + 100 ordinary, live {args.minutes:g} min)", measured, base, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["sparse", "busy", "hot", "all"], default="all")
    parser.add_argument("--accounts", type=int, default=1000, help="busy shape: accounts (default 1000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="live window of the busy and hot shapes (default 60: an hour holds each account's "
                             "compaction once)")
    parser.add_argument("--window", type=float, default=None, metavar="S",
                        help="IngestBatchingWindowSeconds to price (default: the template's)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="IngestBatchSize to price (default: the template's)")
    parser.add_argument("--aws-latency-ms", type=float, default=5.0, metavar="MS",
                        help="billed wait per AWS request a handler makes (default 5; 0 = CPU time only)")
    parser.add_argument("--sparse-accounts", type=int, default=SPARSE_ACCOUNTS, metavar="N",
                        help=f"sparse shape: the demo history's first N accounts (default {SPARSE_ACCOUNTS}; "
                        "0 = all 60, ~4x the time)")
    parser.add_argument("--cpu-scale", type=float, default=None, metavar="X",
                        help=f"Lambda CPU time per CPU second measured here (default {pricing.FULL_VCPU_MB} MB / "
                        "MemorySize: Lambda's CPU share; 1 = as fast as this machine's core)")
    parser.add_argument("--transport", choices=pricing.TRANSPORTS, default=None,
                        help="how events reach ingest (default: the template's IngestTransport): firehose or sqs "
                        "(both in the template), or kinesis or lambda (priced on the same traffic only)")
    parser.add_argument("--firehose-interval", type=float, default=None, metavar="S",
                        help="--transport firehose: buffer interval, 0..900 s (default: the template's "
                        "IngestBufferSeconds)")
    parser.add_argument("--firehose-mb", type=int, default=5, metavar="MB",
                        help="--transport firehose: buffer size, 1..128 MB (default 5)")
    parser.add_argument("--no-replay", action="store_true", help="sparse shape: skip replay's own estimate")
    parser.add_argument("--replay-sample", type=int, default=pricing.DEFAULT_SAMPLE_ACCOUNTS, metavar="N",
                        help="sparse shape: accounts replay's estimate prices (default: replay's own, %(default)s)")
    args = parser.parse_args(argv)
    if args.sparse_accounts is not None and args.sparse_accounts < 0:
        parser.error(f"--sparse-accounts {args.sparse_accounts}: must be 0 (all) or more")
    if args.sparse_accounts == 0:
        args.sparse_accounts = None
    if args.accounts < PROTOTYPES:
        parser.error(f"--accounts {args.accounts}: at least {PROTOTYPES}")
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes {args.minutes:g}: must be positive")
    if args.cpu_scale is not None and not args.cpu_scale > 0:
        parser.error("--cpu-scale must be positive")
    if args.aws_latency_ms < 0:
        parser.error("--aws-latency-ms must not be negative")
    try:
        settings = template_settings(args.window, args.batch_size)
        if args.transport is None:
            args.transport = settings.transport
        if args.firehose_interval is None:
            args.firehose_interval = settings.firehose_interval
        sqs_batches([0], settings.ingest_batch_size, settings.ingest_window)  # AWS's own constraints
        if args.transport == "firehose":
            pricing.firehose_batches([0], args.firehose_interval, args.firehose_mb, [0])
    except ValueError as exc:
        parser.error(str(exc))
    started = time.process_time()
    wall = time.perf_counter()
    shapes = ["sparse", "busy", "hot"] if args.shape == "all" else [args.shape]
    for shape in shapes:
        shape_args = copy.copy(args)
        if args.minutes is None:
            shape_args.minutes = {"busy": 60.0, "hot": 60.0}.get(shape, 0.0)
        {"sparse": shape_sparse, "busy": shape_busy, "hot": shape_hot}[shape](settings, shape_args)
        sys.stdout.flush()
    print(f"\ntotal: {time.process_time() - started:.0f} s CPU, {time.perf_counter() - wall:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
