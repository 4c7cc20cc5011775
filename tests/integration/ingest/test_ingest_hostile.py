"""Ingest judges every record alone: hostile bodies are quarantined with their field, nothing else is retried.

A corpus of bodies a careless or hostile sender can put on the queue (depth, size, encodings, lone surrogates,
NUL, numbers out of range, duplicate keys, wrong envelope shapes, wrong Segment types) goes through the real
handler on moto in ONE batch with good events: no bad record is reported for retry, every good event is
counted exactly, and every bad one is quarantined with a reason naming its field and a storable copy of its
body that records the original size.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.quarantine import RAW_LIMIT, QuarantineWrite, item_key, list_quarantine, quarantine_item
from pqlflow.ingest.store import DynamoUsageStore, read_usage
from pqlflow.ingest.usage import GaugeSpec, TrackingSpec
from pqlflow.kernel import clock

from functions.ingest import app
from tests.support.aws_calls import CallRecorder
from tests.support.events import eventbridge, iso, sqs_record
from tests.support.lambda_context import LambdaContext
from tests.support.template import load_template

NOW_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
HOUR = 3_600_000
SPEC = TrackingSpec(gauges=(GaugeSpec("Contacts Updated", "total"),))
DROP = object()
DEEP_ARRAYS = "[" * 3000 + "]" * 3000
DEEP_OBJECTS = '{"a":' * 3000 + "1" + "}" * 3000
HOLE = "@@hole@@"  # a placeholder string replaced by raw JSON text the json module cannot produce


def message(mid: Any, **fields: Any) -> dict[str, Any]:
    """A valid track message for account acme, with `fields` changed (DROP removes one)."""
    base: dict[str, Any] = {"type": "track", "event": "Message Sent", "messageId": mid,
                            "timestamp": iso(NOW_MS - HOUR), "userId": "u1", "context": {"groupId": "acme"},
                            "properties": {}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not DROP}


def sent(detail: Any, /, **envelope: Any) -> str:
    """The SQS body as Segment's EventBridge destination delivers it (envelope fields changeable)."""
    event = eventbridge(detail if isinstance(detail, dict) else {"type": "track"})
    event["detail"] = detail
    event["time"] = iso(NOW_MS - HOUR)  # EventBridge's own time, not the sender's
    event.update(envelope)
    return json.dumps({k: v for k, v in event.items() if v is not DROP})


def fill(body: str, raw_json: str) -> str:
    """`body` with the one HOLE string replaced by raw JSON text."""
    assert body.count(f'"{HOLE}"') == 1
    return body.replace(f'"{HOLE}"', raw_json)


