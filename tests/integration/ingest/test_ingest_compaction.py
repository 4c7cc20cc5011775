"""Compaction keeps the hot usage item small without changing what it means; late copies count once; hot
accounts and backfills stay exact and cheap; items in the layout before the cold item are read and migrated."""

from __future__ import annotations

import json
import random

import boto3
import pytest
from pqlflow.contracts.usage_events import UsageEvent, parse_message
from pqlflow.ingest import compaction
from pqlflow.ingest.batch import IngestBatch, IngestConfig
from pqlflow.ingest.item import StoredUsage, encode_usage, usage_key
from pqlflow.ingest.store import DynamoUsageStore, get_cold, read_usage
from pqlflow.ingest.usage import AccountUsage, GaugeSpec, TrackingSpec, fingerprint
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


def _hot(client, table, account="hot"):
    return StoredUsage.parse(client.get_item(TableName=table, Key=usage_key(account), ConsistentRead=True)["Item"])


def _cold(client, table, account="hot"):
    """The cold item the hot item names (its compaction version's slot)."""
    return get_cold(client, table, account, None, _hot(client, table, account).cver, consistent=True)


def _track(i, ms, account="hot", user="u1", name="Message Sent", **props):
    return {"type": "track", "event": name, "messageId": f"{account}-{i}", "timestamp": iso(ms), "userId": user,
            "context": {"groupId": account}, "properties": props}


def _expected(messages, account="hot"):
    usage = AccountUsage(account)
    seen = set()
    for message in messages:
        if message["messageId"] in seen:
            continue
        seen.add(message["messageId"])
        event = parse_message(message, (START_MS + 70 * DAY) / 1000)
        assert isinstance(event, UsageEvent)
        usage.apply(event, SPEC)
    return usage


def test_compaction_moves_folded_hours_to_the_cold_item_without_changing_the_usage(table_name):
    # Given three days of events for an account, each ingested about an hour after it happened
    client = boto3.client("dynamodb")
    store = DynamoUsageStore(table_name, client)
    messages = [_track(i, START_MS + i * 2 * HOUR, user=f"u{i % 3}", name=["Message Sent", "Invite Sent"][i % 2])
                for i in range(36)]
    messages.append(_track(99, START_MS + 5 * HOUR, name="Storage Updated", used_bytes=5_000))
    compactions = 0
    for n, message in enumerate(messages):
        compactions += _ingest(store, [message], START_MS + n * 2 * HOUR + HOUR).compactions
    # Then the hot item was compacted whenever it grew past FOLD_AT_BYTES (a write past 1 KB costs 2 WRU), so
    # it never holds totals and stays under 1 KB; the cold item holds what was folded
    hot, cold = _hot(client, table_name), _cold(client, table_name)
    assert 2 <= compactions <= 10
    assert not hot.legacy_totals and hot.lifetime == {}
    assert hot.size <= compaction.FOLD_AT_BYTES
    assert cold is not None and cold.version == hot.cver and cold.lifetime["Message Sent"] > 0
    # And what it means is exactly one in-order pass over the events
    assert read_usage(client, table_name, "hot") == _expected(messages)


