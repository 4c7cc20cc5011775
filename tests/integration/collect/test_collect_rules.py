"""Segment's rules as pure functions: derived messageIds, batch context, sentAt, and the write-keys document."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pqlflow.collect.keys import KeyRing, WriteKeysError, WriteKeySource, basic_auth_user, parse_keys
from pqlflow.collect.messages import derived_message_id, judge_request

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SOURCES = ["pqlflow.collect"]


def judged(call: str, body: dict) -> list:
    return judge_request(call, body, NOW, 90)


def test_a_derived_message_id_follows_the_content_not_the_send() -> None:
    message = {"type": "track", "event": "Signed In", "userId": "u1"}
    # Then resending (new sentAt, a writeKey) keeps the id; another event gets another
    assert derived_message_id(message) == derived_message_id({**message, "sentAt": "x", "writeKey": "k"})
    assert derived_message_id(message) != derived_message_id({**message, "userId": "u2"})
    assert derived_message_id(message).startswith("pqlflow-")


def test_a_message_keeps_its_own_context_over_the_batchs() -> None:
    body = {"batch": [{"type": "track", "event": "A", "userId": "u", "context": {"groupId": "own"}},
                      {"type": "track", "event": "B", "userId": "u"}],
            "context": {"groupId": "shared", "locale": "fr-FR"}}
    first, second = (json.loads(j.detail) for j in judged("batch", body))
    assert first["context"] == {"groupId": "own", "locale": "fr-FR"}
    assert second["context"] == {"groupId": "shared", "locale": "fr-FR"}


def test_times_follow_segment() -> None:
    # A message without timestamp happened when received; a message-level sentAt beats the batch's
    [plain] = judged("track", {"event": "A", "userId": "u"})
    assert json.loads(plain.detail)["timestamp"] == "2026-12-03T12:00:00.000Z"
    body = {"batch": [{"type": "track", "event": "A", "userId": "u", "timestamp": "2026-12-03T10:00:00Z",
                       "sentAt": "2026-12-03T10:00:30Z"}], "sentAt": "2026-12-03T09:00:00Z"}
    [corrected] = judged("batch", body)
    assert json.loads(corrected.detail)["timestamp"] == (NOW - timedelta(seconds=30)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(("message", "field"), [
    ({"event": "A", "userId": "u", "sentAt": "last tuesday"}, "sentAt"),
    ({"event": "A", "userId": "u", "timestamp": "2026-12-03T10:00:00"}, "timestamp"),  # no zone
    ({"event": "A"}, "userId"),
    ({"event": "A", "userId": "u", "context": "not an object"}, "context"),
])
def test_a_bad_message_is_rejected_naming_its_field(message: dict, field: str) -> None:
    [result] = judged("track", message)
    assert result.detail is None and result.rejection.field == field


def test_the_type_of_a_single_call_is_the_calls() -> None:
    [result] = judged("page", {"type": "track", "userId": "u", "name": "Pricing"})
    assert result.type == "page" and json.loads(result.detail)["type"] == "page"


def test_the_keys_document_errors_name_the_entry_never_the_key() -> None:
    secret = "wk_a_real_looking_key_12345"
    with pytest.raises(WriteKeysError) as duplicate:
        parse_keys({"keys": [{"key": secret}, {"key": secret}]}, SOURCES)
    assert "keys[1].key appears twice" in str(duplicate.value) and secret not in str(duplicate.value)
    with pytest.raises(WriteKeysError, match=r"keys\[0\].key must be a string of 16"):
        parse_keys({"keys": [{"key": "short"}]}, SOURCES)
    ring = parse_keys({"keys": [{"key": secret, "browser": True}]}, SOURCES)
    assert "needs its origins" in (ring.find(secret).problem or "")


def test_basic_auth_user_is_the_write_key() -> None:
    assert basic_auth_user({"authorization": "Basic d2tfYWJjOg=="}) == "wk_abc"  # "wk_abc:"
    assert basic_auth_user({"authorization": "Bearer x"}) is None
    assert basic_auth_user({"authorization": "Basic !!!"}) is None


def test_the_keys_are_read_once_per_cache_period(aws: None) -> None:
    import boto3

    # Given the secret in Secrets Manager (moto) and a client that counts its calls
    client = boto3.client("secretsmanager", region_name="us-east-1")
    client.create_secret(Name="keys", SecretString=json.dumps({"writeKey": "k" * 20, "source": "pqlflow.collect"}))
    calls: list[str] = []
    client.meta.events.register("before-call.secretsmanager.GetSecretValue", lambda **kw: calls.append("get"))
    cached = WriteKeySource("keys", SOURCES, max_age=60, client=client)
    uncached = WriteKeySource("keys", SOURCES, max_age=0, client=client)
    # When a warm function serves 50 requests
    rings = [cached.ring() for _ in range(50)]
    # Then it read the secret once (within the cache period), and parsed it once
    assert len(calls) == 1 and all(r is rings[0] for r in rings) and isinstance(rings[0], KeyRing)
    # And with no cache, every request reads it (a rotation is seen at once)
    client.put_secret_value(SecretId="keys", SecretString=json.dumps({"writeKey": "n" * 20}))
    assert uncached.ring().find("n" * 20) is not None and cached.ring().find("n" * 20) is None
    assert len(calls) == 2