def hostile_corpus() -> list[tuple[str, str, str]]:
    """(what, body, the field its quarantine item must name); "body" when the body as a whole is at fault."""
    m = message
    return [
        # depth
        ("properties nested 3,000 deep (arrays)", fill(sent(m("d1", properties={"a": HOLE})), DEEP_ARRAYS),
         "properties"),
        ("properties nested 3,000 deep (objects)", fill(sent(m("d2", properties={"a": HOLE})), DEEP_OBJECTS),
         "properties"),
        ("traits nested 3,000 deep", fill(sent(m("d3", type="identify", event=DROP, traits={"a": HOLE})),
                                          DEEP_ARRAYS), "traits"),
        ("context nested 3,000 deep", fill(sent(m("d4", context={"groupId": "acme", "library": HOLE})),
                                           DEEP_OBJECTS), "context"),
        ("properties nested 300 deep", fill(sent(m("d5", properties={"a": HOLE})), "[" * 300 + "]" * 300),
         "properties"),
        ("properties nested 40 deep", fill(sent(m("d6", properties={"a": HOLE})), "[" * 40 + "]" * 40),
         "properties"),
        ("an envelope field nested 3,000 deep", fill(sent(m("d7"), resources=HOLE), DEEP_ARRAYS), "resources"),
        ("detail nested 3,000 deep", fill(sent(HOLE), DEEP_ARRAYS), "detail"),
        ("the whole body nested 3,000 deep", DEEP_ARRAYS, "body"),
        ("a bare message nested 3,000 deep", fill(json.dumps(m("d8", properties={"a": HOLE})), DEEP_OBJECTS),
         "properties"),
        ("oversized and 40,000 deep", "[" * 40_000 + "]" * 40_000, "body"),
        # size
        ("a 40 KB property", sent(m("s1", properties={"blob": "x" * 40_000})), "body"),
        ("a 1 MiB body (the SQS maximum)", sent(m("s2", properties={"blob": "é" * 524_000})), "body"),
        ("a 300 KB envelope around a small message", sent(m("s3"), resources=["r" * 1000] * 300), "body"),
        ("a 10,000-character messageId", sent(m("x" * 10_000)), "messageId"),
        ("a 30,000-character event name", sent(m("s5", event="E" * 30_000)), "event"),
        ("a messageId of 257 non-ASCII characters", sent(m("é" * 257)), "messageId"),
        # encodings and lone UTF-16 surrogates
        ("a lone high surrogate messageId", sent(m("\ud800")), "messageId"),
        ("a lone low surrogate messageId (bare message)", json.dumps(m("\udc00")), "messageId"),
        ("a reversed surrogate pair in the event name", sent(m("e3", event="X\udc00\ud800")), "event"),
        ("a lone surrogate userId", sent(m("e4", userId="u\ud800")), "userId"),
        ("a lone surrogate anonymousId", sent(m("e5", userId=DROP, anonymousId="\udbff")), "anonymousId"),
        ("a lone surrogate in the timestamp", sent(m("e6", timestamp="2026-11-22T09:00:00\ud800Z")), "timestamp"),
        ("a lone surrogate property key", sent(m("e7", properties={"\ud800": 1})), "properties.\\ud800"),
        ("a lone surrogate property value", sent(m("e8", properties={"note": "hi \udfff"})), "properties.note"),
        ("a lone surrogate trait", sent(m("e9", type="identify", event=DROP, traits={"name": "\ud83d"})),
         "traits.name"),
        ("a lone surrogate groupId", sent(m("e10", context={"groupId": "\ud800acme"})), "context.groupId"),
        ("a lone surrogate detail-type", sent(m("e11"), **{"detail-type": "track\ud800"}), "detail-type"),
        ("a lone surrogate source", sent(m("e12"), source="\ud800"), "source"),
        ("a lone surrogate deep in context", sent(m("e13", context={"library": {"name": "\ud800"}})),
         "context.library.name"),
        ("an unescaped lone surrogate character",
         json.dumps(eventbridge(m("e14", userId="z\ud800")), ensure_ascii=False), "userId"),
        ("a byte order mark before the body", "\ufeff" + sent(m("e15")), "body"),
        ("an invalid escape in the event name", sent(m("e16", event=HOLE)).replace(f'"{HOLE}"', '"\\x41"'),
         "event"),
        ("a truncated unicode escape in userId", sent(m("e17", userId=HOLE)).replace(f'"{HOLE}"', '"\\u12"'),
         "userId"),
        ("an unescaped tab inside the event name", sent(m("e18", event=HOLE)).replace(f'"{HOLE}"', '"a\tb"'),
         "event"),
        # NUL and control characters
        ("NUL in messageId", sent(m("e\x0019")), "messageId"),
        ("NUL in the event name", sent(m("n2", event="Sent\x00")), "event"),
        ("NUL in userId", sent(m("n3", userId="\x00")), "userId"),
        ("NUL in a group call's groupId", sent(m("n4", type="group", event=DROP, groupId="ac\x00me")), "groupId"),
        ("NUL in context.groupId", sent(m("n5", context={"groupId": "acme\x00"})), "context.groupId"),
        ("NUL in the timestamp", sent(m("n6", timestamp=iso(NOW_MS - HOUR) + "\x00")), "timestamp"),
        ("NUL in the type", sent(m("n7", type="track\x00"), **{"detail-type": "track"}), "type"),
        ("NUL in detail-type", sent(m("n8"), **{"detail-type": "track\x00"}), "detail-type"),
        ("a body that is one NUL", "\x00", "body"),
        ("NUL after a valid body", sent(m("n10")) + "\x00", "body"),
        # numbers out of range
        ("a gauge of 1e400", fill(sent(m("u1", event="Contacts Updated", properties={"total": HOLE})), "1e400"),
         "properties.total"),
        ("a gauge of -1e400", fill(sent(m("u2", event="Contacts Updated", properties={"total": HOLE})), "-1e400"),
         "properties.total"),
        ("a gauge of a 400-digit integer", sent(m("u3", event="Contacts Updated", properties={"total": 10**400})),
         "properties.total"),
        ("a property with a 5,000-digit integer", fill(sent(m("u4", properties={"n": HOLE})), "9" * 5000),
         "properties.n"),
        ("a numeric messageId", sent(m(HOLE)).replace(f'"{HOLE}"', "42"), "messageId"),
        ("a 5,000-digit messageId", sent(m(HOLE)).replace(f'"{HOLE}"', "7" * 5000), "messageId"),
        ("a timestamp of 1e400", fill(sent(m("u7", timestamp=HOLE)), "1e400"), "timestamp"),
        ("a timestamp of 10**30", sent(m("u8", timestamp=10**30)), "timestamp"),
        ("a timestamp in year 99999", sent(m("u9", timestamp="99999-01-01T00:00:00Z")), "timestamp"),
        ("a timestamp at year 1, +14:00", sent(m("u10", timestamp="0001-01-01T00:00:00+14:00")), "timestamp"),
        ("a timestamp at the end of 9999, -14:00", sent(m("u11", timestamp="9999-12-31T23:59:59.999999-14:00")),
         "timestamp"),
        ("a NaN gauge", fill(sent(m("u12", event="Contacts Updated", properties={"total": HOLE})), "NaN"),
         "properties.total"),
        # duplicate keys: the last one counts, as in every JSON parser pqlflow uses
        ("a duplicate messageId whose last value is a lone surrogate",
         sent(m("k1")).replace('"messageId": "k1"', '"messageId": "k1", "messageId": "\\ud800"'), "messageId"),
        ("a duplicate type whose last value is unknown",
         sent(m("k2")).replace('"type": "track"', '"type": "track", "type": "alias"', 1), "type"),
        ("a duplicate detail whose last value is a string", sent(m("k3"))[:-1] + ', "detail": "x"}', "detail"),
        ("a duplicate detail-type whose last value mismatches",
         sent(m("k4")).replace('"detail-type": "track"', '"detail-type": "track", "detail-type": "group"'),
         "detail-type"),
        # wrong envelope shapes
        ("detail a string", sent("a Segment message"), "detail"),
        ("detail null", sent(None), "detail"),
        ("detail a list", sent([m("w3")]), "detail"),
        ("detail a number", sent(7), "detail"),
        ("detail true", sent(True), "detail"),
        ("no detail", sent(m("w6"), detail=DROP), "detail"),
        ("detail an empty object", sent({}), "type"),
        ("no detail-type", sent(m("w8"), **{"detail-type": DROP}), "detail-type"),
        ("detail-type null", sent(m("w9"), **{"detail-type": None}), "detail-type"),
        ("detail-type a number", sent(m("w10"), **{"detail-type": 7}), "detail-type"),
        ("detail-type a list", sent(m("w11"), **{"detail-type": ["track"]}), "detail-type"),
        ("detail-type not the message's type", sent(m("w12"), **{"detail-type": "identify"}), "detail-type"),
        ("no source", sent(m("w13"), source=DROP), "source"),
        ("source a number", sent(m("w14"), source=12), "source"),
        ("an envelope inside an envelope", sent(eventbridge(m("w15"))), "type"),
        ("an SNS notification", json.dumps({"Type": "Notification", "Message": sent(m("w16"))}), "type"),
        ("a JSON string", json.dumps(sent(m("w17"))), "body"),
        ("a JSON number", "1e400", "body"),
        ("JSON null", "null", "body"),
        ("an empty body", "", "body"),
        ("a blank body", " \r\n\t", "body"),
        ("a JSON array of messages", json.dumps([m("w22")]), "body"),
        ("not JSON", "<xml>track</xml>", "body"),
        ("truncated JSON", sent(m("w24"))[:100], "body"),
        # a Segment message with wrong types
        ("type a number", sent(m("t1", type=5), **{"detail-type": "track"}), "type"),
        ("type null", json.dumps(m("t2", type=None)), "type"),
        ("type a list", json.dumps(m("t3", type=["track"])), "type"),
        ("type an object", json.dumps(m("t4", type={"is": "track"})), "type"),
        ("type in capitals", json.dumps(m("t5", type="TRACK")), "type"),
        ("properties a string", sent(m("t6", properties="plan=pro")), "properties"),
        ("properties null", sent(m("t7", properties=None)), "properties"),
        ("context a string", sent(m("t8", context="acme")), "context"),
        ("context a list", sent(m("t9", context=[{"groupId": "acme"}])), "context"),
        ("context.groupId a number", sent(m("t10", context={"groupId": 42})), "context.groupId"),
        ("userId an object", sent(m("t11", userId={"id": "u1"})), "userId"),
        ("anonymousId a list", sent(m("t12", userId=DROP, anonymousId=["a"])), "anonymousId"),
        ("identify traits a list", sent(m("t13", type="identify", event=DROP, traits=["vip"])), "traits"),
        ("a group call without groupId", sent(m("t14", type="group", event=DROP)), "groupId"),
        ("timestamp a boolean", sent(m("t15", timestamp=True)), "timestamp"),
        ("event a number", sent(m("t16", event=404)), "event"),
        ("no messageId", sent(m(DROP)), "messageId"),
        ("no user at all", sent(m("t18", userId=DROP)), "userId"),
    ]


