"""Ingest benchmark: pqlflow's one-write-per-account ingest against a naive per-event baseline.

Workload: 10,000 events in 1,000-event batches over 200 accounts, with 5% duplicates (re-sent
messageIds placed anywhere in the stream, so most land in a different batch than their original).
Event times are what live traffic looks like: the stream covers ten minutes, each event stamped up
to two minutes before it arrives (client lag), so a batch's events share one or two event hours.

Prints, measured in this run:
  - DynamoDB write requests per event: pqlflow vs a baseline that does one UpdateItem per event plus
    a per-event idempotency record written by Powertools' idempotency utility (both on moto);
  - handler CPU time per event excluding AWS I/O (the store is a recorder that makes no calls) next
    to the time to merely JSON-decode the same SQS record bodies;
  - cold import time of the ingest handler module next to `import boto3` (fresh interpreters).

Run: make bench   (or .venv/bin/python bench/ingest_bench.py)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "pqlflow"), str(ROOT)]
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                  POWERTOOLS_TRACE_DISABLED="true", POWERTOOLS_LOG_LEVEL="WARNING",
                  POWERTOOLS_METRICS_NAMESPACE="bench", POWERTOOLS_METRICS_DISABLED="true")

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor  # noqa: E402
from pqlflow.ingest.store import DynamoUsageStore  # noqa: E402
from pqlflow.kernel import clock  # noqa: E402

from tests.support.events import iso, sqs_event  # noqa: E402
from tests.support.lambda_context import LambdaContext  # noqa: E402
from tests.support.template import table_definition  # noqa: E402

EVENTS, BATCH, ACCOUNTS, DUP_RATE = 10_000, 1_000, 200, 0.05
NOW_MS = 1_795_341_600_000
NAMES = ["Message Sent", "Signed In", "Feature Used", "Invite Sent", "File Uploaded", "Contacts Updated"]


def workload(seed: int = 42) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    unique = EVENTS - int(EVENTS * DUP_RATE)
    messages = []
    for i in range(unique):
        arrival = NOW_MS - 600_000 + i * 600_000 // unique
        account = f"acct-{rng.randrange(ACCOUNTS):03d}"
        name = rng.choice(NAMES)
        props: dict[str, Any] = {"tier": rng.choice(["free", "paid"])} if name == "Feature Used" else {}
        if name == "Contacts Updated":
            props["total"] = rng.randrange(10_000)
        messages.append({
            "type": "track", "event": name, "messageId": f"msg-{i:06d}",
            "timestamp": iso(arrival - rng.randrange(120_000)), "userId": f"{account}-u{rng.randrange(8)}",
            "anonymousId": f"anon-{i}", "context": {"groupId": account, "library": {"name": "analytics-node",
                                                                                    "version": "6.0.0"},
                                                  "ip": "203.0.113.7", "userAgent": "Mozilla/5.0"},
            "properties": props, "sentAt": iso(NOW_MS), "receivedAt": iso(NOW_MS),
        })
    stream = messages + [rng.choice(messages) for _ in range(EVENTS - unique)]
    rng.shuffle(stream)
    return [stream[i:i + BATCH] for i in range(0, len(stream), BATCH)]


class RecordingStore:
    """A store that only records requests: ingest's own CPU, without any AWS I/O."""

    table = "bench"

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    def update(self, request: dict[str, Any]) -> None:
        self.requests["UpdateItem"] += 1

    def compact(self, request: dict[str, Any]) -> bool:
        self.requests["UpdateItem"] += 1
        return True

    def quarantine(self, items: list[dict[str, Any]]) -> None:
        self.requests["BatchWriteItem"] += 1


def count_writes(client: Any) -> Counter[str]:
    calls: Counter[str] = Counter()
    writes = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
    client.meta.events.register("before-call.dynamodb.*",
                                lambda model, **_: calls.update([model.name]) if model.name in writes else None)
    return calls


def pqlflow_writes(batches: list[list[dict[str, Any]]]) -> tuple[int, Counter[str]]:
    from pqlflow.local import moto_transactions

    from functions.ingest import app

    moto_transactions.install()  # compaction's transactions: moto would copy the whole table for each

    client = boto3.client("dynamodb")
    client.create_table(TableName="usage", **table_definition())
    calls = count_writes(client)
    processor = UsageBatchProcessor(DynamoUsageStore("usage", client), IngestConfig(), clock.now_ms)
    for batch in batches:
        response = app.handler(sqs_event(batch), LambdaContext(), processor=processor)
        assert response == {"batchItemFailures": []}
    from pqlflow.ingest.store import read_usage

    total = 0
    for i in range(ACCOUNTS):
        usage = read_usage(client, "usage", f"acct-{i:03d}")
        if usage is not None:
            total += sum(c for n, c in usage.lifetime.items() if "[" not in n)
    return total, calls


