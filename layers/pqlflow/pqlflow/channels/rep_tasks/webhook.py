"""The generic webhook connector: the task as signed JSON (HMAC-SHA256 over timestamp and body) with an
`Idempotency-Key` header, and the `sign`/`verify` pair a receiver uses to check it."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.rep_tasks.http import Http
from pqlflow.channels.rep_tasks.task import RepTask
from pqlflow.kernel import clock

SIGNATURE_HEADER = "X-Pqlflow-Signature"
TIMESTAMP_HEADER = "X-Pqlflow-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`; receivers recompute and compare."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def same(expected: str, given: str) -> bool:
    """Constant-time comparison of a signature with the one a request carries; a header holding characters no
    signature has is a mismatch (401), not the TypeError `hmac.compare_digest` raises for non-ASCII strings."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return same(sign(secret, timestamp, body), signature)


@dataclass
class WebhookConnector:
    """POSTs the task as JSON with an HMAC signature and an `Idempotency-Key` header."""

    url: str
    secret: str
    http: Http = field(default_factory=Http)
    name: str = "webhook"

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        body = json.dumps(
            {"type": "Rep Task Created", "task": task.model_dump(mode="json", exclude={"deliveries"})},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        timestamp = str(int(clock.now()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": task.idempotency_key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        _, attempts = self.http.request("POST", self.url, raw=body, headers=headers)
        return None, attempts


class WebhookConfig(BaseModel):
    """The `webhook` object of the connector secret."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16)


def connect(cfg: WebhookConfig, http: Http) -> WebhookConnector:
    return WebhookConnector(cfg.url, cfg.secret, http)