def good_events() -> tuple[list[str], dict[str, int]]:
    """Good events, some odd but valid, and how many of each event name account acme must count."""
    m = message
    bodies = [sent(m(f"g{i}")) for i in range(12)]
    bodies += [
        sent(m("g-zoe", userId="Zoë", event="Café Opened")),
        sent(m("g-nul-value", properties={"note": "a\x00b"})),
        fill(sent(m("g-inf-property", properties={"ratio": HOLE})), "1e400"),
        sent(m("g-big-int", properties={"n": 2**70})),
        sent(m("g-dup")).replace('"event": "Message Sent"', '"event": "Page Seen", "event": "Message Sent"'),
        sent(m("g-emoji-user", userId="\U0001d54f" * 256)),
        json.dumps(m("g-bare-with-detail-type-property", properties={"detail-type": "x"})),
        sent(m("g-deep-8", properties={"a": [[[[[[[1]]]]]]]})),
        sent(m("g-noncharacter", event="Sent \uffff")),
        sent(m("g-gauge", event="Contacts Updated", properties={"total": 8000})),
    ]
    counts = {"Message Sent": 12 + 7, "Café Opened": 1, "Sent \uffff": 1, "Contacts Updated": 1}
    return bodies, counts


@pytest.fixture
def ddb(table_name):
    return boto3.client("dynamodb")


