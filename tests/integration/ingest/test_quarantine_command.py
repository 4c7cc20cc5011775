"""`pqlflow quarantine list` shows what ingest rejected, with reasons, from the real table."""

from __future__ import annotations

import json

import boto3
from pqlflow.cli import main
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.kernel import clock

from functions.ingest import app
from tests.support.events import sqs_event, track
from tests.support.lambda_context import LambdaContext


def test_quarantine_list_shows_rejected_events_with_reasons(table_name, capsys):
    # Given a batch with one good and two bad events, ingested now
    import time

    now_ms = int(time.time() * 1000)
    clock.set_source(lambda: now_ms / 1000)
    bad = {"type": "track", "event": "X", "messageId": "bad-ts", "timestamp": "last tuesday", "userId": "u"}
    event = sqs_event([track("Message Sent", now_ms - 1000, "ok"), bad, "{oops"])
    store = DynamoUsageStore(table_name, boto3.client("dynamodb"))
    processor = UsageBatchProcessor(store, IngestConfig(), clock.now_ms)
    app.handler(event, LambdaContext(), processor=processor)
    capsys.readouterr()  # the function's own log lines
    # When a user lists the quarantine as JSON
    assert main(["quarantine", "list", "--table", table_name, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Then both rejected events are there with the field at fault and their raw body
    assert {e["field"] for e in listed} == {"timestamp", "body"}
    by_field = {e["field"]: e for e in listed}
    assert by_field["timestamp"]["message_id"] == "bad-ts"
    assert "'last tuesday' is not an ISO 8601 time" in by_field["timestamp"]["reason"]
    assert by_field["body"]["raw"] == "{oops"


def test_quarantine_list_without_a_table_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.delenv("TABLE_NAME", raising=False)
    assert main(["quarantine", "list"]) == 2
    assert "--table is required" in capsys.readouterr().err
