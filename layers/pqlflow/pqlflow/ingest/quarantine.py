"""The quarantine: what ingest keeps of a rejected usage event, and reading it back.

A quarantine item always stores, whatever the body held: its raw body as valid UTF-8 (a lone surrogate
escaped as `\\ud800`, cut at `RAW_LIMIT` bytes), the body's original size, the reason naming the field, and an
expiry. If DynamoDB still refuses an item, the store writes its reduced form (`reduced_item`): ASCII only,
the first KB of the body, the same key, reason and size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pqlflow.contracts.usage_events import MAX_MESSAGE_BYTES, Rejection

QUARANTINE_KIND = "quarantine"
RAW_LIMIT = MAX_MESSAGE_BYTES + 4096  # bytes of a body a quarantine item keeps; past it, the copy is cut
TEXT_LIMIT = 1024  # bytes of the field, reason and messageId kept (they are short by construction)
REDUCED_RAW_LIMIT = 1024  # characters of the body a reduced item keeps


def storable(text: str, limit: int) -> tuple[str, bool, bool]:
    """(copy, escaped, truncated): `text` as valid UTF-8 of at most `limit` bytes. Code points UTF-8
    cannot encode (lone surrogates) are escaped as `\\udxxx`; a cut never splits a character."""
    try:
        data = text.encode("utf-8")
        escaped = False
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
        escaped = True
    truncated = len(data) > limit
    if truncated:
        data = data[:limit]
    return data.decode("utf-8", "ignore"), escaped, truncated


def quarantine_item(body: str, rejection: Rejection, now_ms: int, days: int) -> dict[str, Any]:
    """The quarantine record of a rejected event. Keyed by the body's hash, so redelivery rewrites it."""
    data = body.encode("utf-8", "surrogatepass")  # exact for any str: the key and size of what was received
    received = datetime.fromtimestamp(now_ms / 1000, UTC)
    raw, escaped, truncated = storable(body, RAW_LIMIT)
    item: dict[str, Any] = {
        "pk": {"S": f"Q#{received:%Y-%m-%d}"},
        "sk": {"S": hashlib.sha256(data).hexdigest()[:32]},
        "kind": {"S": QUARANTINE_KIND},
        "field": {"S": storable(rejection.field or "body", TEXT_LIMIT)[0]},
        "reason": {"S": storable(str(rejection), TEXT_LIMIT)[0]},
        "received_at": {"S": received.isoformat().replace("+00:00", "Z")},
        "raw": {"S": raw},
        "body_bytes": {"N": str(len(data))},
        "truncated": {"BOOL": truncated},
        "expires_at": {"N": str(now_ms // 1000 + days * 86400)},
    }
    if escaped:
        item["escaped"] = {"BOOL": True}
    if rejection.message_id:
        item["message_id"] = {"S": storable(rejection.message_id, TEXT_LIMIT)[0]}
    return item


def _ascii(value: Any, limit: int) -> str:
    text = value.get("S", "") if isinstance(value, dict) else ""
    return str(text)[:limit].encode("ascii", "backslashreplace").decode("ascii")


def reduced_item(item: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a quarantine item DynamoDB refused (too large, text it cannot store): the same key,
    reason, size and expiry, ASCII only, with the first KB of the body."""
    reduced: dict[str, Any] = {
        "pk": item["pk"],
        "sk": item["sk"],
        "kind": {"S": QUARANTINE_KIND},
        "field": {"S": _ascii(item.get("field"), 256) or "body"},
        "reason": {"S": _ascii(item.get("reason"), TEXT_LIMIT)},
        "received_at": {"S": _ascii(item.get("received_at"), 64)},
        "raw": {"S": _ascii(item.get("raw"), REDUCED_RAW_LIMIT)},
        "truncated": {"BOOL": True},
        "reduced": {"BOOL": True},
        "expires_at": item["expires_at"],
    }
    if "body_bytes" in item:
        reduced["body_bytes"] = item["body_bytes"]
    if "message_id" in item:
        reduced["message_id"] = {"S": _ascii(item["message_id"], 256)}
    return reduced


def item_key(item: dict[str, Any]) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["S"]


@dataclass
class QuarantineWrite:
    """What writing a batch's quarantine items did. `failed`: items an AWS failure left unwritten (their
    records are retried); `reduced`: items stored in their reduced form; `dropped`: refused even reduced."""

    failed: dict[tuple[str, str], BaseException] = field(default_factory=dict)
    reduced: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class QuarantinedEvent:
    received_at: str
    field: str
    reason: str
    message_id: str | None
    raw: str
    truncated: bool
    expires_at: int
    body_bytes: int | None = None  # the original body's size in bytes (UTF-8); absent on items before it was kept
    escaped: bool = False  # `raw` escapes what UTF-8 cannot hold (lone surrogates)
    reduced: bool = False  # DynamoDB refused the full item: `raw` is the first KB, ASCII-escaped


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
            size = item.get("body_bytes", {}).get("N")
            yield QuarantinedEvent(
                received_at=item["received_at"]["S"], field=item["field"]["S"], reason=item["reason"]["S"],
                message_id=item.get("message_id", {}).get("S"), raw=item["raw"]["S"],
                truncated=item.get("truncated", {}).get("BOOL", False), expires_at=int(item["expires_at"]["N"]),
                body_bytes=int(size) if size is not None else None,
                escaped=item.get("escaped", {}).get("BOOL", False), reduced=item.get("reduced", {}).get("BOOL", False),
            )