@pytest.fixture
def ingest(table_name, ddb):
    clock.set_source(lambda: NOW_MS / 1000)

    def run(bodies: list[str], spec: TrackingSpec = SPEC, store: Any = None):
        store = store or DynamoUsageStore(table_name, ddb)
        processor = UsageBatchProcessor(store, IngestConfig(spec=spec), clock.now_ms)
        event = sqs_event_of(bodies)
        response = app.handler(event, LambdaContext(), processor=processor)
        return response, processor.outcome, event

    return run


def sqs_event_of(bodies: list[str]) -> dict[str, Any]:
    """The SQS event of these raw bodies; one holding a lone surrogate character (which no SQS message can,
    but a handler must survive) gets its record built from its escaped text."""
    records = []
    for i, body in enumerate(bodies):
        record = sqs_record(body.encode("utf-8", "backslashreplace").decode(), i)
        record["body"] = body
        records.append(record)
    return {"Records": records}


def usage(ddb, table_name, account="acme", user=None):
    return read_usage(ddb, table_name, account, user)


def quarantined(ddb, table_name) -> dict[str, dict[str, Any]]:
    """Quarantine items by sort key (the body's hash)."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table_name, "FilterExpression": "kind = :q",
                              "ExpressionAttributeValues": {":q": {"S": "quarantine"}}}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return {i["sk"]["S"]: i for i in items}
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def utf8_size(body: str) -> int:
    return len(body.encode("utf-8", "surrogatepass"))


def key_of(body: str) -> str:
    """The quarantine item's sort key: the first 32 hex digits of the SHA-256 of the body."""
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def test_corpus_is_large_and_distinct():
    corpus = hostile_corpus()
    assert len(corpus) >= 60
    assert len({body for _, body, _ in corpus}) == len(corpus)
    assert len({what for what, _, _ in corpus}) == len(corpus)


