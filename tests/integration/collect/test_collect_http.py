"""The collection API over real HTTP, as an SDK or a curl user meets it: auth, gzip, limits, Segment's
timestamp and batch rules, rejected messages answered and quarantined, retries counted once, CORS."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pqlflow.collect.keys import DEV_WRITE_KEY

from tests.integration.collect.conftest import (
    SERVER_KEY,
    UNLISTED_SOURCE_KEY,
    WEB_KEY,
    WEB_ORIGIN,
    CollectStack,
    keys_document,
)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(account: str, user: str = "u1", event: str = "Signed In", **extra: object) -> dict:
    return {"type": "track", "event": event, "userId": user, "context": {"groupId": account}, **extra}


def test_a_track_call_with_basic_auth_is_accepted_and_counted(stack: CollectStack, account: str) -> None:
    # When an app posts one track call with its write key as the Basic auth user name
    reply = stack.post("track", {"event": "Signed In", "userId": "u1", "context": {"groupId": account},
                                 "timestamp": now_iso()})
    # Then Segment's answer comes back and the account's usage counts the event
    assert (reply.status, reply.body) == (200, {"success": True})
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 1
    # And the message went on the bus as the key's source, with the call's type as detail-type
    [event] = stack.usage_events(account)
    assert (event["source"], event["detail-type"]) == ("pqlflow.collect", "track")


def test_the_write_key_may_be_in_the_body_and_never_travels_further(stack: CollectStack, account: str) -> None:
    # When the key is sent as writeKey in the body, as analytics.js does (no Authorization header)
    reply = stack.post("identify", {"writeKey": SERVER_KEY, "userId": "u1", "traits": {"plan": "free"},
                                    "context": {"groupId": account}}, key=None,
                       headers={"content-type": "text/plain"})
    # Then it is accepted, and the key is nowhere in what was put on the bus
    assert reply.status == 200, reply.body
    [event] = stack.usage_events(account)
    assert event["detail-type"] == "identify"
    assert SERVER_KEY not in json.dumps(event) and "writeKey" not in event["detail"]


def test_missing_and_wrong_write_keys_get_401_and_nothing_is_put(stack: CollectStack, account: str) -> None:
    # When a call has no key, or a key that is not in the secret
    missing = stack.post("track", track(account), key=None)
    wrong = stack.post("track", track(account), key="wk_not_a_key_at_all_000")
    # Then both are 401 with Segment's code and a reason, and no event went anywhere
    assert missing.status == wrong.status == 401
    assert missing.body["code"] == "unauthorized" and "missing write key" in missing.body["message"]
    assert wrong.body["message"] == "invalid write key"
    assert stack.usage_events(account) == [] and stack.usage(account) is None


def test_a_gzip_batch_is_accepted_with_its_context_applied_to_every_message(stack: CollectStack, account: str) -> None:
    # When an SDK posts a gzip batch whose top-level context names the account
    body = {"batch": [{"type": "track", "event": "Signed In", "userId": "u1"},
                      {"type": "page", "name": "Pricing", "userId": "u1"},
                      {"type": "group", "groupId": account, "userId": "u1", "traits": {"plan": "free"}}],
            "context": {"groupId": account, "library": {"name": "curl"}}, "integrations": {"All": True},
            "sentAt": now_iso()}
    reply = stack.post("batch", body, gzipped=True)
    # Then all three are accepted, each carrying the batch's context and integrations
    assert (reply.status, reply.body) == (200, {"success": True})
    events = stack.usage_events(account)
    assert sorted(e["detail-type"] for e in events) == ["group", "page", "track"]
    assert all(e["detail"]["integrations"] == {"All": True} for e in events)
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 1 and usage.count("Page Viewed") == 1


def test_a_clock_that_is_off_is_corrected_with_sent_at(stack: CollectStack, account: str) -> None:
    # Given a device whose clock is two hours behind, which recorded an event 10 s before sending
    device_now = datetime.now(UTC) - timedelta(hours=2)
    happened = device_now - timedelta(seconds=10)
    message = track(account, timestamp=happened.isoformat(), sentAt=device_now.isoformat())
    # When it posts the event
    assert stack.post("track", message).status == 200
    # Then the event's timestamp is when it really happened (about 10 s ago), the device's kept beside it
    [event] = stack.usage_events(account)
    corrected = datetime.fromisoformat(event["detail"]["timestamp"])
    assert abs((datetime.now(UTC) - timedelta(seconds=10) - corrected).total_seconds()) < 5
    assert event["detail"]["originalTimestamp"] == happened.isoformat()
    assert "receivedAt" in event["detail"]


def test_an_sdk_retry_of_the_same_body_counts_once(stack: CollectStack, account: str) -> None:
    # Given a batch without messageIds (a hand-rolled client), sent, then sent again as a retry with a new sentAt
    batch = [track(account, timestamp=now_iso(timedelta(seconds=-i))) for i in range(3)]
    first = stack.post("batch", {"batch": batch, "sentAt": now_iso()})
    retry = stack.post("batch", {"batch": batch, "sentAt": now_iso(timedelta(seconds=5))}, gzipped=True)
    # Then both are accepted, the same three messageIds went twice, and usage counts three events
    assert first.status == retry.status == 200
    ids = [e["detail"]["messageId"] for e in stack.usage_events(account)]
    assert len(ids) == 6 and len(set(ids)) == 3
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 3


def test_one_bad_message_is_answered_and_quarantined_and_the_others_are_accepted(
    stack: CollectStack, account: str
) -> None:
    # Given a batch with a good message, one with a bad timestamp, one too large and one alias
    huge = track(account, properties={"blob": "x" * 40_000}, messageId=f"big-{account}")
    bad_time = track(account, timestamp="yesterday", messageId=f"bad-{account}")
    alias = {"type": "alias", "userId": "u2", "previousId": "anon-1", "messageId": f"alias-{account}"}
    reply = stack.post("batch", {"batch": [track(account), bad_time, huge, alias]})
    # Then the answer is 400, names each rejected message by index, field and reason, and counts the accepted
    assert reply.status == 400 and reply.body["code"] == "invalid_request"
    assert reply.body["accepted"] == 1
    rejected = {r["index"]: r for r in reply.body["rejected"]}
    assert sorted(rejected) == [1, 2, 3]
    assert rejected[1]["field"] == "timestamp" and "yesterday" in rejected[1]["reason"]
    assert "32 KB" in rejected[2]["reason"] and rejected[2]["messageId"] == f"big-{account}"
    assert rejected[3]["field"] == "type" and "alias is not supported" in rejected[3]["reason"]
    # And the good one is counted while the three others are in the quarantine with their reasons
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 1
    kept = {q.message_id: q for q in stack.quarantined()}
    assert kept[f"bad-{account}"].field == "timestamp"
    assert kept[f"big-{account}"].body_bytes > 32 * 1024
    assert "alias is not supported" in kept[f"alias-{account}"].reason


def test_a_bad_single_call_is_400_naming_the_field(stack: CollectStack, account: str) -> None:
    # When a track call has no event name
    reply = stack.post("track", {"userId": "u1", "context": {"groupId": account}, "messageId": f"ne-{account}"})
    # Then Segment-style 400 names the field, and the message is in the quarantine
    assert reply.status == 400
    assert reply.body["field"] == "event" and reply.body["message"].startswith("event: missing")
    assert any(q.message_id == f"ne-{account}" for q in stack.quarantined())


def test_oversized_requests_are_413_and_nothing_is_accepted(stack: CollectStack, account: str) -> None:
    # When a single call is over 32 KB, a batch over 500 KB, and a small gzip body inflates past 500 KB
    single = stack.post("track", track(account, properties={"blob": "x" * 33_000}))
    batch = stack.post("batch", {"batch": [track(account, properties={"blob": "x" * 20_000}) for _ in range(30)]})
    bomb = stack.post("batch", {"batch": [track(account, properties={"pad": "a" * 30_000})] * 20}, gzipped=True)
    # Then each is 413 with the limit stated, and no event of them was put
    assert (single.status, batch.status, bomb.status) == (413, 413, 413)
    assert "32 KB" in single.body["message"] and "500 KB" in batch.body["message"]
    assert stack.usage_events(account) == []


def test_unreadable_bodies_are_400(stack: CollectStack, account: str) -> None:
    # When the body is not JSON, is not gzip though it says so, or is not an object
    not_json = stack.post("batch", None, raw=b'{"batch": [')
    not_gzip = stack.post("batch", None, raw=b"plain", headers={"content-encoding": "gzip"})
    not_object = stack.post("track", ["a", "list"])
    no_batch = stack.post("batch", {"messages": []})
    # Then each is 400 saying what is wrong with the body
    assert not_json.status == 400 and not_json.body["code"] == "invalid_json"
    assert not_gzip.status == 400 and "gzip" in not_gzip.body["message"]
    assert not_object.status == 400 and not_object.body["message"] == "body must be a JSON object"
    assert no_batch.status == 400 and no_batch.body["field"] == "batch"


def test_a_browser_key_answers_preflight_for_its_origin_only(stack: CollectStack, account: str) -> None:
    # When a browser on the allowed origin, and one on another origin, send a CORS preflight
    allowed = stack.post("batch", None, key=None, method="OPTIONS", headers={
        "origin": WEB_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    other = stack.post("batch", None, key=None, method="OPTIONS", headers={"origin": "https://evil.test"})
    # Then the allowed origin is granted POST with the headers SDKs send, the other gets no CORS grant
    assert allowed.status == 204
    assert allowed.headers["access-control-allow-origin"] == WEB_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "content-type" in allowed.headers["access-control-allow-headers"]
    assert other.status == 403 and "access-control-allow-origin" not in other.headers
    # And the actual call from the allowed origin is accepted with the grant; elsewhere it is refused
    ok = stack.post("track", track(account), key=WEB_KEY, headers={"origin": WEB_ORIGIN})
    refused = stack.post("track", track(account), key=WEB_KEY, headers={"origin": "https://evil.test"})
    server_key = stack.post("track", track(account), key=SERVER_KEY, headers={"origin": WEB_ORIGIN})
    assert ok.status == 200 and ok.headers["access-control-allow-origin"] == WEB_ORIGIN
    assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
    assert server_key.status == 403 and "server-side key" in server_key.body["message"]
    assert len(stack.usage_events(account)) == 1


def test_a_key_whose_source_no_rule_accepts_is_500_so_the_sdk_keeps_its_events(
    stack: CollectStack, account: str
) -> None:
    # When a key's source is not one of the stack's AllowedSources (the usage rule would drop its events)
    reply = stack.post("track", track(account), key=UNLISTED_SOURCE_KEY)
    # Then the SDK is told to send again later (5xx), and nothing was put where it would be lost
    assert reply.status == 500 and reply.body["code"] == "misconfigured"
    assert stack.usage_events(account) == []


def test_a_rotated_key_takes_effect_without_a_redeploy(stack: CollectStack, account: str) -> None:
    # Given the keys rotated in the secret: the server key replaced by a new one
    new_key = "wk_test_rotated_0123456789"
    document = keys_document()
    document["keys"] = [k for k in document["keys"] if k["key"] != SERVER_KEY]
    document["keys"].append({"key": new_key, "source": "pqlflow.collect"})
    stack.put_keys(document)
    try:
        # When the old and the new key send (the cache is 0 s here; CollectWriteKeysCacheSeconds in AWS)
        old = stack.post("track", track(account), key=SERVER_KEY)
        new = stack.post("track", track(account, user="u2"), key=new_key)
        dev = stack.post("track", track(account, user="u3"), key=DEV_WRITE_KEY)
    finally:
        stack.put_keys(keys_document())
    # Then the old one is refused and the new one works, as do the keys left in place
    assert (old.status, new.status, dev.status) == (401, 200, 200)


def test_logs_carry_neither_the_write_key_nor_personal_data(
    stack: CollectStack, account: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # When calls with traits and an email address come in, good and bad, at DEBUG-free INFO logging
    capfd.readouterr()
    stack.post("identify", {"userId": "ann@acme.example", "traits": {"email": "ann@acme.example", "name": "Ann"},
                            "context": {"groupId": account}})
    stack.post("batch", {"batch": [track(account, user="ann@acme.example", timestamp="soon")]})
    stack.post("track", track(account), key="wk_wrong_key_0000000000")
    out = capfd.readouterr()
    # Then neither the keys nor the address nor the name appear in what the function printed
    printed = out.out + out.err
    for secret in (SERVER_KEY, "wk_wrong_key_0000000000", "ann@acme.example", "Ann"):
        assert secret not in printed


def test_analytics_js_calls_on_their_one_letter_paths_are_accepted(stack: CollectStack, account: str) -> None:
    # When a browser sends as analytics.js does: /v1/t and /v1/p, text/plain, the write key in the body, its Origin
    common = {"writeKey": WEB_KEY, "anonymousId": "anon-7", "context": {"groupId": account}, "sentAt": now_iso()}
    headers = {"content-type": "text/plain", "origin": WEB_ORIGIN}
    tracked = stack.post("t", {**common, "type": "track", "event": "Signed In"}, key=None, headers=headers)
    paged = stack.post("p", {**common, "type": "page", "name": "Pricing"}, key=None, headers=headers)
    # Then both are accepted for that origin and counted as the calls they are
    assert (tracked.status, paged.status) == (200, 200)
    assert tracked.headers["access-control-allow-origin"] == WEB_ORIGIN
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 1 and usage.count("Page Viewed") == 1



def test_a_one_letter_path_names_the_call_it_stands_for() -> None:
    # the service routes on it and the function's log line names it (a browser's /v1/t is a track, not "other")
    from pqlflow.collect.service import CollectRequest

    names = {path: CollectRequest("POST", path, {}).call_name for path in ("t", "p", "b", "track", "nope")}
    assert names == {"t": "track", "p": "page", "b": "batch", "track": "track", "nope": "nope"}
