"""The usage-event contract: Segment Spec messages as Amazon EventBridge delivers them, and their validation.

A usage event is a Segment `track`, `identify`, `group`, `page` or `screen` message. On the bus the
EventBridge `detail-type` is the Segment `type` and `detail` is the message, exactly as Segment's
Amazon EventBridge destination sends it. `page` and `screen` calls are tracked events named
`Page Viewed` and `Screen Viewed`, with the call's `name` and `category` merged into the properties.

`parse_body` turns one SQS record body into a `UsageEvent`, or a `Rejection` whose reason names the
field. It never raises for bad data, whatever a sender puts in the body (nesting past any parser's limit,
lone UTF-16 surrogates, numbers out of range, duplicate keys, a `detail` that is not a message): bad input is
quarantined, never retried. A body that is not valid JSON text is still blamed on the field it breaks in
(`messageId: contains a lone UTF-16 surrogate`), found from the parser's error position.
"""

from __future__ import annotations

import contextlib
import json
import re
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
JSON_DEPTH_LIMIT = 200  # the JSON parser's own nesting limit (pydantic-core's jiter): deeper is unreadable
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
    if len(body) > MAX_MESSAGE_BYTES // 4 and _utf8_size(body) > MAX_MESSAGE_BYTES + 2048:
        return _oversized(body)
    envelope = '"detail-type"' in body
    try:
        if envelope:
            event = _ENVELOPE.validate_json(body)
            message = event.detail
            if event.detail_type != message.type:
                return Rejection(
                    "detail-type",
                    f"'{_clip(event.detail_type)}' does not match the message type '{message.type}'",
                    message.messageId,
                )
        else:
            message = _MESSAGE.validate_json(body)
    except ValidationError as exc:
        doc = _decode(body)  # only for bodies already refused: what the error alone cannot say
        if not (envelope and isinstance(doc, dict) and "detail-type" not in doc):
            return _rejection_from(exc, body, doc, envelope)
        # "detail-type" was text inside a bare message (a property named so): judge it as the message it is
        envelope = False
        try:
            message = _MESSAGE.validate_json(body)
        except ValidationError as again:
            return _rejection_from(again, body, doc, envelope)
    return _check(message, now_s, retention_days, body)