def baseline_writes(batches: list[list[dict[str, Any]]]) -> tuple[int, Counter[str]]:
    """One UpdateItem per event, made idempotent per event by Powertools' idempotency utility."""
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    client = boto3.client("dynamodb")
    client.create_table(TableName="counters", **table_definition())
    client.create_table(TableName="idempotency", AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    persistence = DynamoDBPersistenceLayer(table_name="idempotency", boto3_client=client)
    config = IdempotencyConfig(event_key_jmespath="messageId", raise_on_no_idempotency_key=True)
    calls = count_writes(client)

    @idempotent_function(data_keyword_argument="message", persistence_store=persistence, config=config)
    def count_event(message: dict[str, Any]) -> dict[str, Any]:
        client.update_item(TableName="counters",
                           Key={"pk": {"S": f"A#{message['context']['groupId']}"}, "sk": {"S": "USAGE"}},
                           UpdateExpression="ADD #n :one", ExpressionAttributeNames={"#n": message["event"]},
                           ExpressionAttributeValues={":one": {"N": "1"}})
        return {"ok": True}

    config.register_lambda_context(LambdaContext())
    for batch in batches:
        for record in sqs_event(batch)["Records"]:
            count_event(message=json.loads(record["body"])["detail"])
    total = 0
    for item in client.scan(TableName="counters")["Items"]:
        total += sum(int(v["N"]) for k, v in item.items() if k not in ("pk", "sk"))
    return total, calls


def cpu_per_event(batches: list[list[dict[str, Any]]], rounds: int = 5) -> tuple[float, float]:
    from functions.ingest import app

    events = [sqs_event(batch) for batch in batches]
    bodies = [r["body"] for e in events for r in e["Records"]]
    processor = UsageBatchProcessor(RecordingStore(), IngestConfig(), clock.now_ms)  # type: ignore[arg-type]
    handler_times, decode_times = [], []
    for _ in range(rounds):
        start = time.process_time()
        for event in events:
            app.handler(event, LambdaContext(), processor=processor)
        handler_times.append(time.process_time() - start)
        start = time.process_time()
        for body in bodies:
            json.loads(body)
        decode_times.append(time.process_time() - start)
    return min(handler_times) / len(bodies), min(decode_times) / len(bodies)


def import_time(module: str, runs: int = 7) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'pqlflow'}{os.pathsep}{ROOT}"}
    samples = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env, cwd=ROOT).stdout) for _ in range(runs)]
    return statistics.median(samples)


def main() -> None:
    clock.set_source(lambda: NOW_MS / 1000)
    batches = workload()
    unique = len({m["messageId"] for b in batches for m in b})
    print(f"workload: {EVENTS:,} events ({unique:,} unique, {EVENTS - unique} duplicates) "
          f"in {len(batches)} batches of {BATCH:,} over {ACCOUNTS} accounts")
    with mock_aws():
        counted, ours = pqlflow_writes(batches)
    with mock_aws():
        base_counted, theirs = baseline_writes(batches)
    assert counted == unique, f"pqlflow counted {counted}, expected {unique}"
    assert base_counted == unique, f"baseline counted {base_counted}, expected {unique}"
    ours_per, theirs_per = sum(ours.values()) / EVENTS, sum(theirs.values()) / EVENTS
    touched = sum(len({m["context"]["groupId"] for m in b}) for b in batches)
    print("\nDynamoDB write requests per event (both count every unique event exactly once)")
    print(f"  pqlflow ingest          {ours_per:8.4f}   {dict(ours)}")
    print(f"  naive + idempotency     {theirs_per:8.4f}   {dict(theirs)}")
    print(f"  K/N (accounts touched per batch / events per batch) = {touched / EVENTS:.4f};  "
          f"pqlflow makes {theirs_per / ours_per:.1f}x fewer write requests")
    handler, decode = cpu_per_event(batches)
    print("\nHandler CPU per event, AWS I/O excluded (best of 5 rounds)")
    print(f"  ingest handler          {handler * 1e6:8.2f} µs")
    print(f"  json.loads of the body  {decode * 1e6:8.2f} µs   ratio {handler / decode:.2f}x")
    ours_import, boto3_import = import_time("functions.ingest.app"), import_time("boto3")
    print("\nCold import (median of 7 fresh interpreters)")
    print(f"  functions.ingest.app    {ours_import * 1000:8.1f} ms")
    print(f"  import boto3            {boto3_import * 1000:8.1f} ms   ratio {ours_import / boto3_import:.2f}x")
    print("  (the handler creates its boto3 client on first use, so the first invocation adds `import boto3`)")


if __name__ == "__main__":
    main()