def test_a_copy_arriving_weeks_after_its_hour_was_folded_counts_once(table_name):
    # Given 120 events of one hour, ingested as they happened, and their hour folded long ago (the item
    # passed FOLD_AT_BYTES)
    client = boto3.client("dynamodb")
    recorder = CallRecorder(client)
    store = DynamoUsageStore(table_name, client)
    events = [_track(i, START_MS + i * 29_000, user=f"u{i % 2}") for i in range(120)]
    _ingest(store, events, START_MS + HOUR - 1)
    _ingest(store, [_track(100, START_MS + 3 * HOUR)], START_MS + 3 * HOUR)
    assert _hot(client, table_name).is_late(START_MS // HOUR)
    # When a customer's re-import sends 5 of them again 30 days later, beside 2 events of that hour never seen
    later = START_MS + 30 * DAY
    recorder.calls.clear()
    recorder.usage_writes.clear()
    new = [_track(200 + i, START_MS + 30 * 60_000 + i) for i in range(2)]
    outcome = _ingest(store, events[:5] + new, later)
    # Then the copies count once and the new ones count: the archive of that hour knew the copies
    usage = read_usage(client, table_name, "hot")
    assert usage.count("Message Sent") == 120 + 1 + 2
    assert usage.count_between("Message Sent", START_MS // DAY, START_MS // DAY) == 123
    assert outcome.late_duplicates == 5
    # ...for one write, one consistent read of the cold item, one Query of the late day's archive, then the
    # compaction's decision (the next cold item, put) and its intent (the late day's archive item, then the
    # hot item), and no transaction
    assert recorder.usage_writes == {"hot": 2, "cold": 1, "archive": 1}
    assert (recorder.calls["GetItem"] - 2, recorder.calls["Query"],
            recorder.calls["TransactWriteItems"]) == (1, 1, 0)  # (read_usage above made 2 GetItem)


def test_a_copy_written_before_the_compaction_that_folds_its_hour_is_not_counted_twice(table_name):
    # Given a batch in an hour that is then folded, and a redelivered copy landing in the folded hour's slot
    client = boto3.client("dynamodb")
    store = DynamoUsageStore(table_name, client)
    events = [_track(i, START_MS + i) for i in range(120)]
    _ingest(store, events, START_MS + 10)
    _ingest(store, [_track(999, START_MS + 3 * HOUR)], START_MS + 3 * HOUR)  # folds the first hour
    assert _hot(client, table_name).is_late(START_MS // HOUR)
    # When the copies arrive (each redelivery adds the same fingerprints to the now-late slot)
    for _ in range(3):
        _ingest(store, events[:30], START_MS + 3 * HOUR + 60_000)
        # Then nothing is counted twice, at any moment: the late slot is not counted before its archive check
        assert read_usage(client, table_name, "hot").count("Message Sent") == 121


def test_an_item_of_the_layout_before_the_cold_item_is_read_and_migrated_by_its_next_write(table_name):
    # Given a usage item written by the previous layout: folded totals (lc/dc) on the item, a pending slot
    # of 8-byte fingerprints and its last-touched time (t<hour>)
    client = boto3.client("dynamodb")
    store = DynamoUsageStore(table_name, client)
    old_events = [_track(i, START_MS - 2 * DAY + i * HOUR, user="u1") for i in range(10)]
    folded = _expected(old_events)
    item = encode_usage(folded, START_MS)
    hour = (START_MS + 30 * 60_000) // HOUR
    item[f"p{hour}|Message Sent"] = {"BS": [fingerprint("hot-50"), fingerprint("hot-51")]}
    item[f"t{hour}"] = {"N": str(START_MS + HOUR)}
    item["cver"] = {"N": "7"}
    client.put_item(TableName=table_name, Item=item)
    pending = [_track(50, START_MS + 30 * 60_000), _track(51, START_MS + 30 * 60_000 + 1)]
    # Then the new code reads it as it was meant
    assert read_usage(client, table_name, "hot").count("Message Sent") == 12
    # When the next batch arrives (a redelivery of the pending events among new ones), hours later
    fresh = [_track(60 + i, START_MS + 5 * HOUR + i) for i in range(3)]
    outcome = _ingest(store, pending + fresh, START_MS + 6 * HOUR)
    # Then it was migrated: no totals or touch times left on the hot item, the cold item holds them
    hot, cold = _hot(client, table_name), _cold(client, table_name)
    assert outcome.compactions >= 1
    assert not hot.legacy_totals and not hot.touched and hot.cver == 8 and cold is not None and cold.version == 8
    # And nothing was lost or counted twice
    assert read_usage(client, table_name, "hot") == _expected(old_events + pending + fresh)


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
        all_batches.append(batch)
        # When each batch is ingested (a few are redelivered right after, and a few much later: SQS
        # at-least-once and a Segment replay)
        _ingest(store, batch, base + DAY // batches)
        if b % 10 == 9:
            _ingest(store, all_batches[-2], base + DAY // batches + 60_000)
        if b % 25 == 24:
            _ingest(store, all_batches[b - 20][:300], base + DAY // batches + 120_000)
        sizes.append(_hot(client, table_name).size)
    # Then the hot item stays small, nothing is lost or double counted...
    usage = read_usage(client, table_name, "hot")
    assert max(sizes) < 40 * 1024
    assert sum(usage.count(n) for n in names) == per_batch * batches
    assert usage.active_users_last(2, START_MS + DAY) == 40
    # ...and the write requests per event stay bounded: one write per delivery plus a compaction an hour
    writes = recorder.calls["UpdateItem"] + recorder.transact_items + recorder.calls["PutItem"]
    deliveries = batches + batches // 10 + batches // 25
    w = recorder.usage_writes
    print(f"\nhot account: {per_batch * batches:,} events in {deliveries} deliveries; max hot item {max(sizes):,} B; "
          f"{w['hot']} hot item writes, {w['cold']} compactions (cold item puts), {w['archive']} archive writes, "
          f"{recorder.calls['TransactWriteItems']} transactions; "
          f"{writes / (per_batch * batches):.5f} item writes/event")
    assert w["cold"] <= deliveries // 2
    assert writes / (per_batch * batches) < 0.0025


def test_a_backfill_of_two_month_old_events_costs_no_more_write_requests_per_event_than_live_traffic(table_name):
    # Given 10,500 events of 35 accounts from two months ago, sent as a backfill in batches of 1,000
    client = boto3.client("dynamodb")
    recorder = CallRecorder(client)
    store = DynamoUsageStore(table_name, client)
    rng = random.Random(3)
    now = START_MS + 60 * DAY
    events = [_track(i, START_MS + rng.randrange(3 * DAY), account=f"a{i % 35}", user=f"u{i % 4}")
              for i in range(10_500)]
    events.sort(key=lambda m: m["timestamp"])
    for start in range(0, len(events), 1000):
        _ingest(store, events[start : start + 1000], now + start)
    # Then every event counts once, days past the active-user window were never written...
    for a in (0, 17, 34):
        mine = [m for m in events if m["context"]["groupId"] == f"a{a}"]
        usage = read_usage(client, table_name, f"a{a}")
        assert usage.count("Message Sent") == len(mine) == 300
        assert usage.active_users == {}
        assert _expected(mine, f"a{a}").count("Message Sent") == 300
    # ...and the write requests per event are below live traffic's (at least one per event's batch) by far
    writes = recorder.calls["UpdateItem"] + recorder.transact_items + recorder.calls["PutItem"]
    w = recorder.usage_writes
    print(f"\nbackfill: {len(events):,} events, {w['hot']} hot item writes, {w['cold']} compactions (cold item "
          f"puts), {w['archive']} archive writes, {recorder.calls['TransactWriteItems']} transactions: "
          f"{writes / len(events):.3f} item writes/event")
    assert w["hot"] - w["cold"] == 35 * 11  # one per account per batch, as live, besides each compaction's own
    assert writes / len(events) < 0.8