def test_every_hostile_body_is_judged_alone_in_one_mixed_batch(ingest, ddb, table_name):
    # Given the hostile corpus interleaved with good events, in ONE batch
    corpus = hostile_corpus()
    good, counts = good_events()
    bodies: list[str] = []
    for i, (_, body, _) in enumerate(corpus):
        bodies.append(body)
        if i % 4 == 0 and good:
            bodies.append(good.pop())
    bodies += good
    # When the real handler ingests it
    response, outcome, _ = ingest(bodies)
    # Then no record is reported for retry: no bad one, no good one
    assert response == {"batchItemFailures": []}
    # And every good event is counted, exactly once
    state = usage(ddb, table_name)
    assert {name: state.count(name) for name in counts} == counts
    assert state.gauge("Contacts Updated.total") == 8000
    # And every bad one is quarantined, with a reason naming its field and a storable copy of its body
    items = quarantined(ddb, table_name)
    assert len(items) == len(corpus) == sum(outcome.quarantined.values())
    for what, body, field in corpus:
        item = items.get(key_of(body))
        assert item is not None, f"{what}: not quarantined"
        assert item["field"]["S"] == field, f"{what}: {item['reason']['S']!r}"
        if field != "body":
            assert item["reason"]["S"].startswith(f"{field}: "), what
        assert int(item["body_bytes"]["N"]) == utf8_size(body), what
        raw = item["raw"]["S"]
        assert len(raw.encode()) <= RAW_LIMIT, what
        assert item["truncated"]["BOOL"] == (utf8_size(body) > RAW_LIMIT), what
        if utf8_size(body) <= RAW_LIMIT and "escaped" not in item:
            assert raw == body, what  # the copy is the body itself whenever it can be


def test_a_body_nested_3000_levels_deep_is_quarantined_naming_properties(ingest, ddb, table_name):
    # Given an event whose properties nest 3,000 levels deep, and another bad record in the same batch
    deep = fill(sent(message("deep", properties={"a": HOLE})), DEEP_ARRAYS)
    # When it is ingested
    response, _, _ = ingest([deep, "not json", sent(message("fine"))])
    # Then nothing is retried, the good event counts and both bad ones are quarantined with their field
    assert response == {"batchItemFailures": []}
    assert usage(ddb, table_name).count("Message Sent") == 1
    items = quarantined(ddb, table_name)
    assert items[key_of(deep)]["reason"]["S"] == "properties: nests deeper than 8 levels"
    assert items[key_of(deep)]["message_id"]["S"] == "deep"
    assert items[key_of("not json")]["field"]["S"] == "body"


