"""The ingest function on moto: counting, quarantine, partial failures, the Segment Spec examples."""

from __future__ import annotations

import json
from datetime import datetime

import boto3
import pytest
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.store import DynamoUsageStore, read_usage
from pqlflow.ingest.usage import FilterSpec, GaugeSpec, TrackingSpec
from pqlflow.kernel import clock

from functions.ingest import app
from tests.support.aws_calls import CallRecorder
from tests.support.events import eventbridge, iso, load_event, sqs_event, track
from tests.support.lambda_context import LambdaContext

NOW_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
HOUR = 3_600_000
SPEC = TrackingSpec(
    gauges=(GaugeSpec("Contacts Updated", "total"),),
    filters=(FilterSpec("Feature Used", "tier", ("paid",)),),
)


@pytest.fixture
def ddb(table_name):
    return boto3.client("dynamodb")


@pytest.fixture
def recorder(ddb):
    return CallRecorder(ddb)


@pytest.fixture
def ingest(table_name, ddb, recorder):
    clock.set_source(lambda: NOW_MS / 1000)

    def run(messages, spec=SPEC):
        processor = UsageBatchProcessor(DynamoUsageStore(table_name, ddb), IngestConfig(spec=spec), clock.now_ms)
        response = app.handler(sqs_event(messages), LambdaContext(), processor=processor)
        return response, processor.outcome

    return run


def usage(ddb, table_name, account="acme", user=None):
    return read_usage(ddb, table_name, account, user)


def quarantine(ddb, table_name):
    items = ddb.scan(TableName=table_name, FilterExpression="kind = :q",
                     ExpressionAttributeValues={":q": {"S": "quarantine"}})["Items"]
    return {i["reason"]["S"] for i in items}, items


def test_a_batch_of_many_events_costs_one_write_per_account(ingest, ddb, table_name, recorder):
    # Given 30 events for three accounts
    messages = [track("Message Sent", NOW_MS - HOUR, f"m{i}", user=f"u{i % 4}", account=f"acct{i % 3}")
                for i in range(30)]
    # When the batch is ingested
    response, outcome = ingest(messages)
    # Then every event is counted, with exactly three UpdateItem calls and no reads
    assert response == {"batchItemFailures": []}
    assert [usage(ddb, table_name, f"acct{a}").count("Message Sent") for a in range(3)] == [10, 10, 10]
    assert recorder.calls["UpdateItem"] == 3
    assert recorder.calls["GetItem"] == 3  # the three made by this test's own assertions, none by ingest
    assert outcome.write_requests == 3


def test_redelivery_and_in_batch_duplicates_count_once(ingest, ddb, table_name):
    # Given a batch where two events appear twice
    messages = [track("Message Sent", NOW_MS - HOUR, f"m{i}") for i in range(5)]
    messages += [messages[0], messages[3]]
    # When it is delivered three times
    for _ in range(3):
        ingest(messages)
    # Then each event counts once
    state = usage(ddb, table_name)
    assert state.count("Message Sent") == 5
    assert state.count_last("Message Sent", 1, NOW_MS) == 5


def test_state_has_what_qualification_needs(ingest, ddb, table_name):
    # Given usage, a gauge, a paid-feature filter, group and identify traits, and a conversion
    t = NOW_MS - 5 * HOUR
    messages = [
        track("Contacts Updated", t, "c1", total=7000),
        track("Contacts Updated", t + 2 * HOUR, "c2", total=8000),
        track("Contacts Updated", t + HOUR, "c3", total=7500),  # older reading arrives last
        track("Feature Used", t, "f1", tier="paid", feature="workflows"),
        track("Feature Used", t, "f2", tier="free", feature="inbox"),
        {"type": "group", "groupId": "acme", "messageId": "g1", "timestamp": iso(t), "userId": "u1",
         "traits": {"plan": "free", "contacts_limit": 10000, "employees": 40}},
        {"type": "group", "groupId": "acme", "messageId": "g2", "timestamp": iso(t + HOUR), "userId": "u1",
         "traits": {"plan": "free", "employees": 45}},
        {"type": "identify", "messageId": "i1", "timestamp": iso(t), "userId": "u2",
         "context": {"groupId": "acme"},
         "traits": {"email": "ana@example.com", "name": "Ana", "timezone": "Europe/Paris"}},
        track("Subscription Started", t + 3 * HOUR, "s1", plan="pro"),
    ]
    # When ingested (in two batches, reversed: order must not matter)
    ingest(messages[5:][::-1])
    ingest(messages[:5][::-1])
    # Then the decoded state has the latest gauge by event time, filtered counts, traits, users, times
    state = usage(ddb, table_name)
    assert state.gauge("Contacts Updated.total") == 8000
    assert state.count("Feature Used") == 2 and state.count("Feature Used[tier=paid]") == 1
    assert state.trait("employees") == 45 and state.trait("contacts_limit") == 10000
    assert state.user_traits("u2")["email"] == "ana@example.com"
    assert state.first_seen_ms == t and state.last_seen_ms == t + 3 * HOUR
    assert state.converted_at_ms == t + 3 * HOUR
    assert state.active_users_last(1, NOW_MS) == 2


