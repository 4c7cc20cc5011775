"""Ingest → the table's stream → qualify, on moto: the real usage items ingest writes, as stream records
(filtered to usage-state items like the template's FilterCriteria), qualify exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.ingest.item import usage_key
from pqlflow.kernel import clock
from pqlflow.qualify import tracking
from pqlflow.qualify.store import DefinitionStore

from functions.ingest import app as ingest_app
from functions.qualify import app as qualify_app
from tests.support.events import sqs_event, track
from tests.support.lambda_context import LambdaContext
from tests.support.template import load_template

ROOT = Path(__file__).resolve().parents[3]
NOW_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z


class TableStream:
    """The records the table's stream carries for the usage item: each write's old and new image.

    (moto's in-process mock has no DynamoDB Streams reads, so the images are taken from the table
    after each ingest call: ingest writes one usage item per account per batch.)"""

    def __init__(self, table_name: str):
        self.table = table_name
        self.client = boto3.client("dynamodb")
        self.image: dict[str, Any] | None = None
        self.sequence = 0

    def after_write(self) -> list[dict[str, Any]]:
        item = self.client.get_item(TableName=self.table, Key=usage_key("acme"), ConsistentRead=True)["Item"]
        self.sequence += 1
        change: dict[str, Any] = {
            "Keys": usage_key("acme"),
            "NewImage": item,
            "SequenceNumber": f"{self.sequence:021d}",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if self.image is not None:
            change["OldImage"] = self.image
        self.image = item
        return [
            {
                "eventID": f"e{self.sequence}",
                "eventName": "MODIFY" if "OldImage" in change else "INSERT",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": change,
            }
        ]


def matches_filter(record: dict[str, Any]) -> bool:
    """The qualify mapping's FilterCriteria from template.yaml, for the shape it uses."""
    props = load_template()["Resources"]["QualifyFunction"]["Properties"]["Events"]["UsageState"]["Properties"]
    pattern = json.loads(props["FilterCriteria"]["Filters"][0]["Pattern"])
    kinds = pattern["dynamodb"]["NewImage"]["kind"]["S"]
    new = record.get("dynamodb", {}).get("NewImage", {})
    return record["eventName"] in pattern["eventName"] and new.get("kind", {}).get("S") in kinds


@pytest.fixture
def ingest(table_name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    clock.set_source(lambda: NOW_MS / 1000)
    monkeypatch.setattr(tracking, "_store", None)
    monkeypatch.setattr(ingest_app, "_processor", None)
    ingest_app.ingest_settings.cache_clear()

    def run(messages: list[dict[str, Any]]) -> None:
        assert ingest_app.handler(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}

    return run


def test_ingested_usage_qualifies_once_through_the_stream(
    table_name: str, bus_name: str, ingest: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the drift definition published and 99 conversations ingested
    path = ROOT / "examples" / "definitions" / "drift-conversations.yaml"
    DefinitionStore(table_name).publish(path.read_text(), str(path))
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events")
    events.put_rule(Name="tap", EventBusName=bus_name, EventPattern=json.dumps({"source": ["pqlflow"]}))
    events.put_targets(Rule="tap", EventBusName=bus_name, Targets=[{"Id": "q", "Arn": arn}])
    start = NOW_MS - 3_600_000
    stream = TableStream(table_name)
    ingest([track("Conversation Started", start + i * 1000, f"c{i}", user=f"u{i % 4}") for i in range(99)])
    short = [r for r in stream.after_write() if matches_filter(r)]

    # When qualify sees those stream records, then the ones of the 100th conversation (delivered twice)
    qualify_app.reset()
    assert qualify_app.handler({"Records": short}, LambdaContext()) == {"batchItemFailures": []}
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []
    ingest([track("Conversation Started", start + 200_000, "c99")])
    boundary = [r for r in stream.after_write() if matches_filter(r)]
    qualify_app.handler({"Records": boundary}, LambdaContext())
    qualify_app.handler({"Records": short + boundary}, LambdaContext())
    qualify_app.reset()

    # Then exactly one PQL Qualified, from the item ingest really wrote
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert [b["detail-type"] for b in bodies] == ["PQL Qualified"]
    assert bodies[0]["detail"]["signals"]["conversations"] == 100
    # And qualify's own PQL item would never pass the stream filter
    pql = boto3.client("dynamodb").get_item(TableName=table_name, Key={"pk": {"S": "A#acme"}, "sk": {"S": "PQL"}})
    assert not matches_filter({"eventName": "MODIFY", "dynamodb": {"NewImage": pql["Item"]}})
