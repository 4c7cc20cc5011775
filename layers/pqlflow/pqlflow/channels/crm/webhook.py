"""The generic signed webhook: each transition POSTed as JSON to the operator's URL, with
`X-Pqlflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (Stripe's scheme) and
`Idempotency-Key: <transition id>`, retried with backoff by `rep_tasks.http`; `verify` is the receiver's
side: the signature and a tolerance window against replays."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field

from pqlflow.channels.crm.record import CrmRecord
from pqlflow.channels.rep_tasks.http import Http
from pqlflow.channels.rep_tasks.webhook import sign
from pqlflow.kernel import clock

SIGNATURE_HEADER = "X-Pqlflow-Signature"
TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value: `t=<timestamp>,v1=<hex HMAC-SHA256 over "<timestamp>.<body>">`."""
    mac = sign(secret, str(timestamp), body).removeprefix("sha256=")  # the rep-task webhook's MAC
    return f"t={timestamp},v1={mac}"


class SignatureError(ValueError):
    """The request is not a genuine, fresh pqlflow webhook."""


def verify(
    secret: str, header: str | None, body: bytes, *, tolerance: float = TOLERANCE_SECONDS, now: float | None = None
) -> int:
    """Check a received webhook: the raw body as received, the `X-Pqlflow-Signature` header. Returns the
    signed timestamp; raises `SignatureError` saying what is wrong (missing, malformed, stale, mismatch)."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER}: no integer t=") from None
    if not parts.get("v1"):
        raise SignatureError(f"{SIGNATURE_HEADER}: no v1= signature")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"{SIGNATURE_HEADER}: timestamp outside the {tolerance:g} s tolerance (a replay?)")
    expected = signature(secret, timestamp, body).rpartition("v1=")[2]
    # Several v1 values are allowed, so a receiver can accept the old and the new secret while rotating.
    if not any(hmac.compare_digest(expected, v) for v in parts["v1"]):
        raise SignatureError(f"{SIGNATURE_HEADER}: signature does not match the body")
    return timestamp


@dataclass
class CrmWebhook:
    """POSTs `{"type": "pqlflow.crm.sync", "record": ...}`, signed, with the transition id as idempotency key."""

    url: str
    secret: str
    http: Http = field(default_factory=Http)
    name: str = "webhook"

    def body(self, record: CrmRecord, explanation_url: str | None) -> bytes:
        doc = {"type": "pqlflow.crm.sync", "record": record.to_json(explanation_url)}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def write(self, record: CrmRecord, explanation_url: str | None) -> tuple[str | None, int]:
        body = self.body(record, explanation_url)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": record.transition_id,
            # Signed at the first try: a retry carries the same, still fresh, timestamp.
            SIGNATURE_HEADER: signature(self.secret, int(clock.now()), body),
        }
        _, attempts = self.http.request("POST", self.url, raw=body, headers=headers)
        return None, attempts
