"""The ingest function fed by S3 objects, as a Firehose stream delivers the usage rule's events (the low-cost
transport): the same counts as SQS, one write per account per object, redelivery and crashes counted once."""

from __future__ import annotations

import gzip
import json
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.objects import bodies
from pqlflow.ingest.store import DynamoUsageStore, read_usage
from pqlflow.kernel import clock
from pqlflow.local.pricing import object_created

from functions.ingest import app
from tests.integration.ingest.test_ingest import NOW_MS, SPEC
from tests.support.aws_calls import CallRecorder, Crash
from tests.support.events import eventbridge, track
from tests.support.lambda_context import LambdaContext

HOUR = 3_600_000
BUCKET = "pqlflow-usage-objects"


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def ddb(table_name: str) -> Any:
    return boto3.client("dynamodb")


def firehose_object(messages: list[dict[str, Any] | str], *, delimited: bool = True, compressed: bool = True) -> bytes:
    """What Firehose writes for these events: each EventBridge event's JSON, a newline after each when the stream
    appends the delimiter, the whole gzip-compressed when the stream compresses."""
    texts = [m if isinstance(m, str) else json.dumps(eventbridge(m), separators=(",", ":")) for m in messages]
    data = ("".join(t + "\n" for t in texts) if delimited else "".join(texts)).encode()
    return gzip.compress(data) if compressed else data


def notification(key: str, size: int) -> dict[str, Any]:
    """The Object Created event S3 sends to EventBridge for the object, its key URL-encoded as S3 does, as the
    template's UsageObjectsRule passes it to ingest."""
    return object_created(BUCKET, quote_plus(key, safe="/"), size)


def deliver(s3: Any, ddb: Any, table_name: str, key: str, data: bytes) -> dict[str, Any]:
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return invoke(s3, ddb, table_name, key, len(data))


def invoke(s3: Any, ddb: Any, table_name: str, key: str, size: int) -> dict[str, Any]:
    clock.set_source(lambda: NOW_MS / 1000)
    processor = UsageBatchProcessor(DynamoUsageStore(table_name, ddb), IngestConfig(spec=SPEC), clock.now_ms)
    return app.handler(notification(key, size), LambdaContext(), processor=processor, s3=s3)


def counts(ddb: Any, table_name: str, accounts: list[str], event: str = "Message Sent") -> list[int]:
    out = []
    for account in accounts:
        usage = read_usage(ddb, table_name, account)
        out.append(usage.count(event) if usage else 0)
    return out


def test_an_object_is_one_batch_one_write_per_account_whatever_its_framing(s3, ddb, table_name) -> None:
    # Given 60 events of three accounts, delivered in three objects framed the ways Firehose can write them
    messages = [track("Message Sent", NOW_MS - HOUR, f"m{i}", user=f"u{i % 4}", account=f"acct{i % 3}")
                for i in range(60)]
    recorder = CallRecorder(ddb)
    framings = [{"delimited": True, "compressed": True}, {"delimited": False, "compressed": True},
                {"delimited": True, "compressed": False}]
    for n, framing in enumerate(framings):
        part = messages[n * 20:(n + 1) * 20]
        # When each object is delivered
        result = deliver(s3, ddb, table_name, f"2026/11/22/10/usage-{n} 1:x", firehose_object(part, **framing))
        assert result == {"objects": 1, "events": 20}
    # Then every event is counted once, and each object cost one UpdateItem per account
    assert counts(ddb, table_name, ["acct0", "acct1", "acct2"]) == [20, 20, 20]
    assert recorder.calls["UpdateItem"] == 9


def test_a_redelivered_object_counts_once(s3, ddb, table_name) -> None:
    # Given an object with in-object duplicates (Firehose retried a PutRecord), delivered, then delivered again
    # (S3 notifications and Lambda's asynchronous invocation are at-least-once)
    messages = [track("Message Sent", NOW_MS - HOUR, f"m{i}") for i in range(10)]
    data = firehose_object(messages + messages[:3])
    deliver(s3, ddb, table_name, "o-1", data)
    invoke(s3, ddb, table_name, "o-1", len(data))
    # Then each event counts once
    assert counts(ddb, table_name, ["acme"]) == [10]


