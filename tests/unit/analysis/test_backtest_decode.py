"""The backtest's fast decoder accepts and rejects exactly what `pqlflow.contracts.usage_events.parse_body` does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pqlflow.analysis import backtest
from pqlflow.analysis.backtest import HISTORY_RETENTION_DAYS, FastDecoder
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.contracts.usage_events import Rejection, UsageEvent, parse_body

NOW_S = datetime(2026, 6, 1, tzinfo=UTC).timestamp()


def reference(raw: bytes) -> UsageEvent | Rejection:
    return parse_body(raw.decode("utf-8"), NOW_S, HISTORY_RETENTION_DAYS)


@contextlib.contextmanager
def engine(name: str) -> Iterator[None]:
    """Run the decoder with msgspec (when installed), or without it (every line then takes parse_body)."""
    saved = backtest._msgspec
    if name == "json":
        backtest._msgspec = None
    try:
        yield
    finally:
        backtest._msgspec = saved


ENGINES = ["json"] + (["msgspec"] if backtest._msgspec is not None else [])


def assert_same(raw: bytes) -> None:
    for name in ENGINES:
        with engine(name):
            _assert_same(raw)


def _assert_same(raw: bytes) -> None:
    fast = FastDecoder(NOW_S).decode(raw)
    ref = reference(raw)
    assert type(fast) is type(ref), (raw, fast, ref)
    if isinstance(ref, UsageEvent):
        assert isinstance(fast, UsageEvent)
        assert repr(fast) == repr(ref), raw  # repr: NaN == NaN, and 1 vs 1.0 vs True differ
    else:
        assert fast == ref, raw


# ---- strategies: valid values, and every kind of wrong one --------------------------------------

idents = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12),
    st.text(max_size=6),  # unicode, controls, whitespace, empty
    st.sampled_from(["", " ", "  x ", "a\tb", "é", "\u00a0", "\u2003x", "x" * 256, "x" * 257, "ok\x7f", "\u0085"]),
    st.integers(),
    st.none(),
    st.booleans(),
)


def _stamp(dt: datetime, style: int) -> str:
    if style == 0:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if style == 1:
        return dt.isoformat(timespec="seconds").replace("+00:00", "Z")
    if style == 2:
        return dt.astimezone(UTC).isoformat(timespec="microseconds")
    if style == 3:
        return dt.isoformat(timespec="seconds").replace("+00:00", "-05:30")
    if style == 4:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "+14:00").replace("T", "t")
    return dt.isoformat(timespec="milliseconds")[:-6]  # no zone


timestamps = st.one_of(
    st.builds(
        _stamp,
        st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
        st.integers(0, 5),
    ),
    st.sampled_from(
        [
            "2026-05-31T10:00:00.000Z",
            "2026-05-31T10:00:00Z",
            "2026-05-31T10:00:00.1Z",
            "2026-05-31T10:00:00.1234567Z",
            "2026-05-31T10:00:60Z",
            "2026-02-30T10:00:00Z",
            "2026-05-31T24:00:00Z",
            "2026-05-31 10:00:00Z",
            "2026-05-31T10:00Z",
            "2026-05-31",
            "2026-05-31T10:00:00+23:59",
            "2026-05-31T10:00:00-00:00",
            "2026-05-31T10:00:00+0530",
            "2026-05-31T10:00:00.000z",
            "2026-W22-7T10:00:00Z",
            "20260531T100000Z",
            "2026-05-31T10:00:00,5Z",
            "2026-05-31T10:00:00.Z",
            "2026-05-31T1٠:00:00Z",
            "1780221600",
            "",
            "2026-06-02T10:00:00.000Z",
            "2026-06-03T10:00:00.000Z",
            "0001-01-01T00:00:00Z",
        ]
    ),
    st.integers(min_value=0, max_value=2_000_000_000_000),
    st.none(),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=12,
)
bags = st.one_of(st.dictionaries(st.text(max_size=8), json_values, max_size=5), json_values)
MISSING = object()


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), strategy)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "track", "identify", "group", "page", "screen", "alias", "Track", 3]))
    fields = {
        "type": kind,
        "messageId": draw(st.one_of(st.uuids().map(str), idents)),
        "timestamp": draw(timestamps),
        "userId": draw(maybe(idents)),
        "anonymousId": draw(maybe(idents)),
        "context": draw(
            maybe(
                st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "groupId": idents,
                            "timezone": st.one_of(st.text(max_size=5), st.integers(), st.none()),
                            "library": json_values,
                        },
                    ),
                    json_values,
                )
            )
        ),
        "event": draw(maybe(idents)),
        "name": draw(maybe(idents)),
        "category": draw(maybe(idents)),
        "groupId": draw(maybe(idents)),
        "properties": draw(maybe(bags)),
        "traits": draw(maybe(bags)),
    }
    return {k: v for k, v in fields.items() if v is not MISSING}


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    message = draw(messages())
    if draw(st.booleans()):
        envelope: dict[str, Any] = {
            "version": "0",
            "detail-type": draw(st.one_of(st.just(message.get("type")), st.sampled_from(["track", "identify", 7]))),
            "source": draw(st.one_of(st.just("aws.partner/segment.com/acme"), st.integers())),
            "detail": message,
        }
        for key in ("id", "time", "account", "region"):
            if draw(st.booleans()):
                envelope[key] = draw(st.one_of(st.text(max_size=4), st.integers(), st.none()))
        if draw(st.integers(0, 9)) == 0:
            envelope["detail_type"] = "track"
        if draw(st.integers(0, 9)) == 0:
            del envelope["detail"]
        message = envelope
    return json.dumps(message, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines())
def test_fast_decoder_agrees_with_parse_body_on_generated_messages(raw: bytes) -> None:
    # Given a message, valid or not in any field / When both decode it / Then the results are identical
    assert_same(raw)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "messageId",
                "timestamp",
                "userId",
                "event",
                "properties",
                "context",
                "traits",
                "groupId",
                "detail-type",
                "detail",
                "source",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_fast_decoder_agrees_on_arbitrary_objects(doc: dict[str, Any]) -> None:
    assert_same(json.dumps(doc).encode())


VALID = {
    "type": "track",
    "messageId": "m-1",
    "timestamp": "2026-05-31T10:00:00.000Z",
    "userId": "u1",
    "event": "Message Sent",
    "properties": {"n": 1},
    "context": {"groupId": "acct-1"},
}


def _with(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


EDGE_CASES = {
    "valid": _with(),
    "big integer property": _with(properties={"n": 2**70}),
    "big integer trait": _with(type="identify", traits={"n": 2**64 + 1}),
    "big negative integer": _with(properties={"n": -(2**64)}),
    "huge float": json.dumps(VALID).replace('{"n": 1}', '{"n": 1e400}').encode(),
    "NaN literal": json.dumps(VALID).replace('{"n": 1}', '{"n": NaN}').encode(),
    "Infinity literal": json.dumps(VALID).replace('{"n": 1}', '{"n": -Infinity}').encode(),
    "lone surrogate": json.dumps(VALID).replace('"n"', '"\\ud800"').encode(),
    "surrogate pair": json.dumps(VALID).replace('"n"', '"\\ud83d\\ude00"').encode(),
    "duplicate keys": json.dumps(VALID).replace('"n": 1', '"n": 1, "n": 2').encode(),
    "duplicate messageId key": json.dumps(VALID)
    .replace('"messageId": "m-1"', '"messageId": "", "messageId": "m"')
    .encode(),
    "byte order mark": b"\xef\xbb\xbf" + _with(),
    "trailing garbage": _with() + b" x",
    "trailing whitespace": _with() + b" \r",
    "not an object": b"[1, 2]",
    "a string": b'"track"',
    "invalid JSON": b'{"type": "track",',
    "empty object": b"{}",
    "nesting 9 deep": _with(properties={"a": [[[[[[[[1]]]]]]]]}),
    "nesting 8 deep": _with(properties={"a": [[[[[[[1]]]]]]]}),
    "nesting 8 deep in traits": _with(type="identify", traits={"a": {"b": [[[[[[1]]]]]]}}),
    "nesting 9 deep in traits": _with(type="identify", traits={"a": {"b": [[[[[[[1]]]]]]]}}),
    "track with deep traits it ignores": _with(traits={"a": [[[[[[[[[1]]]]]]]]]}),
    "track with traits a string": _with(traits="x"),
    "identify with properties a list": _with(type="identify", properties=[1], traits={}),
    "big integer deep in a list": _with(properties={"a": [[2**70, 1.5, None, True]]}),
    "many flat objects": _with(properties={f"k{i}": {} for i in range(12)}),
    "detail-type inside properties": _with(properties={"detail-type": "x"}),
    "detail-type as a value": _with(properties={"k": "detail-type"}),
    "oversized": _with(properties={"blob": "x" * 40_000}),
    "just under the size check": _with(properties={"blob": "x" * 8_000}),
    "properties null": _with(properties=None),
    "properties list": _with(properties=[1]),
    "context null": _with(context=None),
    "context list": _with(context=[]),
    "timezone number": _with(context={"groupId": "a", "timezone": 5}),
    "no user": json.dumps({k: v for k, v in VALID.items() if k != "userId"}).encode(),
    "anonymous only": json.dumps({**{k: v for k, v in VALID.items() if k != "userId"}, "anonymousId": "anon"}).encode(),
    "userId null, anonymousId set": _with(userId=None, anonymousId="anon"),
    "future": _with(timestamp="2026-06-03T00:00:00Z"),
    "just inside the future limit": _with(timestamp="2026-06-01T23:00:00Z"),
    "page with name": _with(type="page", name="Pricing", category="Docs", properties={"path": "/p"}),
    "page keeps property name": _with(type="page", name="Pricing", properties={"name": "kept"}),
    "screen": _with(type="screen", name="Home"),
    "identify": _with(type="identify", traits={"email": "a@b.example", "plan": "free"}),
    "group": _with(type="group", groupId="acct-2", traits={"plan": "free"}),
    "group without groupId": _with(type="group", traits={}),
    "envelope": json.dumps({"detail-type": "track", "source": "s", "detail": VALID}).encode(),
    "envelope mismatch": json.dumps({"detail-type": "identify", "source": "s", "detail": VALID}).encode(),
    "envelope id number": json.dumps({"detail-type": "track", "source": "s", "detail": VALID, "id": 1}).encode(),
    "envelope detail_type too": json.dumps(
        {"detail-type": "track", "detail_type": "track", "source": "s", "detail": VALID}
    ).encode(),
    "envelope without source": json.dumps({"detail-type": "track", "detail": VALID}).encode(),
    "invalid UTF-8 in a string": _with().replace(b"u1", b"u\xff"),
    "non-ASCII identifiers": _with(userId="Zoë", event="Café Opened"),
    "offset with minutes": _with(timestamp="2026-05-31T10:00:00.5+05:45"),
    "seven fraction digits": _with(timestamp="2026-05-31T10:00:00.1234567Z"),
    # issue 14: bodies past every parser's nesting limit, lone surrogates, envelopes of the wrong shape
    "nesting 3,000 deep": _with(properties={"a": 0}).replace(b'{"a": 0}', b"[" * 3000 + b"]" * 3000),
    "nesting 3,000 deep in an unread envelope field": json.dumps(
        {"detail-type": "track", "source": "s", "detail": VALID, "resources": 0}).encode().replace(
        b'"resources": 0', b'"resources": ' + b"[" * 3000 + b"]" * 3000),
    "body nesting 3,000 deep": b"[" * 3000 + b"]" * 3000,
    "lone surrogate messageId": json.dumps({"detail-type": "track", "source": "s",
                                            "detail": {**VALID, "messageId": "\ud800"}}).encode(),
    "detail a string": json.dumps({"detail-type": "track", "source": "s", "detail": "x"}).encode(),
    "detail null": json.dumps({"detail-type": "track", "source": "s", "detail": None}).encode(),
    "no detail-type": json.dumps({"source": "s", "detail": VALID}).encode(),
    "detail-type as a property key": _with(properties={"detail-type": "x"}),
    "5,000-digit integer": _with(properties={"n": 0}).replace(b'{"n": 0}', b'{"n": ' + b"9" * 5000 + b"}"),
}


@pytest.mark.parametrize("raw", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_fast_decoder_agrees_on_edge_cases(raw: bytes) -> None:
    if raw == EDGE_CASES["invalid UTF-8 in a string"]:
        # Given bytes that are not UTF-8: parse_body only ever gets text, so the backtest says what is wrong
        for name in ENGINES:
            with engine(name):
                result = FastDecoder(NOW_S).decode(raw)
            assert isinstance(result, Rejection) and "UTF-8" in result.reason
        return
    assert_same(raw)


@pytest.mark.skipif(backtest._msgspec is None, reason="the fast path needs msgspec")
def test_exported_sample_lines_take_the_fast_path() -> None:
    # Given a realistic export (every message type, EventBridge-ready Segment messages)
    config = SampleConfig(
        seed=3, accounts=8, days=10, start=(datetime.fromtimestamp(NOW_S, UTC) - timedelta(days=30)).date()
    )
    raw_lines = [line.encode() for line in Sample(config).lines()]
    expected = [reference(raw) for raw in raw_lines]
    decoder = FastDecoder(NOW_S)
    # When it is decoded
    results = [decoder.decode(raw) for raw in raw_lines]
    # Then every line took the fast path and matches the reference parser
    assert decoder.slow == 0 and decoder.fast == len(raw_lines)
    assert results == expected
