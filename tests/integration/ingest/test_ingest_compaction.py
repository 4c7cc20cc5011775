"""Compaction keeps the usage item bounded without changing what it means; a hot account stays exact."""

from __future__ import annotations

import json
import random

import boto3
import pytest
from pqlflow.contracts.usage_events import UsageEvent, parse_message
from pqlflow.ingest.batch import IngestBatch, IngestConfig
from pqlflow.ingest.item import StoredUsage, decode_image, usage_key
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.ingest.usage import AccountUsage, GaugeSpec, TrackingSpec
from pqlflow.kernel import clock

from tests.support.aws_calls import CallRecorder
from tests.support.events import iso

START_MS = 1_795_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
SPEC = TrackingSpec(gauges=(GaugeSpec("Storage Updated", "used_bytes"),))
DYNAMODB_ITEM_LIMIT = 400 * 1024


def _body(message: dict) -> str:
    return json.dumps({"detail-type": message["type"], "source": "pqlflow.emitter", "detail": message})


def _ingest(store, messages, now_ms):
    clock.set_source(lambda: now_ms / 1000)
    batch = IngestBatch(IngestConfig(spec=SPEC), now_ms)
    for i, message in enumerate(messages):
        batch.add(i, _body(message))
    failed = []
    outcome = batch.commit(store, lambda record, exc: failed.append((record, exc)))
    assert failed == []
    return outcome


def _item(client, table, account="hot"):
    return client.get_item(TableName=table, Key=usage_key(account), ConsistentRead=True)["Item"]


def _track(i, ms, account="hot", user="u1", name="Message Sent", **props):
    return {"type": "track", "event": name, "messageId": f"{account}-{i}", "timestamp": iso(ms), "userId": user,
            "context": {"groupId": account}, "properties": props}


def test_compaction_folds_old_fingerprints_without_changing_the_usage(table_name):
    # Given three days of events for an account, ingested as they happened
    client = boto3.client("dynamodb")
    store = DynamoUsageStore(table_name, client)
    messages = [_track(i, START_MS + i * 2 * HOUR, user=f"u{i % 3}", name=["Message Sent", "Invite Sent"][i % 2])
                for i in range(36)]
    messages.append(_track(99, START_MS + 5 * HOUR, name="Storage Updated", used_bytes=5_000))
    expected = AccountUsage("hot")
    for n, message in enumerate(messages):
        _ingest(store, [message], START_MS + n * 2 * HOUR + HOUR)
        event = parse_message(message, (START_MS + 10 * DAY) / 1000)
        assert isinstance(event, UsageEvent)
        expected.apply(event, SPEC)
    # When time moves on past the dedupe window and one more batch arrives
    late = _track(100, START_MS + 4 * DAY, name="Invite Sent")
    outcome = _ingest(store, [late], START_MS + 4 * DAY)
    expected.apply(parse_message(late, (START_MS + 10 * DAY) / 1000), SPEC)
    # Then old fingerprint sets were folded into counters and the decoded usage is unchanged
    stored = StoredUsage.parse(_item(client, table_name))
    assert outcome.compactions >= 1
    assert all(stored.touched[h] >= START_MS + 3 * DAY for h, _ in stored.pending)
    assert stored.lifetime["Message Sent"] > 0
    assert decode_image(_item(client, table_name)) == expected


def test_redelivery_within_the_dedupe_window_after_a_compaction_still_counts_once(table_name):
    # Given events ingested and the item compacted after other hours went quiet
    client = boto3.client("dynamodb")
    store = DynamoUsageStore(table_name, client)
    recent = [_track(i, START_MS + 3 * DAY + i * 1000) for i in range(10)]
    _ingest(store, [_track(50, START_MS)], START_MS)
    _ingest(store, recent, START_MS + 3 * DAY)
    # When the recent batch is redelivered an hour later (a second compaction may run meanwhile)
    _ingest(store, recent, START_MS + 3 * DAY + HOUR)
    # Then every event still counts once
    assert decode_image(_item(client, table_name)).count("Message Sent") == 11


@pytest.mark.slow
def test_a_hot_account_sending_100k_events_a_day_stays_bounded_exact_and_cheap(table_name):
    # Given an account sending 100,000 events over one day, 1,000 per batch, from 40 users
    client = boto3.client("dynamodb")
    recorder = CallRecorder(client)
    store = DynamoUsageStore(table_name, client)
    rng = random.Random(7)
    names = [f"Feature {n} Used" for n in range(8)] + ["Message Sent", "Signed In"]
    per_batch, batches = 1000, 100
    sizes, all_batches = [], []
    for b in range(batches):
        base = START_MS + b * (DAY // batches)
        batch = [_track(b * per_batch + i, base + i * 800, user=f"u{rng.randrange(40)}", name=rng.choice(names))
                 for i in range(per_batch)]
        all_batches.append((batch, base + DAY // batches))
        # When each batch is ingested (a few are redelivered right after: SQS at-least-once)
        _ingest(store, batch, base + DAY // batches)
        if b % 10 == 9:
            _ingest(store, all_batches[-2][0], base + DAY // batches + 60_000)
        sizes.append(StoredUsage.parse(_item(client, table_name)).size)
    # Then the item stays far below DynamoDB's 400 KB limit, nothing is lost or double counted...
    usage = decode_image(_item(client, table_name))
    assert max(sizes) < DYNAMODB_ITEM_LIMIT * 0.75
    assert sum(usage.count(n) for n in names) == per_batch * batches
    assert usage.active_users_last(2, START_MS + DAY) == 40
    # ...and the write cost per event stays bounded: one write per batch plus occasional compactions
    writes = recorder.calls["UpdateItem"]
    deliveries = batches + batches // 10
    print(f"\nhot account: {per_batch * batches:,} events in {deliveries} deliveries; max item {max(sizes):,} B; "
          f"{writes} UpdateItem ({writes - deliveries} compactions); {writes / (per_batch * batches):.5f} writes/event")
    assert writes <= deliveries * 1.5
    assert writes / (per_batch * batches) < 0.002
