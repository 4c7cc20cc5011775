"""Reading the quarantine: rejected usage events, kept with their raw body and reason until they expire."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class QuarantinedEvent:
    received_at: str
    field: str
    reason: str
    message_id: str | None
    raw: str
    truncated: bool
    expires_at: int


def list_quarantine(client: Any, table: str, days: int = 7, now: datetime | None = None) -> Iterator[QuarantinedEvent]:
    """Quarantined events received in the last `days` days, newest day first (one Query per day)."""
    today = (now or datetime.now(UTC)).date()
    for offset in range(days):
        day = today - timedelta(days=offset)
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"Q#{day.isoformat()}"}},
        }
        items: list[dict[str, Any]] = []
        while True:
            page = client.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        for item in sorted(items, key=lambda i: i["received_at"]["S"], reverse=True):
            yield QuarantinedEvent(
                received_at=item["received_at"]["S"], field=item["field"]["S"], reason=item["reason"]["S"],
                message_id=item.get("message_id", {}).get("S"), raw=item["raw"]["S"],
                truncated=item.get("truncated", {}).get("BOOL", False), expires_at=int(item["expires_at"]["N"]),
            )
