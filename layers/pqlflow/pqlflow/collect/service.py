"""One collection API request: authenticate, decode, judge, put on the bus, quarantine, answer as Segment does.

Accepted means durable. The valid messages of a request are put on the bus (`PutEventsSender`: chunks of
at most 10 entries and 256 KB, failed entries retried with backoff) before anything is answered; if any
of them cannot be put, the answer is 500 and reports nothing accepted, so the SDK sends the whole body
again: the ones that did go are counted once downstream, because their messageIds are the same (sent,
or derived from content). Rejected messages are quarantined exactly as ingest quarantines (its item, its
store's BatchWriteItem), and named in the answer; one bad message never holds back the others.

Answers: 200 `{"success": true}`; 400 naming the field (for a batch, each rejected message by index, the
others accepted); 401 no or unknown write key; 403 an origin the key does not allow; 413 a message over
32 KB or a batch over 500 KB; 500 when the bus, the quarantine or the keys are out of reach (retry).
Error bodies carry Segment's `code` and `message`, which analytics-python logs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pqlflow.collect.keys import KeyRing, WriteKey, basic_auth_user
from pqlflow.collect.messages import (
    CALLS,
    SHORT_PATHS,
    Judged,
    RequestRejected,
    body_limit,
    judge_request,
    read_json,
    write_key_in,
)
from pqlflow.contracts.bus import PublishError
from pqlflow.ingest.quarantine import QuarantineWrite, quarantine_item
from pqlflow.kernel import clock

ALLOWED_HEADERS = "authorization, content-type, content-encoding"
PREFLIGHT_MAX_AGE = "600"
_LOGGED_FIELDS = frozenset({"", "body", "batch", "type", "messageId", "timestamp", "sentAt", "userId", "anonymousId",
                            "groupId", "context", "event", "name", "category", "properties", "traits"})


class Keys(Protocol):
    def ring(self) -> KeyRing: ...


class Sender(Protocol):
    def send(self, entries: Sequence[dict[str, Any]]) -> int: ...


class Quarantine(Protocol):
    def quarantine(self, items: list[dict[str, Any]]) -> QuarantineWrite: ...


@dataclass(frozen=True)
class CollectRequest:
    method: str
    call: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes = b""

    @property
    def call_name(self) -> str:
        """The call the path names, analytics.js's one-letter paths (`/v1/t`) resolved (`track`)."""
        return SHORT_PATHS.get(self.call, self.call)