def test_a_corrupt_fragment_is_quarantined_and_the_events_after_it_still_count(s3, ddb, table_name) -> None:
    # Given an undelimited object whose middle is damaged, and an event whose text holds "}{" in a property
    good = [track("Message Sent", NOW_MS - HOUR, f"m{i}", note='}{"version":"0"}') for i in range(4)]
    texts = [json.dumps(eventbridge(m), separators=(",", ":")) for m in good]
    damaged = texts[0] + texts[1][:40] + texts[2] + texts[3]
    # When it is delivered
    result = deliver(s3, ddb, table_name, "o-2", gzip.compress(damaged.encode()))
    # Then the three whole events count, and the fragment is kept in the quarantine with its reason
    assert counts(ddb, table_name, ["acme"]) == [3]
    assert result["events"] == 4
    items = ddb.scan(TableName=table_name, FilterExpression="kind = :q",
                     ExpressionAttributeValues={":q": {"S": "quarantine"}})["Items"]
    assert len(items) == 1 and "JSON" in items[0]["reason"]["S"]


@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_failure_at_any_aws_call_then_the_retry_counts_every_event_once(s3, ddb, table_name, failure) -> None:
    # Given an object of events of two accounts, one malformed line, and a gauge
    messages: list[dict[str, Any] | str] = [
        track("Message Sent", NOW_MS - HOUR - i, f"m{i}", account=["acme", "globex"][i % 2]) for i in range(8)]
    messages += ["not json", track("Contacts Updated", NOW_MS - HOUR, "g1", total=40)]
    data = firehose_object(messages)
    s3.put_object(Bucket=BUCKET, Key="o-3", Body=data)
    recorder = CallRecorder(ddb)
    invoke(s3, ddb, table_name, "o-3", len(data))
    calls = recorder.total
    clean = counts(ddb, table_name, ["acme", "globex"])
    assert clean == [4, 4] and calls >= 3
    for n in range(1, calls + 1):
        # When the Nth DynamoDB call of the object fails (an AWS error; the process dying before or after it)
        fresh = f"{table_name}-{failure}-{n}"
        ddb.create_table(TableName=fresh, **_definition(ddb, table_name))
        recorder = CallRecorder(ddb)
        recorder.fail_at, recorder.failure = n, failure
        with pytest.raises((app.ObjectNotIngested, Crash)):
            invoke(s3, ddb, fresh, "o-3", len(data))
        recorder.fail_at = None
        # and Lambda retries the invocation (the whole object)
        invoke(s3, ddb, fresh, "o-3", len(data))
        # Then the state is the clean run's
        assert counts(ddb, fresh, ["acme", "globex"]) == clean, f"call {n} ({failure})"
        assert read_usage(ddb, fresh, "acme").gauges == read_usage(ddb, table_name, "acme").gauges


def _definition(ddb: Any, table_name: str) -> dict[str, Any]:
    table = ddb.describe_table(TableName=table_name)["Table"]
    return {"AttributeDefinitions": table["AttributeDefinitions"], "KeySchema": table["KeySchema"],
            "BillingMode": "PAY_PER_REQUEST"}


def test_splitting_finds_each_event_of_every_framing() -> None:
    texts = ['{"version":"0","detail":{"a":"}{"}}', '{"version":"0","detail":{}}']
    assert list(bodies("\n".join(texts) + "\n")) == texts
    assert list(bodies("".join(texts))) == texts
    assert list(bodies(" " + texts[0] + "\r\n\n" + texts[1])) == [" " + texts[0] + "\r", texts[1]]
    assert list(bodies('{"version":"0",' + texts[1])) == ['{"version":"0",', texts[1]]