def test_a_lone_surrogate_message_id_does_not_send_its_batch_to_the_dead_letter_queue(ingest, ddb, table_name):
    # Given a record whose messageId is a lone UTF-16 surrogate, among other bad records and a good one
    poison = sent(message("\ud800"))
    others = [sent(message("b1", timestamp="yesterday")), sent(message("b2", userId=DROP)), "{"]
    # When they are ingested in one batch
    response, _, _ = ingest([poison, *others, sent(message("fine"))])
    # Then no record is reported for retry, and each bad one is quarantined
    assert response == {"batchItemFailures": []}
    items = quarantined(ddb, table_name)
    assert {key_of(b) for b in [poison, *others]} == set(items)
    item = items[key_of(poison)]
    assert item["field"]["S"] == "messageId"
    assert "lone UTF-16 surrogate" in item["reason"]["S"]
    assert item["message_id"]["S"] == "\\ud800"  # escaped, so the item can be stored and listed
    assert usage(ddb, table_name).count("Message Sent") == 1


@pytest.mark.parametrize(("detail", "shown"), [("a string", "a string"), (None, "null"), ([1], "an array")])
def test_an_eventbridge_detail_that_is_not_an_object_names_detail(ingest, ddb, table_name, detail, shown):
    # Given an EventBridge envelope whose detail is not a Segment message object
    body = sent(detail)
    # When it is ingested
    response, _, _ = ingest([body])
    # Then it is quarantined naming detail, not "body is not a JSON object"
    assert response == {"batchItemFailures": []}
    reason = quarantined(ddb, table_name)[key_of(body)]["reason"]["S"]
    assert reason == f"detail: must be a Segment message (a JSON object), not {shown}"


def test_an_envelope_without_detail_type_names_detail_type(ingest, ddb, table_name):
    body = sent(message("no-dt"), **{"detail-type": DROP})
    ingest([body])
    assert quarantined(ddb, table_name)[key_of(body)]["field"]["S"] == "detail-type"


def test_a_gauge_too_large_for_a_float_is_quarantined_not_retried(ingest, ddb, table_name):
    # Given a gauge reading of 10**400 (valid JSON, no float can hold it)
    body = sent(message("huge", event="Contacts Updated", properties={"total": 10**400}))
    # When it is ingested
    response, _, _ = ingest([body, sent(message("fine"))])
    # Then it is quarantined naming the gauge property, and nothing is retried
    assert response == {"batchItemFailures": []}
    assert quarantined(ddb, table_name)[key_of(body)]["reason"]["S"] == "properties.total: gauge value is out of range"


def test_a_per_user_state_key_longer_than_dynamodb_allows_is_quarantined_not_retried(ingest, ddb, table_name):
    # Given a per-user definition, and a userId of 256 four-byte characters (its sort key would be 1,032 bytes)
    long_user = "\U0001d54f" * 256
    body = sent(message("long-user", userId=long_user))
    # When it is ingested with a good event of another user
    response, _, _ = ingest([body, sent(message("fine", userId="u2"))], spec=TrackingSpec(unit="user"))
    # Then it is quarantined naming userId, and nothing is retried
    assert response == {"batchItemFailures": []}
    assert quarantined(ddb, table_name)[key_of(body)]["field"]["S"] == "userId"
    assert usage(ddb, table_name, "acme", "u2").count("Message Sent") == 1


def test_the_quarantine_lists_an_escaped_truncated_copy_with_the_original_size(ingest, ddb, table_name):
    # Given a 1 MiB body holding an unescaped lone surrogate
    body = json.dumps(eventbridge(message("big", userId="z\ud800", properties={"blob": "é" * 500_000})),
                      ensure_ascii=False)
    # When it is ingested
    response, _, _ = ingest([body])
    # Then the quarantine lists it: escaped, truncated, with its original size
    assert response == {"batchItemFailures": []}
    listed = list(list_quarantine(ddb, table_name, days=1, now=datetime.fromtimestamp(NOW_MS / 1000, UTC)))
    assert len(listed) == 1
    event = listed[0]
    assert event.truncated and event.escaped and event.body_bytes == utf8_size(body)
    escaped = body.encode("utf-8", "backslashreplace")
    assert event.raw == escaped[:RAW_LIMIT].decode("utf-8", "ignore")
    assert '"userId": "z\\ud800"' in event.raw