@dataclass
class CollectResponse:
    """The HTTP answer, and what the request did (for the log line and metrics: no content, no key)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    key: str | None = None  # the key's label, never the key
    accepted: int = 0
    rejected_by_field: Counter[str] = field(default_factory=Counter)
    not_put: int = 0

    def http(self) -> dict[str, Any]:
        if self.status == 204:  # a preflight's answer: headers only
            return {"statusCode": 204, "headers": dict(self.headers), "body": ""}
        headers = {"content-type": "application/json", **self.headers}
        return {"statusCode": self.status, "headers": headers, "body": json.dumps(self.body)}


def _error(status: int, code: str, message: str, **extra: Any) -> CollectResponse:
    return CollectResponse(status, {"success": False, "code": code, "message": message, **extra})


@dataclass
class CollectService:
    keys: Keys
    sender: Sender
    quarantine: Quarantine
    bus_name: str
    quarantine_days: int = 14
    retention_days: int = 90
    now: Callable[[], float] = clock.now  # the API's receipt time (pqlflow's clock: simulated in replay)
    log_problem: Callable[[str, dict[str, Any]], None] = field(default=lambda message, extra: None)

    def handle(self, request: CollectRequest) -> CollectResponse:
        origin = request.headers.get("origin")
        try:
            if request.method.upper() == "OPTIONS":
                return self._preflight(origin)
            response = self._post(request, origin)
        except RequestRejected as exc:
            extra = {"field": exc.field} if exc.field else {}
            response = _error(exc.status, exc.code, str(exc), **extra)
            if exc.field is not None:
                response.rejected_by_field[exc.field] += 1
        return response

    def _preflight(self, origin: str | None) -> CollectResponse:
        ring = self._ring()
        if isinstance(ring, CollectResponse):
            return ring
        if not origin or not ring.origin_allowed(origin):
            return _error(403, "origin_not_allowed", "no browser write key allows this origin")
        return CollectResponse(204, {}, _cors(origin) | {
            "access-control-allow-methods": "POST, OPTIONS",
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": PREFLIGHT_MAX_AGE,
        })

    def _ring(self) -> KeyRing | CollectResponse:
        try:
            return self.keys.ring()
        except Exception as exc:  # noqa: BLE001 - the secret unreadable or malformed: retry, never a 401
            # The type and (for a malformed document) which entry and field: never the document itself.
            self.log_problem("write keys unavailable", {"error_type": type(exc).__name__,
                                                         "problem": str(exc) if isinstance(exc, ValueError) else ""})
            return _error(500, "unavailable", "write keys are unavailable right now; retry")

    def _post(self, request: CollectRequest, origin: str | None) -> CollectResponse:
        call = request.call_name
        if call not in (*CALLS, "batch"):
            return _error(404, "not_found", f"no such call /v1/{call[:32]} (track, identify, group, page, screen, "
                          "alias, batch)")
        key = basic_auth_user(request.headers)
        body: Any = None
        if key is None:  # Segment also takes the write key in the body (analytics.js sends it there)
            body = read_json(request.body, request.headers.get("content-encoding"), body_limit(call))
            key = write_key_in(body)
        if key is None:
            return _error(401, "unauthorized", "missing write key: send it as the Basic auth user name (empty "
                          "password) or as writeKey in the body")
        ring = self._ring()
        if isinstance(ring, CollectResponse):
            return ring
        write_key = ring.find(key)
        if write_key is None:
            return _error(401, "unauthorized", "invalid write key")
        if write_key.problem is not None:
            self.log_problem("write key misconfigured", {"key": write_key.label, "problem": write_key.problem})
            return self._with_key(_error(500, "misconfigured", "this write key cannot be used right now (see the "
                                         "collect function's log); retry"), write_key)
        cors: dict[str, str] = {}
        if origin:
            if not write_key.allows(origin):
                why = "this origin" if write_key.browser else "browsers: it is a server-side key"
                return self._with_key(_error(403, "origin_not_allowed", f"this write key does not allow {why}"),
                                      write_key)
            cors = _cors(origin)
        if body is None:
            body = read_json(request.body, request.headers.get("content-encoding"), body_limit(call))
        response = self._accept(call, body, write_key)
        response.headers.update(cors)
        return self._with_key(response, write_key)

    @staticmethod
    def _with_key(response: CollectResponse, write_key: WriteKey) -> CollectResponse:
        response.source, response.key = write_key.source, write_key.label
        return response

    def _accept(self, call: str, body: Any, write_key: WriteKey) -> CollectResponse:
        now_s = self.now()
        judged = judge_request(call, body, datetime.fromtimestamp(now_s, UTC), self.retention_days)
        good = [j for j in judged if j.detail is not None]
        bad = [j for j in judged if j.rejection is not None]
        entries = [{"Source": write_key.source, "DetailType": j.type, "Detail": j.detail,
                    "EventBusName": self.bus_name} for j in good]
        try:
            self.sender.send(entries)
        except PublishError as exc:
            codes = ", ".join(sorted(set(exc.codes)))
            response = _error(500, "unavailable", f"{len(exc.failed)} of {len(entries)} messages could not be "
                              f"put on the bus ({codes}); none of this request is accepted: send it again "
                              "(its messageIds make that safe)")
            response.not_put = len(exc.failed)
            return response
        except Exception as exc:  # noqa: BLE001 - EventBridge unreachable: the SDK must send again
            self.log_problem("events not put", {"error_type": type(exc).__name__, "messages": len(entries)})
            response = _error(500, "unavailable", "the bus is unavailable right now; none of this request is "
                              "accepted: send it again (its messageIds make that safe)")
            response.not_put = len(entries)
            return response
        if bad:
            kept = self._quarantine(bad, now_s)
            if kept is not None:
                return kept
        response = _answer(call, good, bad)
        response.accepted = len(good)
        for j in bad:
            assert j.rejection is not None
            top = (j.rejection.field or "").split(".")[0]
            response.rejected_by_field[top if top in _LOGGED_FIELDS else "other"] += 1
        return response

    def _quarantine(self, bad: list[Judged], now_s: float) -> CollectResponse | None:
        """Keep every rejected message as ingest would; a 500 if DynamoDB could not (the SDK sends again)."""
        items = [quarantine_item(j.kept, j.rejection, int(now_s * 1000), self.quarantine_days)
                 for j in bad if j.rejection is not None]
        try:
            written = self.quarantine.quarantine(items)
            failed = len(written.failed)
        except Exception as exc:  # noqa: BLE001 - DynamoDB unreachable
            self.log_problem("rejected messages not quarantined", {"error_type": type(exc).__name__})
            failed = len(items)
        if not failed:
            return None
        return _error(500, "unavailable", f"{failed} rejected message(s) could not be kept in the quarantine; "
                      "send the request again (accepted messages are counted once)")


def _cors(origin: str) -> dict[str, str]:
    return {"access-control-allow-origin": origin, "vary": "Origin"}


def _answer(call: str, good: list[Judged], bad: list[Judged]) -> CollectResponse:
    if not bad:
        return CollectResponse(200, {"success": True})
    rejected = []
    for j in bad:
        assert j.rejection is not None
        entry: dict[str, Any] = {"field": j.rejection.field or "message", "reason": j.rejection.reason}
        if j.index is not None:
            entry = {"index": j.index, **entry}
        if j.message_id:
            entry["messageId"] = j.message_id
        rejected.append(entry)
    first = bad[0].rejection
    assert first is not None
    if call != "batch":
        return CollectResponse(400, {"success": False, "code": "invalid_request", "message": str(first),
                                     "field": first.field or "message", "rejected": rejected})
    where = f"batch[{bad[0].index}]"
    message = (f"{len(bad)} of {len(bad) + len(good)} messages rejected and quarantined, the other {len(good)} "
               f"accepted; {where} {first}")
    return CollectResponse(400, {"success": False, "code": "invalid_request", "message": message,
                                 "accepted": len(good), "rejected": rejected})
