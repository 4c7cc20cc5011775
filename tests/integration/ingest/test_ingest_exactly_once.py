"""Exactly-once ingest: any order, any batching, any duplication, any crash → the state of one clean pass."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pqlflow.contracts.usage_events import UsageEvent, parse_message
from pqlflow.ingest import compaction
from pqlflow.ingest.batch import IngestBatch, IngestConfig
from pqlflow.ingest.cold import cold_key
from pqlflow.ingest.item import usage_key
from pqlflow.ingest.store import DynamoUsageStore, read_usage
from pqlflow.ingest.usage import AccountUsage, GaugeSpec, TrackingSpec
from pqlflow.kernel import clock

from tests.support.aws_calls import CallRecorder, Crash
from tests.support.events import iso
from tests.support.template import table_definition

NOW_MS = 1_795_341_600_000
HOUR = 3_600_000
SPEC = TrackingSpec(gauges=(GaugeSpec("Contacts Updated", "total"),))
ACCOUNTS = ["acme", "globex"]


def _message(i: int, kind: str, account: str, user: str, offset_h: int, value: int) -> dict:
    ts = iso(NOW_MS - offset_h * HOUR - i)
    base = {"messageId": f"m-{i}", "timestamp": ts, "userId": user, "context": {"groupId": account}}
    if kind == "group":
        return {**base, "type": "group", "groupId": account, "traits": {"plan": ["free", "pro"][value % 2],
                                                                        "employees": value}}
    if kind == "identify":
        return {**base, "type": "identify", "traits": {"name": f"user {value}", "timezone": "UTC"}}
    if kind == "gauge":
        return {**base, "type": "track", "event": "Contacts Updated", "properties": {"total": value}}
    return {**base, "type": "track", "event": kind, "properties": {}}


messages_strategy = st.lists(
    st.tuples(st.sampled_from(["Message Sent", "Invite Sent", "gauge", "group", "identify"]),
              st.sampled_from(ACCOUNTS), st.sampled_from(["u1", "u2", "u3"]),
              st.integers(0, 60), st.integers(0, 50)),
    min_size=1, max_size=25,
).map(lambda rows: [_message(i, *row) for i, row in enumerate(rows)])


def _expected(messages: list[dict]) -> dict[str, AccountUsage]:
    """Each unique event applied once, in order: the reference semantics."""
    states: dict[str, AccountUsage] = {}
    for message in messages:
        event = parse_message(message, NOW_MS / 1000)
        assert isinstance(event, UsageEvent)
        states.setdefault(event.account_id, AccountUsage(event.account_id)).apply(event, SPEC)
    return states


def _fresh_table() -> tuple[object, str]:
    client = boto3.client("dynamodb")
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create_table(TableName=name, **table_definition())
    return client, name


def _ingest(store: DynamoUsageStore, messages: list[dict]) -> list[dict]:
    """Ingest one batch; returns the messages whose records were reported for retry."""
    batch = IngestBatch(IngestConfig(spec=SPEC), NOW_MS)
    for i, message in enumerate(messages):
        batch.add(i, _body(message))
    failed: list[int] = []
    batch.commit(store, lambda record, exc: failed.append(record))
    return [messages[i] for i in sorted(set(failed))]


def _body(message: dict | str) -> str:
    if isinstance(message, str):
        return message
    return json.dumps({"detail-type": message["type"], "source": "aws.partner/segment.com/x", "detail": message})


def _state(client, table: str) -> dict[str, AccountUsage]:
    states = {}
    for account in ACCOUNTS:
        usage = read_usage(client, table, account)
        if usage is not None:
            states[account] = usage
    return states


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=messages_strategy, data=st.data())
def test_any_batching_duplication_and_order_gives_the_state_of_one_clean_pass(aws, messages, data):
    # Given any multiset of valid events, duplicated, shuffled and split into batches
    clock.set_source(lambda: NOW_MS / 1000)
    delivered = messages + data.draw(st.lists(st.sampled_from(messages), max_size=len(messages)), label="dups")
    delivered = data.draw(st.permutations(delivered), label="order")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivered)), max_size=4), label="cuts"))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    client, table = _fresh_table()
    store = DynamoUsageStore(table, client)
    # When every batch is ingested
    for batch in batches:
        assert _ingest(store, batch) == []
    # Then the stored state is exactly one in-order pass over the unique events
    assert _state(client, table) == _expected(messages)


def _clean_run(messages: list[dict]) -> tuple[dict[str, AccountUsage], int]:
    client, table = _fresh_table()
    recorder = CallRecorder(client)
    _ingest(DynamoUsageStore(table, client), messages)
    return _state(client, table), recorder.total


FAULT_BATCH = [_message(i, kind, ACCOUNTS[i % 2], f"u{i % 3}", i % 5, i)
               for i, kind in enumerate(["Message Sent", "group", "gauge", "Invite Sent", "identify",
                                         "Message Sent", "gauge", "Message Sent"])] + ["not json"]


@pytest.mark.parametrize("failure", ["throttle", "crash"])
def test_a_failure_at_any_aws_call_then_redelivery_gives_the_clean_state(aws, failure):
    clock.set_source(lambda: NOW_MS / 1000)
    expected, calls = _clean_run(FAULT_BATCH)
    assert calls >= 3
    for n in range(1, calls + 1):
        # Given the Nth AWS call of the batch fails (an AWS error, or the process dying)
        client, table = _fresh_table()
        recorder = CallRecorder(client)
        recorder.fail_at, recorder.failure = n, failure
        store = DynamoUsageStore(table, client)
        # When the batch runs, and SQS redelivers what was not acknowledged
        try:
            retry = _ingest(store, FAULT_BATCH)
        except Crash:
            retry = FAULT_BATCH  # nothing was acknowledged: the whole batch comes back
        recorder.fail_at = None
        _ingest(store, retry)
        # Then the state is the clean run's
        assert _state(client, table) == expected, f"differs after failing call {n} ({failure})"


# ---- with the clock moving: lateness up to weeks, compaction between batches, size pressure --------------

DAY = 24 * HOUR
LATE_NOW_MS = NOW_MS + 40 * DAY  # the clock at the last batch


def _late_message(i: int, kind: str, account: str, user: str, age_h: int, value: int) -> dict:
    message = _message(i, kind, account, user, 0, value)
    message["timestamp"] = iso(LATE_NOW_MS - age_h * HOUR - i)
    return message


late_strategy = st.lists(
    st.tuples(st.sampled_from(["Message Sent", "Invite Sent", "gauge", "group", "identify"]),
              st.sampled_from(ACCOUNTS), st.sampled_from(["u1", "u2", "u3"]),
              st.integers(0, 30 * 24), st.integers(0, 50)),
    min_size=1, max_size=30,
).map(lambda rows: [_late_message(i, *row) for i, row in enumerate(rows)])


def _ms(message: dict) -> int:
    event = parse_message(message, LATE_NOW_MS / 1000)
    assert isinstance(event, UsageEvent)
    return event.ms


def _ingest_at(store: DynamoUsageStore, messages: list[dict], now_ms: int) -> list[dict]:
    """One batch processed at wall-clock time `now_ms` (time-machine moves the real clock)."""
    with time_machine.travel(now_ms / 1000, tick=False):
        batch = IngestBatch(IngestConfig(spec=SPEC), clock.now_ms())
        for i, message in enumerate(messages):
            batch.add(i, _body(message))
        failed: list[int] = []
        batch.commit(store, lambda record, exc: failed.append(record))
    return [messages[i] for i in sorted(set(failed))]


def _expected_late(messages: list[dict]) -> dict[str, AccountUsage]:
    states: dict[str, AccountUsage] = {}
    for message in {m["messageId"]: m for m in reversed(messages)}.values():  # the first copy of each
        event = parse_message(message, LATE_NOW_MS / 1000)
        assert isinstance(event, UsageEvent)
        states.setdefault(event.account_id, AccountUsage(event.account_id)).apply(event, SPEC)
    return states


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=late_strategy, data=st.data())
def test_any_lateness_up_to_weeks_with_the_clock_moving_gives_the_state_of_one_clean_pass(aws, monkeypatch,
                                                                                         messages, data):
    # Given any multiset of events over 30 days, each copy arriving any time between its event and the last
    # batch (a copy weeks after its hour was folded: a Segment replay or a re-import), in any batching
    copies = messages + data.draw(st.lists(st.sampled_from(messages), max_size=2 * len(messages)), label="dups")
    arrivals = sorted((_ms(m) + data.draw(st.integers(0, LATE_NOW_MS - _ms(m)), label="delay"), n, m)
                      for n, m in enumerate(copies))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrivals)), max_size=6), label="cuts"))
    batches = [arrivals[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrivals)], strict=True) if b > a]
    # ...with the compaction thresholds as shipped, small (a compaction every few batches), or tiny (every item
    # past the size limits: completed hours and then the current one folded at once)
    regime = data.draw(st.sampled_from(["shipped", "small", "tiny"]), label="thresholds")
    if regime != "shipped":
        monkeypatch.setattr(compaction, "FOLD_AT_BYTES", 150)
        monkeypatch.setattr(compaction, "FOLD_DOWN_TO_BYTES", 60)
    if regime == "tiny":
        monkeypatch.setattr(compaction, "SIZE_SOFT_LIMIT", 400)
        monkeypatch.setattr(compaction, "BUSY_BYTES", 200)
    client, table = _fresh_table()
    store = DynamoUsageStore(table, client)
    # When each batch is processed at the wall-clock time its last event arrived
    for batch in batches:
        assert _ingest_at(store, [m for _, _, m in batch], batch[-1][0]) == []
    # Then the state is exactly one in-order pass over the unique events
    assert _state(client, table) == _expected_late(messages)


# A batch that does everything at once: the happy-path writes, a compaction reading the cold item and the
# archive of a late hour, and a transaction; after a first batch whose hours were folded long ago.
EARLIER = [_late_message(100 + i, "Message Sent", ACCOUNTS[i % 2], f"u{i % 3}", 20 * 24 + i, i) for i in range(6)]
COMPACTING_BATCH = EARLIER[:3] + [_late_message(i, kind, ACCOUNTS[i % 2], f"u{i % 3}", [0, 3, 50, 20 * 24][i % 4], i)
                                  for i, kind in enumerate(["Message Sent", "group", "gauge", "Invite Sent",
                                                            "identify", "Message Sent", "Message Sent"])]


def _prepared(recorder_client: object | None = None) -> tuple[object, str, DynamoUsageStore]:
    client, table = _fresh_table()
    store = DynamoUsageStore(table, client)
    assert _ingest_at(store, EARLIER, LATE_NOW_MS - 20 * DAY + HOUR) == []
    assert _ingest_at(store, EARLIER[3:4], LATE_NOW_MS - 10 * DAY) == []  # its compaction folds EARLIER's hours
    return client, table, store


@pytest.mark.parametrize("path", ["intent", "transaction"])
@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_failure_at_any_aws_call_of_a_batch_and_its_compaction_then_redelivery_gives_the_clean_state(
    aws, monkeypatch, failure, path
):
    # (items this small are compacted only with the fold threshold lowered; a compaction too big to carry its
    # intent in its cold item is one transaction instead)
    monkeypatch.setattr(compaction, "FOLD_AT_BYTES", 150)
    monkeypatch.setattr(compaction, "FOLD_DOWN_TO_BYTES", 60)
    if path == "transaction":
        monkeypatch.setattr(compaction, "MAX_INTENT_ITEM_BYTES", 0)
    client, table, store = _prepared()
    recorder = CallRecorder(client)
    assert _ingest_at(store, COMPACTING_BATCH, LATE_NOW_MS) == []
    expected, calls = _state(client, table), recorder.total
    assert expected == _expected_late(EARLIER + COMPACTING_BATCH)
    assert {"Query", "GetItem", "UpdateItem"} <= set(recorder.calls)  # the late day's archive, the cold item
    if path == "intent":  # the decision (the cold item put), then its intent: archive items and the hot item
        assert "TransactWriteItems" not in recorder.calls
        assert recorder.usage_writes["cold"] >= 1 and recorder.usage_writes["archive"] >= 2
    else:
        assert recorder.calls["TransactWriteItems"] >= 1 and recorder.usage_writes["cold"] == 0
    for n in range(1, calls + 1):
        # Given the Nth AWS call of the batch fails: an AWS error, the process dying before it, or after it
        client, table, store = _prepared()
        recorder = CallRecorder(client)
        recorder.fail_at, recorder.failure = n, failure
        # When the batch runs, and SQS redelivers what was not acknowledged (a minute later)
        try:
            retry = _ingest_at(store, COMPACTING_BATCH, LATE_NOW_MS)
        except Crash:
            retry = COMPACTING_BATCH  # nothing was acknowledged: the whole batch comes back
        recorder.fail_at = None
        assert _ingest_at(store, retry, LATE_NOW_MS + 60_000) == []
        # Then the state is the clean run's
        assert _state(client, table) == expected, f"differs after failing call {n} ({failure})"
        # And copies of the whole batch a day later (late now: checked against the archives, some of which a
        # failed compaction may have put before its transaction) count nothing
        assert _ingest_at(store, COMPACTING_BATCH, LATE_NOW_MS + DAY) == []
        assert _state(client, table) == expected, f"late copies counted after failing call {n} ({failure})"


class _Interleaved(DynamoUsageStore):
    """A store whose compaction, right after deciding (its cold item put), lets another batch run: as if
    another instance compacted the same account while this one was paused (or had died)."""

    def __init__(self, table, client, meanwhile):
        super().__init__(table, client)
        self.meanwhile = meanwhile
        self.decided = 0

    def write_if(self, request):
        done = super().write_if(request)
        if done and request.get("Item", {}).get("sk", {}).get("S", "").startswith("USAGE#C") and self.meanwhile:
            self.decided += 1
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return done


@pytest.mark.parametrize("resumes", [True, False], ids=["paused", "died"])
def test_a_compaction_decided_and_left_unfinished_is_completed_by_the_next_one_exactly_once(
    aws, monkeypatch, resumes
):
    monkeypatch.setattr(compaction, "FOLD_AT_BYTES", 150)
    monkeypatch.setattr(compaction, "FOLD_DOWN_TO_BYTES", 60)
    client, table, _ = _prepared()
    others = [_late_message(300 + i, "Message Sent", ACCOUNTS[i % 2], "u1", 1, i) for i in range(4)]
    # Given a compaction that decided (put the next cold item) and then paused or died before its intent ran,
    # while another batch of the same accounts compacted meanwhile
    other_store = DynamoUsageStore(table, client)

    def meanwhile():
        assert _ingest_at(other_store, others + COMPACTING_BATCH[:3], LATE_NOW_MS + 1000) == []
        if not resumes:
            raise Crash("the first instance died after its decision")

    store = _Interleaved(table, client, meanwhile)
    try:
        retry = _ingest_at(store, COMPACTING_BATCH, LATE_NOW_MS)
    except Crash:
        retry = COMPACTING_BATCH
    assert store.decided == 1
    # When what was not acknowledged is redelivered
    assert _ingest_at(DynamoUsageStore(table, client), retry, LATE_NOW_MS + 60_000) == []
    # Then every event counts once: the decided compaction was completed once, by whichever got there first
    assert _state(client, table) == _expected_late(EARLIER + COMPACTING_BATCH + others)


def test_a_cold_item_in_the_layout_before_the_slots_is_read_and_the_next_compaction_moves_on_from_it(
    aws, monkeypatch
):
    monkeypatch.setattr(compaction, "FOLD_AT_BYTES", 150)
    monkeypatch.setattr(compaction, "FOLD_DOWN_TO_BYTES", 60)
    # Given accounts compacted by the layout before the two cold slots: their cold item at `USAGE#C`
    client, table, store = _prepared()
    for account in ACCOUNTS:
        hot = read_usage(client, table, account)
        assert hot is not None
        version = int(client.get_item(TableName=table, Key=usage_key(account), ConsistentRead=True)
                      ["Item"]["cver"]["N"])
        slot = client.get_item(TableName=table, Key=cold_key(account, None, version), ConsistentRead=True)["Item"]
        client.put_item(TableName=table, Item={**slot, **cold_key(account)})
        client.delete_item(TableName=table, Key=cold_key(account, None, version))
    # Then the new code reads them as they were
    assert _state(client, table) == _expected_late(EARLIER)
    # And their next compactions (late copies among new events) build on them: nothing lost or counted twice
    assert _ingest_at(store, COMPACTING_BATCH, LATE_NOW_MS) == []
    assert _state(client, table) == _expected_late(EARLIER + COMPACTING_BATCH)
