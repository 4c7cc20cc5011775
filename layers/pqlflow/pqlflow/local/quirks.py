"""The one place where the emulator's (moto's) differences from AWS are smoothed over for handlers.

- DynamoDB streams: moto emits two INSERT records for an UpdateItem that creates an item (the key-only
  item, then the updated one); AWS emits one INSERT with the final image. `collapse_double_inserts`
  keeps the second record (final image, later sequence number).
- DynamoDB streams: boto3 hands back `ApproximateCreationDateTime` as a datetime, records lack
  `eventSourceARN`, and moto says eventVersion "1.0"; Lambda delivers epoch seconds, the stream ARN and "1.1".
- EventBridge: envelopes moto delivers to targets may lack `account` and carry moto's internal
  `ingestion-time`; targets get exactly the documented envelope fields.

Handler code never works around any of this. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pqlflow.local.model import ACCOUNT, REGION

_ENVELOPE_FIELDS = (
    "version",
    "id",
    "detail-type",
    "source",
    "account",
    "time",
    "region",
    "resources",
    "detail",
)


def eventbridge_envelope(raw: Mapping[str, Any], *, account: str = ACCOUNT, region: str = REGION) -> dict[str, Any]:
    """The event as EventBridge delivers it to a target (documented fields, in the documented order)."""
    event = {
        "version": "0",
        "account": account,
        "region": region,
        "resources": [],
        **{k: v for k, v in raw.items() if k in _ENVELOPE_FIELDS},
    }
    if isinstance(event.get("time"), int | float):
        event["time"] = dt.datetime.fromtimestamp(event["time"], tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {k: event[k] for k in _ENVELOPE_FIELDS if k in event}


def stream_record(raw: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A dynamodbstreams GetRecords record in the shape Lambda passes to the function."""
    record = dict(raw)
    data = dict(record.get("dynamodb") or {})
    created = data.get("ApproximateCreationDateTime")
    if isinstance(created, dt.datetime):
        data["ApproximateCreationDateTime"] = int(created.timestamp())
    record["dynamodb"] = data
    record["eventVersion"] = "1.1"
    record["eventSourceARN"] = stream_arn
    record.setdefault("awsRegion", REGION)
    record.setdefault("eventSource", "aws:dynamodb")
    return record


def collapse_double_inserts(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge moto's INSERT-then-INSERT for one key (adjacent records) into the single INSERT AWS emits."""
    out: list[dict[str, Any]] = []
    for record in records:
        previous = out[-1] if out else None
        if (
            previous is not None
            and record.get("eventName") == "INSERT"
            and previous.get("eventName") == "INSERT"
            and (record.get("dynamodb") or {}).get("Keys") == (previous.get("dynamodb") or {}).get("Keys")
        ):
            out[-1] = record
        else:
            out.append(record)
    return out
