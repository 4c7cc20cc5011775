"""A Segment HTTP API request body → Segment messages for the bus, each judged by the usage-event contract.

Segment's rules, as its HTTP Tracking API applies them:

- `/v1/track`, `/identify`, `/group`, `/page`, `/screen` carry one message, whose `type` is the call's
  (analytics.js posts to `/v1/t`, `/v1/i`, `/v1/g`, `/v1/p`, `/v1/s`, `/v1/a` and `/v1/b`: the same calls);
  `/v1/batch` carries `{"batch": [...]}`, each message naming its `type`, and the batch's top-level
  `context` and `integrations` apply to every message in it (a message's own keys win).
- 32 KB per message, 500 KB per batch request (after gzip is undone); `writeKey` in a body is a
  credential and never travels further.
- Times: `receivedAt` is when the API got the request. With a `sentAt` (the message's or the batch's), the
  client's clock is corrected: `timestamp = receivedAt - (sentAt - timestamp)`, the client's value kept as
  `originalTimestamp`. A message without `timestamp` happened at `receivedAt`.
- A message without `messageId` gets one derived from its content (`derived_message_id`): an SDK that
  retries the same body sends the same ids, and ingest counts each once.

pqlflow's own rule: every message is then validated by `pqlflow.contracts.usage_events.parse_body`, the very
code ingest runs, so a message accepted here is one ingest accepts. `alias` is answered, not forwarded:
pqlflow keys usage by userId and groupId and does not merge identities.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pqlflow.contracts.usage_events import MAX_MESSAGE_BYTES, SEGMENT_TYPES, Rejection, parse_body

MAX_BATCH_BYTES = 500 * 1024
CALLS = (*SEGMENT_TYPES, "alias")
# analytics.js (analytics-next) posts each call to its first letter (/v1/t, /v1/p, ...; /v1/b when batching).
SHORT_PATHS = {call[0]: call for call in (*CALLS, "batch")}
ALIAS_REASON = ("alias is not supported: pqlflow keys usage by userId and groupId and does not merge "
                "identities (send identify with the new userId, and group for its account)")
_SERVER_FIELDS = ("sentAt", "receivedAt", "writeKey")  # not the client's content: left out of derived ids


class RequestRejected(Exception):
    """The whole request is refused (nothing accepted): HTTP `status`, Segment-style `code`, the reason."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


@dataclass(frozen=True)
class Judged:
    """One message of a request: `detail` (the JSON to put on the bus) when accepted, else `rejection`.
    `kept` is the message as the client sent it (with its derived messageId): what a rejection quarantines,
    the same on every retry of the body."""

    index: int | None
    type: str
    kept: str
    detail: str | None = None
    rejection: Rejection | None = None
    message_id: str | None = None


def read_json(data: bytes, content_encoding: str | None, limit: int) -> Any:
    """The request body as JSON: gzip undone (at most `limit` bytes inflated), 413 past `limit`, 400 if unreadable."""
    encoding = (content_encoding or "").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, limit + 1)
        except zlib.error:
            raise RequestRejected(400, "invalid_request", "body: Content-Encoding is gzip but the body is "
                                  "not gzip data", "body") from None
        if len(data) <= limit and not inflater.eof:
            raise RequestRejected(400, "invalid_request", "body: the gzip data is truncated", "body")
    elif encoding not in ("", "identity"):
        raise RequestRejected(415, "unsupported_encoding", f"Content-Encoding '{encoding[:32]}' is not supported "
                              "(send gzip, or no encoding)")
    if len(data) > limit:
        what = "batch" if limit == MAX_BATCH_BYTES else "message"
        raise RequestRejected(413, "payload_too_large", f"the {what} is larger than {limit // 1024} KB "
                              f"({limit:,} bytes)")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestRejected(400, "invalid_json", "body is not UTF-8 text", "body") from None
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise RequestRejected(400, "invalid_json", f"body is not valid JSON{where}", "body") from None


def body_limit(call: str) -> int:
    return MAX_BATCH_BYTES if call == "batch" else MAX_MESSAGE_BYTES


def write_key_in(body: Any) -> str | None:
    value = body.get("writeKey") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


def judge_request(call: str, body: Any, received: datetime, retention_days: int) -> list[Judged]:
    """Every message of a request body, judged (see the module docstring); a body of the wrong shape raises."""
    if not isinstance(body, dict):
        raise RequestRejected(400, "invalid_request", "body must be a JSON object", "body")
    if call != "batch":
        return [_judge(None, dict(body), call, {}, received, retention_days)]
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise RequestRejected(400, "invalid_request", "batch: missing, or not a list of messages", "batch")
    defaults = {k: body[k] for k in ("context", "integrations", "sentAt") if k in body}
    return [_judge(i, item, None, defaults, received, retention_days) for i, item in enumerate(batch)]


def derived_message_id(message: dict[str, Any]) -> str:
    """A messageId from the message's content (its server-side fields left out): stable across retries."""
    content = {k: v for k, v in message.items() if k not in _SERVER_FIELDS}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "pqlflow-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _judge(index: int | None, item: Any, call: str | None, defaults: dict[str, Any], received: datetime,
           retention_days: int) -> Judged:
    if not isinstance(item, dict):
        kept = _compact(item)
        return Judged(index, "", kept, rejection=Rejection("", "a message must be a JSON object"))
    message = dict(item)
    message.pop("writeKey", None)
    if call is not None:
        message["type"] = call
    for name in ("context", "integrations"):
        shared = defaults.get(name)
        own = message.get(name, {})
        if isinstance(shared, dict) and isinstance(own, dict):  # a malformed own value is the contract's to name
            message[name] = {**shared, **own}
    if message.get("messageId") is None:
        message["messageId"] = derived_message_id(message)
    kind = message["type"] if isinstance(message.get("type"), str) else ""
    mid = message["messageId"] if isinstance(message["messageId"], str) else None
    sent_at = message.pop("sentAt", defaults.get("sentAt"))
    kept = _compact(message)
    size = len(kept.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        reason = f"message is {size:,} bytes; the limit is {MAX_MESSAGE_BYTES:,} bytes (32 KB)"
        return Judged(index, kind, kept, rejection=Rejection("", reason, mid), message_id=mid)
    if kind == "alias":
        return Judged(index, kind, kept, rejection=Rejection("type", ALIAS_REASON, mid), message_id=mid)
    problem = _set_times(message, sent_at, received)
    if problem is not None:
        return Judged(index, kind, kept, rejection=Rejection(problem[0], problem[1], mid), message_id=mid)
    detail = _compact(message)
    checked = parse_body(detail, received.timestamp(), retention_days)
    if isinstance(checked, Rejection):
        return Judged(index, kind, kept, rejection=checked, message_id=mid)
    return Judged(index, kind, kept, detail=detail, message_id=checked.message_id)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _set_times(message: dict[str, Any], sent_at: Any, received: datetime) -> tuple[str, str] | None:
    """Segment's timestamps: receivedAt, and timestamp corrected by sentAt (a problem names the field)."""
    message["receivedAt"] = iso(received)
    sent = None
    if sent_at is not None:
        sent = _aware(sent_at)
        if sent is None:
            return "sentAt", f"'{str(sent_at)[:60]}' is not an ISO 8601 time with a zone"
        message["sentAt"] = sent_at
    if "timestamp" not in message or message["timestamp"] is None:
        message["timestamp"] = iso(received)
        return None
    original = _aware(message["timestamp"])
    if original is None or sent is None:
        return None  # as sent: the contract names a bad timestamp
    message["originalTimestamp"] = message["timestamp"]
    message["timestamp"] = iso(received - (sent - original))
    return None

