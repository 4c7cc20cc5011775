"""The usage-event contract: schemas match the models, samples validate, page/screen become tracked events."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pqlflow.contracts.usage_events import PAGE_EVENT, Rejection, UsageEvent, json_schemas, parse_body, parse_message

from tests.support.events import load_event

ROOT = Path(__file__).resolve().parents[3]


def test_committed_schemas_are_the_ones_the_models_generate():
    for name, schema in json_schemas().items():
        committed = json.loads((ROOT / "events" / "schemas" / f"{name}.schema.json").read_text())
        assert committed == json.loads(json.dumps(schema)), f"events/schemas/{name} is stale: run make schemas"


@pytest.mark.parametrize("name", ["track", "identify", "group", "track-b2b", "page"])
def test_every_sample_validates_against_the_schema_and_the_parser(name):
    schemas = json_schemas()
    message = load_event(f"segment/{name}.json")
    envelope = load_event(f"eventbridge/{name}.json")
    jsonschema.validate(message, schemas["segment-message"])
    jsonschema.validate(envelope, schemas["eventbridge-event"])
    ts = json.loads(json.dumps(message))["timestamp"]
    from datetime import datetime

    now = datetime.fromisoformat(ts).timestamp() + 60
    assert isinstance(parse_body(json.dumps(envelope), now), UsageEvent)
    sqs = load_event(f"sqs/{name}.json")
    assert json.loads(sqs["Records"][0]["body"]) == envelope


def test_a_page_call_is_the_tracked_event_page_viewed_with_its_name_in_the_properties():
    message = load_event("segment/page.json")
    from datetime import datetime

    event = parse_message(message, datetime.fromisoformat(message["timestamp"]).timestamp())
    assert isinstance(event, UsageEvent)
    assert event.kind == "track" and event.name == PAGE_EVENT
    assert event.properties["name"] == "Pricing" and event.properties["path"] == "/pricing"
    assert event.account_id == "acct_initech"


def test_an_event_without_an_account_belongs_to_the_user_alone():
    message = load_event("segment/track.json")
    from datetime import datetime

    event = parse_message(message, datetime.fromisoformat(message["timestamp"]).timestamp())
    assert isinstance(event, UsageEvent) and event.account_id == "user:AiUGstSDIg"


def test_detail_type_must_match_the_message_type():
    envelope = load_event("eventbridge/track-b2b.json")
    envelope["detail-type"] = "identify"
    from datetime import datetime

    result = parse_body(json.dumps(envelope), datetime.fromisoformat(envelope["detail"]["timestamp"]).timestamp())
    assert isinstance(result, Rejection) and result.field == "detail-type"


# ---- hostile bodies: parse_body never raises, and names the field even when the JSON is unreadable ---------

NOW_S = 1_795_341_600.0  # 2026-11-22T10:00:00Z
VALID = {"type": "track", "event": "Signed In", "messageId": "m-1", "timestamp": "2026-11-22T09:00:00.000Z",
         "userId": "u1", "context": {"groupId": "acme"}, "properties": {"n": 1}}


def _envelope(detail, **changes):
    return json.dumps({"version": "0", "detail-type": "track", "source": "aws.partner/segment.com/x",
                       "detail": detail, **changes})


def _with_raw(body: str, value: str, raw: str) -> str:
    assert body.count(json.dumps(value)) == 1
    return body.replace(json.dumps(value), raw)


@pytest.mark.parametrize(("body", "expected"), [
    (_with_raw(_envelope({**VALID, "properties": {"a": "@"}}), "@", "[" * 3000 + "]" * 3000),
     Rejection("properties", "nests deeper than 8 levels", "m-1")),
    (_with_raw(json.dumps({**VALID, "traits": "@", "type": "identify"}), "@", '{"a":' * 3000 + "0" + "}" * 3000),
     Rejection("traits", "nests deeper than 8 levels", "m-1")),
    ("[" * 3000 + "]" * 3000, Rejection("", "body nests deeper than 200 levels")),
    ("[" * 40_000 + "]" * 40_000, Rejection("", "message is 80,000 bytes; the limit is 32,768 bytes (32 KB)")),
    (_envelope({**VALID, "messageId": "\ud800"}),
     Rejection("messageId", "contains a lone UTF-16 surrogate (\\ud800), which is not Unicode text", "\\ud800")),
    (json.dumps({**VALID, "properties": {"\udc00": 1}}),
     Rejection("properties.\\udc00", "contains a lone UTF-16 surrogate (\\udc00), which is not Unicode text",
               "m-1")),
    (json.dumps({**VALID, "userId": "\ud800"}, ensure_ascii=False),
     Rejection("userId", "contains a lone UTF-16 surrogate (\\ud800), which is not Unicode text", "m-1")),
    (_with_raw(json.dumps({**VALID, "properties": {"n": "@"}}), "@", "9" * 5000),
     Rejection("properties.n", "is a number out of range", "m-1")),
    (_with_raw(json.dumps({**VALID, "event": "@"}), "@", '"a\\x41"'),
     Rejection("event", "contains an invalid escape sequence", "m-1")),
    (_with_raw(json.dumps({**VALID, "event": "@"}), "@", '"a\tb"'),
     Rejection("event", "contains an unescaped control character", "m-1")),
    (_envelope("track"), Rejection("detail", "must be a Segment message (a JSON object), not a string")),
    (_envelope(None), Rejection("detail", "must be a Segment message (a JSON object), not null")),
    (_envelope([VALID]), Rejection("detail", "must be a Segment message (a JSON object), not an array")),
    (json.dumps({"detail-type": "track", "source": "s"}),
     Rejection("detail", "missing: an EventBridge event carries the Segment message in detail")),
    (json.dumps({"source": "s", "detail": VALID}),
     Rejection("detail-type", "missing: an EventBridge event names the Segment type in detail-type", "m-1")),
    (_envelope(VALID, **{"detail-type": None}), Rejection("detail-type", "must be a string, not null", "m-1")),
    (json.dumps({**VALID, "messageId": 7}), Rejection("messageId", "must be a string, not a number")),
    (json.dumps({**VALID, "type": "track\x00"}),
     Rejection("type", "unknown type 'track\\u0000' (expected one of track, identify, group, page, screen)",
               "m-1")),
    (json.dumps({**VALID, "messageId": "m\x00"}), Rejection("messageId", "contains control characters", "m\\u0000")),
], ids=["properties 3,000 deep", "traits 3,000 deep", "body 3,000 deep", "oversized and 40,000 deep",
        "lone surrogate messageId", "lone surrogate property key", "unescaped lone surrogate", "5,000-digit number",
        "invalid escape", "raw tab", "detail a string", "detail null", "detail a list", "no detail",
        "no detail-type", "detail-type null", "numeric messageId", "NUL in type", "NUL in messageId"])
def test_a_hostile_body_is_rejected_naming_its_field(body, expected):
    assert parse_body(body, NOW_S) == expected


def test_a_bare_message_with_a_property_named_detail_type_is_a_message():
    # Given a bare Segment message whose properties happen to have a "detail-type" key
    body = json.dumps({**VALID, "properties": {"detail-type": "x"}})
    # Then it is read as the message it is, not as an EventBridge envelope missing its source
    event = parse_body(body, NOW_S)
    assert isinstance(event, UsageEvent) and event.properties == {"detail-type": "x"}


def test_parse_message_rejects_a_value_that_cannot_be_json():
    looped: dict = {**VALID}
    looped["properties"] = {"self": looped}
    assert parse_message(looped, NOW_S) == Rejection("", "message cannot be written as JSON (ValueError)")


_PIECES = ["\\ud800", "\\udc00", "\\u0000", "\x00", "\ud800", "[" * 300, "{" * 300, '{"a":' * 250, "]", "}",
           "9" * 4400, "1e400", "NaN", '"', "\\", ",", ":", '"detail-type":', '"detail":', '"messageId":"\\ud800",',
           "\t", "\n", "é", "\U0001d54f", "\ufeff", "null", "true", "[]", "{}"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.sampled_from(_PIECES) | st.text(max_size=4)), max_size=6),
       st.booleans())
def test_parse_body_never_raises_and_its_rejections_are_storable(edits, envelope):
    # Given a valid body, bare or enveloped, with hostile text inserted anywhere
    body = _envelope(VALID) if envelope else json.dumps(VALID)
    for position, piece in edits:
        body = body[:position] + piece + body[position:]
    # When it is parsed / Then it never raises, and a rejection's texts hold no control character or lone
    # surrogate: they can be stored as UTF-8, logged and shown
    result = parse_body(body, NOW_S)
    if isinstance(result, Rejection):
        for text in (result.field, result.reason, result.message_id or ""):
            assert not [c for c in text if unicodedata.category(c) in ("Cc", "Cs")], repr(text)