def parse_message(
    message: dict[str, Any], now_s: float, retention_days: int = DEFAULT_RETENTION_DAYS
) -> UsageEvent | Rejection:
    """Validate an already-decoded Segment message (backtest, replay)."""
    try:
        body = json.dumps(message, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:  # a circular, too deep or non-JSON value
        return Rejection("", f"message cannot be written as JSON ({type(exc).__name__})")
    return parse_body(body, now_s, retention_days)


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
    size = _utf8_size(body)
    decoded = _decode(body)
    message = decoded.get("detail", decoded) if isinstance(decoded, dict) else decoded
    mid = message.get("messageId") if isinstance(message, dict) else None
    if decoded is not _UNREADABLE:  # a message nesting nearly as deep as the decoder allows keeps the body's size
        with contextlib.suppress(ValueError, RecursionError):
            size = len(json.dumps(message, separators=(",", ":")).encode())
    if size <= MAX_MESSAGE_BYTES:  # the envelope, not the message, made the body large
        return Rejection("", f"envelope is {size:,} bytes, larger than EventBridge allows", _str_or_none(mid))
    return Rejection("", f"message is {size:,} bytes; the limit is {MAX_MESSAGE_BYTES:,} bytes (32 KB)",
                     _str_or_none(mid))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # a lone surrogate counts as the 3 bytes it would take


_UNREADABLE = object()


def _decode(body: str) -> Any:
    """The body decoded by the standard library (which reads lone surrogates and nests ~1,000 deep), or
    `_UNREADABLE`: only used to explain a body pydantic refused."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _UNREADABLE


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _printable(text: str) -> str:
    """`text` with control characters and lone surrogates escaped (`\\u0000`): safe to store, log and show."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _str_or_none(value: Any) -> str | None:
    return _printable(value[:MAX_IDENTIFIER_CHARS]) if isinstance(value, str) else None


def _clip(text: str, limit: int = 60) -> str:
    return _printable(text if len(text) <= limit else text[:limit] + "…")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


_LOC_SKIP = {"track", "identify", "group", "page", "screen", "function-after[_check()]"}
_OBJECT_KINDS = ("model_type", "model_attributes_type", "dict_type")


def _rejection_from(exc: ValidationError, body: str, doc: Any, envelope: bool) -> Rejection:
    """Turn pydantic's first error into a reason that names the field and says what is wrong."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    loc: list[str | int] = [p for p in error["loc"] if p not in _LOC_SKIP]
    mid = _message_id_of(doc, body)
    if kind == "json_invalid":
        return _unreadable_json(body, error["msg"].removeprefix("Invalid JSON: "), envelope, mid)
    if kind == "string_unicode" and not loc:
        return _unreadable_text(body, envelope, mid)
    if envelope and loc[:1] == ["detail"]:
        if len(loc) == 1 and kind == "missing":
            return Rejection("detail", "missing: an EventBridge event carries the Segment message in detail", mid)
        if len(loc) == 1 and kind in _OBJECT_KINDS:
            return Rejection("detail", "must be a Segment message (a JSON object), not "
                             + _json_type(error.get("input")), mid)
        loc = loc[1:]
    elif not envelope and not loc and kind == "union_tag_not_found" and isinstance(doc, dict) and "detail" in doc:
        return Rejection("detail-type", "missing: an EventBridge event names the Segment type in detail-type", mid)
    path = ".".join(_printable(str(p)) for p in loc)
    if kind in _OBJECT_KINDS and not path:
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
    if kind == "string_type":
        return Rejection(path, f"must be a string, not {_json_type(error.get('input'))}", mid)
    if kind in ("timezone_aware", "datetime_parsing", "datetime_from_date_parsing", "datetime_type"):
        value = error.get("input")
        return Rejection(path, f"'{_clip(str(value))}' is not an ISO 8601 time with a zone", mid)
    if kind in _OBJECT_KINDS:
        return Rejection(path, f"must be an object, not {_json_type(error.get('input'))}", mid)
    return Rejection(path, error["msg"], mid)


_PARSER_ERROR = re.compile(r"(?P<what>.*) at line (?P<line>\d+) column (?P<column>\d+)", re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unreadable_json(body: str, what: str, envelope: bool, mid: str | None) -> Rejection:
    """A body the JSON parser refused: blamed on the field it breaks in when the fault is in one value
    (too deep, a number out of range, a bad escape or lone surrogate, a raw control character); on the body
    when it is the syntax itself."""
    match = _PARSER_ERROR.fullmatch(what)
    problem = match["what"] if match else what
    in_one_value = problem in ("recursion limit exceeded", "number out of range") or "escape" in problem \
        or problem.startswith("control character")
    if match is not None and in_one_value:
        data = body.encode("utf-8")  # the parser refuses str it cannot encode before any position (string_unicode)
        offset = _offset(data, int(match["line"]), int(match["column"]))
        path, token = _path_at(data, offset)
        deep = problem == "recursion limit exceeded"
        field = _field(path, envelope, whole=deep)
        if deep:
            limit = MAX_NESTING_DEPTH if field in ("properties", "traits") else JSON_DEPTH_LIMIT
            return Rejection(field, f"nests deeper than {limit} levels", mid) if field else \
                Rejection("", f"body nests deeper than {JSON_DEPTH_LIMIT} levels", mid)
        if field:
            if problem == "number out of range":
                return Rejection(field, "is a number out of range", mid)
            if problem.startswith("control character"):
                return Rejection(field, "contains an unescaped control character", mid)
            surrogate = _SURROGATE_ESCAPE.search(token)
            if surrogate is not None and ("surrogate" in problem or "end of hex escape" in problem):
                code = surrogate.group().decode().lower()
                return Rejection(field, f"contains a lone UTF-16 surrogate ({code}), which is not Unicode text", mid)
            return Rejection(field, "contains an invalid escape sequence", mid)
    return Rejection("", f"body is not valid JSON ({_clip(what, 200)})", mid)


def _unreadable_text(body: str, envelope: bool, mid: str | None) -> Rejection:
    """A body holding a lone surrogate as a character (not as an escape): not Unicode text at all."""
    match = _SURROGATE.search(body)
    code = f"\\u{ord(match.group()):04x}" if match else "?"
    field = ""
    if match is not None:
        data = body.encode("utf-8", "surrogatepass")
        path, _ = _path_at(data, _utf8_size(body[: match.start()]))
        field = _field(path, envelope, whole=False)
    if field:
        return Rejection(field, f"contains a lone UTF-16 surrogate ({code}), which is not Unicode text", mid)
    return Rejection("", f"body contains a lone UTF-16 surrogate ({code}), which is not Unicode text", mid)


def _offset(data: bytes, line: int, column: int) -> int:
    """The byte offset of the parser's 1-based line and byte column."""
    start = 0
    for _ in range(line - 1):
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        start = newline + 1
    return start + max(column - 1, 0)


# A string (its closing quote may be missing), a bracket, or a run of anything else (scalars, commas, colons,
# whitespace): runs keep the walk over a long refused body to a few C-speed steps per structure.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[{}\[\]]|[^"{}\[\]]+', re.DOTALL)
_MESSAGE_ID_KEY = b'"messageId"'
_MESSAGE_ID_SCAN = 4000  # tokens read looking for the messageId of an undecodable body (best effort)


def _step(stack: list[list[Any]], text: bytes) -> None:
    """Apply one token to the open containers, each [is an object, its current key (the key's token) or
    index, awaiting a key]: the JSON text is read leniently (it may be invalid anywhere)."""
    first = text[0]
    if first == 0x22:  # a string: the key of an object awaiting one (a value changes nothing)
        if stack and stack[-1][0] and stack[-1][2]:
            stack[-1][1] = text
    elif first == 0x7B:  # {
        stack.append([True, None, True])
    elif first == 0x5B:  # [
        stack.append([False, 0, False])
    elif first in _CLOSERS:
        if stack:
            stack.pop()
    elif stack:  # a run of scalars, commas and colons
        top = stack[-1]
        if not top[0]:
            top[1] += text.count(b",")
        elif text.rfind(b",") > text.rfind(b":"):
            top[1], top[2] = None, True
        elif b":" in text:
            top[2] = False


_CLOSERS = (0x7D, 0x5D)
_BRACKETS = (0x7B, 0x5B, 0x7D, 0x5D)


def _path_at(data: bytes, offset: int) -> tuple[list[str | int], bytes]:
    """The JSON path (keys and indexes) of the value or key at byte `offset`, and the token there (read up to
    the offset). Runs only for refused bodies, one C-speed token per string, bracket or run."""
    stack: list[list[Any]] = []
    for token in _TOKEN.finditer(data, 0, offset + 1):
        text = token.group()
        if token.end() > offset and text[0] not in _BRACKETS:
            if text[0] == 0x22:
                _step(stack, text)  # a key at the offset names itself
                return _keys(stack), text
            path = _keys(stack)
            if stack and not stack[-1][0]:
                path[-1] = int(path[-1]) + text[: offset - token.start()].count(b",")  # the element it is in
            return path, text
        _step(stack, text)
    return _keys(stack), b""


def _message_id_in(data: bytes) -> str | None:
    """The messageId of a message the standard library cannot decode either (too deep, say): the last one
    at the top level or in `detail` among the first tokens, as a JSON parser would take it."""
    found = None
    stack: list[list[Any]] = []
    for count, token in enumerate(_TOKEN.finditer(data)):
        if count > _MESSAGE_ID_SCAN:
            break
        text = token.group()
        if text[0] == 0x22 and stack and stack[-1][0] and not stack[-1][2] and stack[-1][1] == _MESSAGE_ID_KEY and (
                len(stack) == 1 or (len(stack) == 2 and stack[0][1] == b'"detail"')):
            try:
                found = _str_or_none(json.loads(text))
            except ValueError:
                found = None
        _step(stack, text)
    return found


def _keys(stack: list[list[Any]]) -> list[str | int]:
    return [_key_text(entry[1]) if isinstance(entry[1], bytes) else entry[1] for entry in stack if entry[1] is not None]


def _key_text(token: bytes) -> str:
    """A key as written in the body (escapes left as they are), printable and clipped."""
    inner = token[1:-1] if len(token) > 1 and token.endswith(b'"') else token[1:]
    return _printable(inner[:256].decode("utf-8", "backslashreplace"))[:64]


def _field(path: list[str | int], envelope: bool, whole: bool) -> str:
    """The contract's name for a path: `detail.` dropped from an envelope's message fields; "" for the body.
    `whole`: only the message field (for nesting, the path is as deep as the nesting)."""
    if envelope and path[:1] == ["detail"]:
        path = path[1:] if len(path) > 1 and isinstance(path[1], str) else ["detail"]
    if not path or not isinstance(path[0], str):
        return ""
    if whole:
        path = path[:1]
    return ".".join(str(p) for p in path[: MAX_NESTING_DEPTH + 2])


def _message_id_of(doc: Any, body: str) -> str | None:
    """Best effort: the messageId of a message that failed validation, for the quarantine listing."""
    if doc is _UNREADABLE:
        return _message_id_in(body.encode("utf-8", "surrogatepass"))
    if isinstance(doc, dict):
        message = doc.get("detail", doc)
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

