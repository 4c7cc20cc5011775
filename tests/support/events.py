"""Build the events functions receive: Segment messages wrapped as EventBridge events in SQS records."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pqlflow.local.pricing import sqs_record  # the SQS record Lambda's poller delivers

ROOT = Path(__file__).resolve().parents[2]
SEGMENT_SOURCE = "aws.partner/segment.com/GdcYfPzdmsZsU9q2o9Jc7f"


def load_event(relative: str) -> Any:
    return json.loads((ROOT / "events" / relative).read_text())


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def eventbridge(message: dict[str, Any], source: str = SEGMENT_SOURCE) -> dict[str, Any]:
    return {
        "version": "0",
        "id": hashlib.md5(json.dumps(message, sort_keys=True).encode()).hexdigest(),  # noqa: S324
        "detail-type": message.get("type", "track"),
        "source": source,
        "account": "123456789012",
        "time": str(message.get("timestamp", "")),
        "region": "us-east-1",
        "resources": [],
        "detail": message,
    }


def sqs_event(messages: list[dict[str, Any] | str]) -> dict[str, Any]:
    """An SQS event whose records carry each message as Segment's EventBridge destination would
    (a str is used as the raw record body, for malformed input)."""
    records = []
    for i, message in enumerate(messages):
        body = message if isinstance(message, str) else json.dumps(eventbridge(message))
        records.append(sqs_record(body, i))
    return {"Records": records}


def track(event: str, ms: int, message_id: str, user: str = "u1", account: str | None = "acme",
          **properties: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "messageId": message_id, "timestamp": iso(ms),
                               "userId": user, "properties": properties}
    if account is not None:
        message["context"] = {"groupId": account}
    return message
