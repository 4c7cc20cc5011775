"""The usage-event contract: Segment Spec messages as Amazon EventBridge delivers them, and their validation.

A usage event is a Segment `track`, `identify`, `group`, `page` or `screen` message. On the bus the
EventBridge `detail-type` is the Segment `type` and `detail` is the message, exactly as Segment's
Amazon EventBridge destination sends it. `page` and `screen` calls are tracked events named
`Page Viewed` and `Screen Viewed`, with the call's `name` and `category` merged into the properties.

`parse_body` turns one SQS record body into a `UsageEvent`, or a `Rejection` whose reason names the
field. It never raises for bad data: bad input is quarantined, never retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

SEGMENT_TYPES = ("track", "identify", "group", "page", "screen")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_IDENTIFIER_CHARS = 256
MAX_NESTING_DEPTH = 8
MAX_FUTURE_SECONDS = 24 * 3600
DEFAULT_RETENTION_DAYS = 90
PAGE_EVENT = "Page Viewed"
SCREEN_EVENT = "Screen Viewed"

# At least one visible character, no control characters; checked in pydantic-core (no Python call).
_IDENTIFIER_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
Identifier = Annotated[str, StringConstraints(max_length=MAX_IDENTIFIER_CHARS, pattern=_IDENTIFIER_PATTERN)]


class SegmentContext(BaseModel):
    """The parts of Segment's `context` object pqlflow reads; everything else is kept but ignored."""

    model_config = ConfigDict(extra="allow")

    groupId: Identifier | None = None
    timezone: str | None = None


class _SegmentMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    messageId: Identifier
    timestamp: AwareDatetime
    userId: Identifier | None = None
    anonymousId: Identifier | None = None
    context: SegmentContext | None = None


class TrackMessage(_SegmentMessage):
    """A user did something: `event` is the action, `properties` describe it."""

    type: Literal["track"]
    event: Identifier
    properties: dict[str, Any] = Field(default_factory=dict)


class PageMessage(_SegmentMessage):
    """A web page view; counted as the tracked event `Page Viewed`."""

    type: Literal["page"]
    name: Identifier | None = None
    category: Identifier | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class ScreenMessage(_SegmentMessage):
    """A mobile screen view; counted as the tracked event `Screen Viewed`."""

    type: Literal["screen"]
    name: Identifier | None = None
    category: Identifier | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class IdentifyMessage(_SegmentMessage):
    """Who the user is: `traits` such as email, name, timezone, role."""

    type: Literal["identify"]
    traits: dict[str, Any] = Field(default_factory=dict)


class GroupMessage(_SegmentMessage):
    """Which account (company, workspace) the user belongs to, and that account's `traits`."""

    type: Literal["group"]
    groupId: Identifier
    traits: dict[str, Any] = Field(default_factory=dict)


SegmentMessage = Annotated[
    TrackMessage | IdentifyMessage | GroupMessage | PageMessage | ScreenMessage,
    Field(discriminator="type"),
]


class EventBridgeEnvelope(BaseModel):
    """An EventBridge event carrying a Segment message, as the rule delivers it to the SQS queue."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    source: str
    detail: SegmentMessage
    id: str | None = None
    time: str | None = None
    account: str | None = None
    region: str | None = None


_ENVELOPE = TypeAdapter(EventBridgeEnvelope)
_MESSAGE = TypeAdapter(SegmentMessage)


@dataclass(slots=True)
class UsageEvent:
    """One valid usage event, normalized: what aggregation and the definition language read."""

    message_id: str
    kind: Literal["track", "identify", "group"]
    account_id: str
    user_id: str
    ms: int
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None


@dataclass(slots=True, frozen=True)
class Rejection:
    """Why an event was refused. `field` is the offending field's dotted path, `reason` says what is wrong."""

    field: str
    reason: str
    message_id: str | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


def account_for(user_id: str) -> str:
    """The account of an event with no group: the user alone (B2C)."""
    return f"user:{user_id}"


def parse_body(
    body: str, now_s: float, retention_days: int = DEFAULT_RETENTION_DAYS
) -> UsageEvent | Rejection:
    """Validate one SQS body (an EventBridge event, or a bare Segment message) into a `UsageEvent`."""
    if len(body) > MAX_MESSAGE_BYTES // 4 and len(body.encode()) > MAX_MESSAGE_BYTES + 2048:
        return _oversized(body)
    try:
        if '"detail-type"' in body:
            envelope = _ENVELOPE.validate_json(body)
            message = envelope.detail
            if envelope.detail_type != message.type:
                return Rejection(
                    "detail-type",
                    f"'{_clip(envelope.detail_type)}' does not match the message type '{message.type}'",
                    message.messageId,
                )
        else:
            message = _MESSAGE.validate_json(body)
    except ValidationError as exc:
        return _rejection_from(exc, body)
    return _check(message, now_s, retention_days, body)


def parse_message(
    message: dict[str, Any], now_s: float, retention_days: int = DEFAULT_RETENTION_DAYS
) -> UsageEvent | Rejection:
    """Validate an already-decoded Segment message (backtest, replay)."""
    return parse_body(json.dumps(message, separators=(",", ":")), now_s, retention_days)


