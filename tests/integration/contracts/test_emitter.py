"""The product-team emitter: valid Segment messages, PutEvents in valid chunks, failed entries retried."""

from __future__ import annotations

import json

import boto3
import pytest
from pqlflow.contracts.bus import MAX_REQUEST_BYTES, PublishError
from pqlflow.contracts.usage_events import UsageEvent, parse_body
from pqlflow.emitter import InvalidEvent, UsageEmitter
from pqlflow.kernel import clock

from tests.support.aws_calls import CallRecorder


def _queue_on_bus(bus_name: str) -> str:
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="usage")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="usage", EventBusName=bus_name,
                    EventPattern=json.dumps({"detail-type": ["track", "identify", "group", "page", "screen"]}))
    events.put_targets(Rule="usage", EventBusName=bus_name, Targets=[{"Id": "q", "Arn": arn}])
    return url


def _drain(url: str) -> list[dict]:
    sqs, bodies = boto3.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for m in messages:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_emitted_events_arrive_as_ingest_accepts_them_in_chunks_of_at_most_ten(bus_name):
    # Given an emitter on the bus, and a rule like the stack's delivering to a queue
    url = _queue_on_bus(bus_name)
    client = boto3.client("events")
    calls = CallRecorder(client)
    # When a product team sends 25 events
    with UsageEmitter(bus_name, client=client) as usage:
        usage.group("u1", "acme", {"plan": "free", "contacts_limit": 10_000})
        usage.identify("u1", {"email": "ana@example.com"}, account_id="acme")
        for i in range(22):
            usage.track("u1", "Message Sent", {"channel": "general"}, account_id="acme")
        usage.page("u1", "Pricing", account_id="acme")
    # Then they go in three PutEvents calls and every one is a valid usage event for the account
    assert calls.calls["PutEvents"] == 3
    delivered = _drain(url)
    assert len(delivered) == 25
    parsed = [parse_body(json.dumps(e), clock.now()) for e in delivered]
    assert all(isinstance(p, UsageEvent) and p.account_id == "acme" for p in parsed)
    assert {e["detail-type"] for e in delivered} == {"group", "identify", "track", "page"}


def test_large_events_are_split_to_stay_under_256_kb_per_request():
    # Given 12 events of about 30 KB each
    sent: list[list[dict]] = []

    class Client:
        def put_events(self, Entries):  # noqa: N803 - boto3's parameter name
            sent.append(Entries)
            return {"FailedEntryCount": 0, "Entries": [{"EventId": "x"} for _ in Entries]}

    # When they are flushed
    with UsageEmitter("bus", client=Client()) as usage:
        for _ in range(12):
            usage.track("u1", "File Uploaded", {"notes": "x" * 30_000}, account_id="acme")
    # Then no request exceeds 256 KB or 10 entries, and all 12 went
    assert sum(len(c) for c in sent) == 12
    assert all(len(c) <= 10 and sum(len(e["Detail"]) for e in c) <= MAX_REQUEST_BYTES for c in sent)
    assert len(sent) >= 2


def test_failed_entries_are_retried_until_they_go_and_reported_if_they_never_do():
    # Given EventBridge throttling the first attempt of every other entry
    attempts: list[int] = []

    class Flaky:
        def __init__(self, fail_forever: bool = False):
            self.fail_forever, self.seen = fail_forever, set()

        def put_events(self, Entries):  # noqa: N803
            attempts.append(len(Entries))
            results = []
            for e in Entries:
                key = e["Detail"]
                if self.fail_forever or (hash(key) % 2 == 0 and key not in self.seen):
                    self.seen.add(key)
                    results.append({"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"})
                else:
                    results.append({"EventId": "ok"})
            return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}

    usage = UsageEmitter("bus", client=Flaky(), sleep=lambda s: None)
    for i in range(8):
        usage.track("u1", "Message Sent", {"n": i}, account_id="acme")
    # When flushed, every entry eventually goes
    assert usage.flush() == 8
    # And when some never go, the error says how many and why
    stuck = UsageEmitter("bus", client=Flaky(fail_forever=True), sleep=lambda s: None)
    stuck.track("u1", "Message Sent", account_id="acme")
    with pytest.raises(PublishError, match="1 event.*ThrottlingException"):
        stuck.flush()


def test_an_invalid_event_fails_in_the_callers_code_naming_the_field():
    usage = UsageEmitter("bus", client=object())
    with pytest.raises(InvalidEvent, match="event: is blank"):
        usage.track("u1", "   ", account_id="acme")
    with pytest.raises(InvalidEvent, match="userId: contains control characters"):
        usage.track("u\x00", "Signed In")