BAD_INPUT = [
    ("not json", "body is not valid JSON"),
    ("[1, 2]", "body is not a JSON object"),
    (json.dumps(eventbridge({"type": "track", "event": "X", "timestamp": iso(NOW_MS), "userId": "u"})),
     "messageId: missing"),
    ({"type": "track", "event": "X", "messageId": "  ", "timestamp": iso(NOW_MS), "userId": "u"},
     "messageId: is blank"),
    ({"type": "track", "event": "X", "messageId": "b1", "userId": "u"}, "timestamp: missing"),
    ({"event": "X", "messageId": "b2", "timestamp": iso(NOW_MS), "userId": "u"}, "type: missing"),
    ({"type": "alias", "messageId": "b3", "timestamp": iso(NOW_MS), "userId": "u"}, "type: unknown type 'alias'"),
    ({"type": "track", "messageId": "b4", "timestamp": iso(NOW_MS), "userId": "u"}, "event: missing"),
    ({"type": "track", "event": " ", "messageId": "b5", "timestamp": iso(NOW_MS), "userId": "u"}, "event: is blank"),
    ({"type": "track", "event": "X", "messageId": "b6", "timestamp": "yesterday", "userId": "u"},
     "timestamp: 'yesterday' is not an ISO 8601 time with a zone"),
    ({"type": "track", "event": "X", "messageId": "b7", "timestamp": "2026-11-22T10:00:00", "userId": "u"},
     "is not an ISO 8601 time with a zone"),
    ({"type": "track", "event": "X", "messageId": "b8", "timestamp": iso(NOW_MS + 2 * 86_400_000), "userId": "u"},
     "more than a day in the future"),
    ({"type": "track", "event": "X", "messageId": "b9", "timestamp": iso(NOW_MS - 91 * 86_400_000), "userId": "u"},
     "older than the 90-day retention window"),
    ({"type": "track", "event": "X", "messageId": "b10", "timestamp": iso(NOW_MS), "userId": "u" * 257},
     "userId: is longer than 256 characters"),
    ({"type": "track", "event": "X", "messageId": "b11", "timestamp": iso(NOW_MS), "userId": "u\x07"},
     "userId: contains control characters"),
    ({"type": "track", "event": "X", "messageId": "b12", "timestamp": iso(NOW_MS), "userId": "u",
      "context": {"groupId": "a\nb"}}, "context.groupId: contains control characters"),
    ({"type": "track", "event": "X", "messageId": "b13", "timestamp": iso(NOW_MS), "userId": "u",
      "properties": [1]}, "properties: must be an object"),
    ({"type": "identify", "messageId": "b14", "timestamp": iso(NOW_MS), "userId": "u", "traits": "vip"},
     "traits: must be an object"),
    ({"type": "track", "event": "X", "messageId": "b15", "timestamp": iso(NOW_MS), "userId": "u",
      "properties": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
     "properties: nests deeper than 8 levels"),
    ({"type": "track", "event": "X", "messageId": "b16", "timestamp": iso(NOW_MS), "userId": "u",
      "properties": {"blob": "x" * 40_000}}, "the limit is 32,768 bytes"),
    ('{"detail-type":"track","source":"s","detail":{"type":"track","event":"Contacts Updated","messageId":"b17",'
     f'"timestamp":"{iso(NOW_MS)}","userId":"u","properties":{{"total":NaN}}}}}}',
     "properties.total: gauge value is NaN"),
    ('{"detail-type":"track","source":"s","detail":{"type":"track","event":"Contacts Updated","messageId":"b18",'
     f'"timestamp":"{iso(NOW_MS)}","userId":"u","properties":{{"total":Infinity}}}}}}',
     "properties.total: gauge value is infinite"),
    ({"type": "track", "event": "Contacts Updated", "messageId": "b19", "timestamp": iso(NOW_MS), "userId": "u",
      "properties": {"total": "8000"}}, 'properties.total: gauge value is not a number ("8000")'),
    ({"type": "track", "event": "X", "messageId": "b20", "timestamp": iso(NOW_MS)},
     "userId: missing: a message needs a userId or an anonymousId"),
]


def test_every_bad_input_is_quarantined_with_its_reason_and_the_good_are_counted(ingest, ddb, table_name):
    # Given a batch mixing every class of bad input with two good events
    good = [track("Message Sent", NOW_MS - HOUR, "good1"), track("Message Sent", NOW_MS - HOUR, "good2")]
    messages = [good[0], *[bad for bad, _ in BAD_INPUT], good[1]]
    # When it is ingested
    response, outcome = ingest(messages)
    # Then nothing is retried, the good events are counted and each bad one is quarantined with its reason
    assert response == {"batchItemFailures": []}
    assert usage(ddb, table_name).count("Message Sent") == 2
    reasons, items = quarantine(ddb, table_name)
    assert len(items) == len(BAD_INPUT)
    for _, expected in BAD_INPUT:
        assert any(expected in reason for reason in reasons), f"no quarantine reason contains {expected!r}"
    assert sum(outcome.quarantined.values()) == len(BAD_INPUT)
    assert all(int(i["expires_at"]["N"]) > NOW_MS // 1000 for i in items)
    raw_bodies = {i["raw"]["S"] for i in items}
    assert "not json" in raw_bodies


def test_a_transient_write_error_retries_only_that_accounts_records(ingest, recorder):
    # Given a batch for two accounts, and DynamoDB throttling the first account's write
    messages = [track("Message Sent", NOW_MS - HOUR, "a1", account="first"),
                track("Message Sent", NOW_MS - HOUR, "b1", account="second"),
                track("Message Sent", NOW_MS - HOUR, "a2", account="first"),
                "not json"]
    recorder.fail_at = recorder.total + 2  # BatchWriteItem (quarantine) first, then first's UpdateItem
    # When it is ingested
    response, _ = ingest(messages)
    # Then only the first account's two records are reported for retry: not the bad one, not the other account
    event = sqs_event(messages)
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    assert failed == {event["Records"][0]["messageId"], event["Records"][2]["messageId"]}


@pytest.mark.parametrize("name", ["track", "identify", "group"])
def test_the_segment_spec_examples_as_segments_eventbridge_destination_sends_them_are_counted(
        name, table_name, ddb):
    # Given the complete example from the Segment Spec docs, wrapped by Segment's EventBridge destination
    envelope = load_event(f"eventbridge/{name}.json")
    assert envelope["source"].startswith("aws.partner/segment.com/") and envelope["detail-type"] == name
    sent_ms = int(datetime.fromisoformat(envelope["detail"]["timestamp"]).timestamp() * 1000)
    clock.set_source(lambda: sent_ms / 1000 + 60)
    event = load_event(f"sqs/{name}.json")
    # When ingest receives the SQS record
    processor = UsageBatchProcessor(DynamoUsageStore(table_name, ddb), IngestConfig(spec=SPEC), clock.now_ms)
    response = app.handler(event, LambdaContext(), processor=processor)
    # Then it is accepted and lands in the right account
    assert response == {"batchItemFailures": []}
    assert processor.outcome.accepted == 1
    detail = envelope["detail"]
    account = {"track": "user:AiUGstSDIg", "identify": "user:97980cfea0067"}.get(name, detail.get("groupId"))
    state = usage(ddb, table_name, account)
    if name == "track":
        assert state.count("Course Clicked") == 1
    elif name == "identify":
        assert state.user_traits("97980cfea0067")["email"] == "peter@example.com"
        assert state.trait("plan") == "premium"  # a user-alone account takes the user's traits
    else:
        assert state.trait("employees") == 329 and state.trait("name") == "Initech"


def test_unit_user_keeps_state_per_user(ingest, ddb, table_name):
    # Given a per-user definition's tracking spec
    spec = TrackingSpec(unit="user")
    # When two users of one account sign in
    ingest([track("Signed In", NOW_MS - HOUR, f"s{i}", user=f"u{i % 2}") for i in range(5)], spec=spec)
    # Then each user has their own state
    assert usage(ddb, table_name, "acme", "u0").count("Signed In") == 3
    assert usage(ddb, table_name, "acme", "u1").count("Signed In") == 2