class _Unprocessing:
    """A DynamoDB client that leaves the last item of the first BatchWriteItem unprocessed, as DynamoDB may."""

    def __init__(self, client: Any):
        self._client = client
        self.exceptions = client.exceptions
        self.first = True

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        if self.first:
            self.first = False
            (table, requests), = RequestItems.items()
            self._client.batch_write_item(RequestItems={table: requests[:-1]})
            return {"UnprocessedItems": {table: requests[-1:]}}
        return self._client.batch_write_item(RequestItems=RequestItems)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_one_unstorable_quarantine_item_does_not_block_the_others(table_name, ddb):
    # Given quarantine items, one of them over DynamoDB's 400 KB item limit and one with unencodable text,
    # written by a client that leaves an item unprocessed on the first call
    from pqlflow.contracts.usage_events import Rejection

    bodies = [f'{{"n": {i}}}' for i in range(30)]
    items = [quarantine_item(b, Rejection("type", "missing"), NOW_MS, 14) for b in bodies]
    items[3]["raw"] = {"S": "x" * 500_000}  # as if the limit were wrong: DynamoDB refuses the item
    items[27]["reason"] = {"S": "bad \ud800 text"}  # as if a reason escaped escaping: botocore cannot encode it
    store = DynamoUsageStore(table_name, _Unprocessing(ddb), sleep=lambda _: None)
    # When the store writes them
    result = store.quarantine(items)
    # Then every item is stored: the two unstorable ones in a reduced form, and nothing is left for retry
    assert result.failed == {}
    stored = quarantined(ddb, table_name)
    assert set(stored) == {i["sk"]["S"] for i in items}
    assert {sk for sk, i in stored.items() if i.get("reduced", {}).get("BOOL")} == {
        items[3]["sk"]["S"], items[27]["sk"]["S"]}
    assert stored[items[3]["sk"]["S"]]["body_bytes"]["N"] == items[3]["body_bytes"]["N"]
    assert stored[items[27]["sk"]["S"]]["reason"]["S"] == "bad \\ud800 text"
    assert stored[items[5]["sk"]["S"]]["raw"]["S"] == bodies[5]  # the others exactly as built


def test_an_aws_failure_writing_the_quarantine_retries_only_the_records_not_written(ingest, table_name, ddb):
    # Given 30 bad records (two BatchWriteItem requests) and DynamoDB throttling the first request
    recorder = CallRecorder(ddb)
    bad = [sent(message(f"bad{i}", timestamp="soon")) for i in range(30)]
    recorder.fail_at = recorder.total + 1
    # When they are ingested with a good event
    response, _, event = ingest([*bad, sent(message("fine"))])
    # Then the records of the request that failed are retried, the others quarantined, the good one counted
    ids = {r["body"]: r["messageId"] for r in event["Records"]}
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    stored = quarantined(ddb, table_name)
    assert len(failed) == 25 and len(stored) == 5
    assert failed == {ids[b] for b in bad if key_of(b) not in stored}
    assert usage(ddb, table_name).count("Message Sent") == 1


def test_a_body_that_breaks_validation_itself_is_quarantined_not_retried(ingest, ddb, table_name, monkeypatch):
    # Given a validator bug that one body triggers (simulated: parse_body raises for it)
    from pqlflow.ingest import batch

    real = batch.parse_body
    trigger = sent(message("trigger"))

    def buggy(body, *args):
        if body == trigger:
            raise RecursionError("simulated bug")
        return real(body, *args)

    monkeypatch.setattr(batch, "parse_body", buggy)
    # When it is ingested with a good event
    response, outcome, _ = ingest([trigger, sent(message("fine"))])
    # Then it is kept in the quarantine, naming the exception, instead of being retried into the dead-letter queue
    assert response == {"batchItemFailures": []}
    assert outcome.validation_errors == 1
    assert quarantined(ddb, table_name)[key_of(trigger)]["reason"]["S"] == \
        "body could not be validated (RecursionError: a pqlflow bug)"
    assert usage(ddb, table_name).count("Message Sent") == 1



