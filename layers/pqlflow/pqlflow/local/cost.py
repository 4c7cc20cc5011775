"""Estimated AWS cost of a replayed run, per million usage events, from its counted requests and list prices.

Pure: it takes the counts `pqlflow.local.replay` measured (events put, Lambda invocations, handler time, AWS
requests by service and operation, item sizes) and prices them with the us-east-1 on-demand list prices
below. The assumptions (what a request costs in units, what the emulator cannot count) are in
docs/replay.md; the DESIGN's target is that everything pqlflow adds stays within half of what EventBridge
charges to ingest the same events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# us-east-1 list prices (USD), as published on the AWS pricing pages in 2025–2026 (see docs/replay.md).
PRICES: dict[str, float] = {
    "eventbridge_per_million_events": 1.00,  # custom events, PutEvents, per 64 KB chunk
    "scheduler_per_million_invocations": 1.00,  # EventBridge Scheduler, after its free tier
    "sqs_per_million_requests": 0.40,  # standard queue, per 64 KB chunk
    "lambda_per_million_requests": 0.20,
    "lambda_per_gb_second_arm64": 0.0000133334,  # first 7.5 billion GB-s per month
    "dynamodb_per_million_wru": 0.625,  # on-demand, since the November 2024 price cut
    "dynamodb_per_million_rru": 0.125,
    "ses_per_thousand_emails": 0.10,
    "secretsmanager_per_10k_calls": 0.05,
    # transports from EventBridge to ingest other than SQS (priced by the cost bench, docs/performance.md)
    "firehose_per_gb_ingested": 0.029,  # Direct PUT, first 500 TB/month; each record rounded up to 5 KB
    "s3_per_thousand_put": 0.005,  # S3 Standard PUT/COPY/POST/LIST
    "s3_per_thousand_get": 0.0004,  # S3 Standard GET/SELECT
    "kinesis_per_shard_hour": 0.015,  # Data Streams, provisioned
    "kinesis_per_million_put_units": 0.014,  # PUT payload units of 25 KB
}
SQS_MESSAGES_PER_RECEIVE = 10  # the Lambda poller receives (and deletes) in batches of 10
LAMBDA_BILLING_MS = 1.0  # Lambda bills duration in 1 ms steps
WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
READS = {"GetItem", "Query", "Scan"}
BATCH_GET_KEYS = 4  # the route function reads action, suppression and two cap items per BatchGetItem
TRANSACT_WRITE_ITEMS = 2  # route: the action item and its cap claim; transactions cost 2 WRU per KB


@dataclass
class RunCounts:
    """What one replay measured (the inputs of the estimate)."""

    usage_events: int  # usage events put on the bus by replay (EventBridge ingestion)
    pqlflow_events: int  # events pqlflow's functions and schedules put on its bus
    schedules_created: int
    sqs_messages: int  # messages rules delivered into SQS queues
    invocations: Mapping[str, int]
    handler_seconds: Mapping[str, float]
    memory_mb: Mapping[str, int]
    requests_by_function: Mapping[str, Mapping[str, Mapping[str, int]]]  # fn → service → operation → n
    write_units: Mapping[str, int] = field(default_factory=dict)  # WRU per single-item write, by function
    emails: int = 0


def _per_million(cost: float, events: int) -> float:
    return cost / events * 1_000_000 if events else 0.0


def estimate(counts: RunCounts, prices: Mapping[str, float] = PRICES,
             usage_pipeline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Cost of the run and per million usage events, by service; `within_target` checks the DESIGN's bar.

    `usage_pipeline`: ingest and qualify priced as AWS batches them (`pqlflow.local.pricing.PricedHistory
    .to_dict()`); `counts` then leave out those two functions and the usage queue's messages, and the
    pipeline's lines are added as `usage_sqs`, `usage_lambda`, `usage_dynamodb` and, with the Firehose
    transport, `usage_firehose`, `usage_s3` and `usage_object_events` (its PutEvents are the transitions
    `counts.pqlflow_events` already has). Without it, everything is priced from
    the run's own counts (`"usage_pricing": "replay batches"`), which understates ingest: see docs/replay.md."""
    n = counts.usage_events
    lines: dict[str, dict[str, Any]] = {}

    def add(name: str, units: float, unit: str, price: float, per: float) -> None:
        cost = units * price / per
        lines[name] = {
            "units": round(units, 3), "unit": unit, "cost": cost, "per_million_events": _per_million(cost, n)
        }

    add("eventbridge_ingest", n, "custom events", prices["eventbridge_per_million_events"], 1e6)
    add("eventbridge_pqlflow", counts.pqlflow_events, "custom events", prices["eventbridge_per_million_events"], 1e6)
    add("scheduler", counts.schedules_created, "invocations", prices["scheduler_per_million_invocations"], 1e6)
    sqs_requests = counts.sqs_messages * (1 + 2 / SQS_MESSAGES_PER_RECEIVE)  # send + receive + delete
    add("sqs", sqs_requests, "requests", prices["sqs_per_million_requests"], 1e6)
    invocations = sum(counts.invocations.values())
    add("lambda_requests", invocations, "requests", prices["lambda_per_million_requests"], 1e6)
    gb_seconds = 0.0
    for fn, seconds in counts.handler_seconds.items():
        calls = counts.invocations.get(fn, 0)
        billed = seconds + calls * LAMBDA_BILLING_MS / 2000  # rounding up to the next ms, on average
        gb_seconds += billed * counts.memory_mb.get(fn, 128) / 1024
    add("lambda_duration", gb_seconds, "GB-seconds", prices["lambda_per_gb_second_arm64"], 1)
    wru = 0.0
    rru = 0.0
    for fn, services in counts.requests_by_function.items():
        per_write = max(1, counts.write_units.get(fn, 1))  # an update is billed by the larger item image
        for op, calls in services.get("dynamodb", {}).items():
            if op in WRITES:
                wru += calls * per_write
            elif op == "TransactWriteItems":
                wru += calls * TRANSACT_WRITE_ITEMS * 2
            elif op == "BatchWriteItem":
                wru += calls  # quarantine writes: at least one item each
            elif op in READS:
                rru += calls
            elif op == "BatchGetItem":
                rru += calls * BATCH_GET_KEYS
    add("dynamodb_writes", wru, "WRU", prices["dynamodb_per_million_wru"], 1e6)
    add("dynamodb_reads", rru, "RRU", prices["dynamodb_per_million_rru"], 1e6)
    add("ses", counts.emails, "emails", prices["ses_per_thousand_emails"], 1e3)
    secret_calls = sum(
        n for services in counts.requests_by_function.values() for n in services.get("secretsmanager", {}).values()
    )
    add("secretsmanager", secret_calls, "API calls", prices["secretsmanager_per_10k_calls"], 1e4)
    if usage_pipeline is not None:
        by_service = usage_pipeline["per_million_by_service"]
        pipeline_services = (("SQS", "usage_sqs"), ("Firehose", "usage_firehose"), ("S3", "usage_s3"),
                             ("Lambda", "usage_lambda"), ("DynamoDB", "usage_dynamodb"))
        per_line = {k: float(v["per_million_events"]) for k, v in (usage_pipeline.get("lines") or {}).items()}
        pipeline_lines = [(name, float(by_service.get(service, 0.0))) for service, name in pipeline_services
                          if service in by_service or service in ("SQS", "Lambda", "DynamoDB")]
        # a Firehose object's Object Created event (EventBridge bills it as an event on the default bus)
        objects = sum(v for k, v in per_line.items() if k.startswith("EventBridge Object Created"))
        if objects:
            pipeline_lines.append(("usage_object_events", objects))
        for name, per_million in pipeline_lines:
            lines[name] = {"units": None, "unit": "as billed (pqlflow.local.pricing)",
                           "cost": per_million * n / 1e6, "per_million_events": per_million}
    reference = lines["eventbridge_ingest"]["per_million_events"]
    on_top = sum(v["per_million_events"] for k, v in lines.items() if k != "eventbridge_ingest")
    return {
        "prices_usd": dict(prices),
        "lines": lines,
        "eventbridge_ingest_per_million": reference,
        "pqlflow_per_million": on_top,
        "total_per_million": reference + on_top,
        "ratio_to_ingest": on_top / reference if reference else None,
        "target_ratio": 0.5,
        "within_target": bool(reference) and on_top <= 0.5 * reference,
        "usage_pricing": "as AWS batches" if usage_pipeline is not None else "replay batches",
        "usage_pipeline": dict(usage_pipeline) if usage_pipeline is not None else None,
    }