def _check(message: Any, now_s: float, retention_days: int, body: str) -> UsageEvent | Rejection:
    mid = message.messageId
    user_id = message.userId or message.anonymousId
    if user_id is None:
        return Rejection("userId", "missing: a message needs a userId or an anonymousId", mid)
    ts: datetime = message.timestamp
    ts_s = ts.timestamp()
    if ts_s > now_s + MAX_FUTURE_SECONDS:
        return Rejection("timestamp", f"{ts.isoformat()} is more than a day in the future", mid)
    if ts_s < now_s - retention_days * 86400:
        return Rejection("timestamp", f"{ts.isoformat()} is older than the {retention_days}-day retention window", mid)
    if body.count("{") + body.count("[") > MAX_NESTING_DEPTH + 2:
        bad = _too_deep(message)
        if bad:
            return Rejection(bad, f"nests deeper than {MAX_NESTING_DEPTH} levels", mid)
    context = message.context
    group_id = context.groupId if context is not None else None
    timezone = context.timezone if context is not None else None
    kind = message.type
    if kind == "track":
        return UsageEvent(mid, "track", group_id or account_for(user_id), user_id, int(ts_s * 1000),
                          message.event, message.properties, timezone=timezone)
    if kind == "identify":
        return UsageEvent(mid, "identify", group_id or account_for(user_id), user_id, int(ts_s * 1000),
                          traits=message.traits, timezone=timezone)
    if kind == "group":
        return UsageEvent(mid, "group", message.groupId, user_id, int(ts_s * 1000),
                          traits=message.traits, timezone=timezone)
    properties = dict(message.properties)
    if message.name is not None:
        properties.setdefault("name", message.name)
    if message.category is not None:
        properties.setdefault("category", message.category)
    return UsageEvent(mid, "track", group_id or account_for(user_id), user_id, int(ts_s * 1000),
                      PAGE_EVENT if kind == "page" else SCREEN_EVENT, properties, timezone=timezone)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _too_deep(message: Any) -> str | None:
    for name in ("properties", "traits"):
        value = getattr(message, name, None)
        if value is not None and _depth(value) > MAX_NESTING_DEPTH:
            return name
    return None


def _oversized(body: str) -> Rejection:
    size = len(body.encode())
    try:
        decoded = json.loads(body)
        message = decoded.get("detail", decoded) if isinstance(decoded, dict) else decoded
        mid = message.get("messageId") if isinstance(message, dict) else None
        size = len(json.dumps(message, separators=(",", ":")).encode())
    except (ValueError, AttributeError):
        mid = None
    if size <= MAX_MESSAGE_BYTES:  # the envelope, not the message, made the body large
        return Rejection("", f"envelope is {size:,} bytes, larger than EventBridge allows", _str_or_none(mid))
    return Rejection("", f"message is {size:,} bytes; the limit is {MAX_MESSAGE_BYTES:,} bytes (32 KB)",
                     _str_or_none(mid))


def _str_or_none(value: Any) -> str | None:
    return value[:MAX_IDENTIFIER_CHARS] if isinstance(value, str) else None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


_LOC_SKIP = {"track", "identify", "group", "page", "screen", "function-after[_check()]"}


def _rejection_from(exc: ValidationError, body: str) -> Rejection:
    """Turn pydantic's first error into a reason that names the field and says what is wrong."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    loc = [str(p) for p in error["loc"] if p not in _LOC_SKIP]
    if loc[:1] == ["detail"] and '"detail-type"' in body:
        loc = loc[1:]
    path = ".".join(loc)
    mid = _message_id_of(body)
    if kind == "json_invalid":
        return Rejection("", f"body is not valid JSON ({error['msg'].removeprefix('Invalid JSON: ')})", mid)
    if kind in ("model_type", "model_attributes_type", "dict_type") and not path:
        return Rejection("", "body is not a JSON object", mid)
    if kind == "union_tag_not_found":
        return Rejection(path or "type", "missing: one of " + ", ".join(SEGMENT_TYPES) + " is required", mid)
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "")
        return Rejection(path or "type", f"unknown type '{_clip(str(tag))}' (expected one of "
                         + ", ".join(SEGMENT_TYPES) + ")", mid)
    if kind == "missing":
        return Rejection(path, "missing: this field is required", mid)
    if kind == "string_pattern_mismatch":
        value = error.get("input", "")
        what = "is blank" if isinstance(value, str) and not value.strip() else "contains control characters"
        return Rejection(path, what, mid)
    if kind == "string_too_long":
        return Rejection(path, f"is longer than {MAX_IDENTIFIER_CHARS} characters", mid)
    if kind in ("timezone_aware", "datetime_parsing", "datetime_from_date_parsing", "datetime_type"):
        value = error.get("input")
        return Rejection(path, f"'{_clip(str(value))}' is not an ISO 8601 time with a zone", mid)
    if kind == "dict_type":
        return Rejection(path, f"must be an object, not {type(error.get('input')).__name__}", mid)
    return Rejection(path, error["msg"], mid)


def _message_id_of(body: str) -> str | None:
    """Best effort: the messageId of a message that failed validation, for the quarantine listing."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    if isinstance(decoded, dict):
        message = decoded.get("detail", decoded)
        if isinstance(message, dict):
            return _str_or_none(message.get("messageId"))
    return None


def json_schemas() -> dict[str, Any]:
    """JSON Schemas of the usage-event contract, generated from the models."""
    return {
        "segment-message": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                            "title": "Segment message accepted by pqlflow ingest", **_MESSAGE.json_schema()},
        "eventbridge-event": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                              "title": "EventBridge event carrying a Segment message",
                              **_ENVELOPE.json_schema(by_alias=True)},
    }


def write_schemas(folder: str = "events/schemas") -> list[str]:
    """Write the contract's schemas (`make schemas`); a test fails when the committed ones are stale."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(str(path))
    return written