def _emitted_metrics(stdout: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Metric name → (namespace, dimensions) of the EMF documents a handler printed."""
    found = {}
    for line in stdout.splitlines():
        doc = json.loads(line) if line.startswith("{") else {}
        for directive in doc.get("_aws", {}).get("CloudWatchMetrics", []):
            dims = {d: doc[d] for dset in directive["Dimensions"] for d in dset}
            for metric in directive["Metrics"]:
                if doc.get(metric["Name"]):
                    found[metric["Name"]] = (directive["Namespace"], dims)
    return found


def _assert_alarmed(metric: str, emitted: tuple[str, dict[str, str]]) -> None:
    """The deployed alarm watches exactly what the handler emits: the name, and the dimension set with the
    values the template gives the ingest function (CloudWatch matches an alarm's dimensions exactly)."""
    template = load_template()
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    service = template["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"][
        "POWERTOOLS_SERVICE_NAME"]
    alarms = [a["Properties"] for a in template["Resources"].values()
              if a["Type"] == "AWS::CloudWatch::Alarm" and a["Properties"]["MetricName"] == metric]
    assert len(alarms) == 1, f"no alarm on {metric}"
    alarm = alarms[0]
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {**emitted[1], "service": service}
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_a_validation_bug_raises_the_alarm_deployed_for_it(ingest, monkeypatch, capsys):
    # Given a validator bug that one body triggers
    from pqlflow.ingest import batch

    real = batch.parse_body
    trigger = sent(message("trigger"))
    monkeypatch.setattr(batch, "parse_body", lambda body, *a: 1 / 0 if body == trigger else real(body, *a))
    capsys.readouterr()
    # When it is ingested
    ingest([trigger, sent(message("fine"))])
    # Then the handler emits IngestValidationErrors, and the template alarms on that very metric
    emitted = _emitted_metrics(capsys.readouterr().out)
    assert "IngestValidationErrors" in emitted and "QuarantineDropped" not in emitted
    _assert_alarmed("IngestValidationErrors", emitted["IngestValidationErrors"])


def test_a_bad_record_dynamodb_will_not_keep_is_counted_and_alarmed(ingest, ddb, table_name, capsys):
    # Given a store whose quarantine writes are refused even reduced (never expected of DynamoDB)
    store = DynamoUsageStore(table_name, ddb)

    def refuse(items):
        return QuarantineWrite(dropped=[item_key(i) for i in items])

    store.quarantine = refuse  # type: ignore[method-assign]
    capsys.readouterr()
    # When a bad record arrives with a good one
    response, outcome, _ = ingest([sent(message("bad", timestamp="soon")), sent(message("fine"))], store=store)
    # Then the good one is counted, the lost one is not retried forever, and it is counted and alarmed
    assert response == {"batchItemFailures": []} and outcome.quarantine_dropped == 1
    assert usage(ddb, table_name).count("Message Sent") == 1
    emitted = _emitted_metrics(capsys.readouterr().out)
    assert emitted.get("QuarantineDropped") is not None
    _assert_alarmed("QuarantineDropped", emitted["QuarantineDropped"])

def test_the_batch_log_line_names_only_contract_fields(ingest, monkeypatch):
    # Given bad records whose fields are paths through a sender's own keys
    bodies = [sent(message("k1", properties={"ana@example.com": "\ud800"})),
              fill(sent(message("k2", properties={"Ana Lima": HOLE})), "9" * 5000),
              fill(json.dumps({**message("k3"), "secret-key": HOLE}), DEEP_ARRAYS)]
    logged: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(app.logger, "info", lambda message, extra=None: logged.append((message, extra or {})))
    # When they are ingested
    ingest(bodies)
    # Then the batch log line counts them by the contract's own field names, never the sender's keys
    ((message_, extra),) = logged
    assert message_ == "batch ingested"
    assert extra["quarantined_by_field"] == {"properties": 2, "other": 1}
    assert "ana@example.com" not in json.dumps(extra) and "Ana Lima" not in json.dumps(extra)
