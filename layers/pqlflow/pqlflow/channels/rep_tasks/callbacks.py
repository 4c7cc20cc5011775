"""The connectors' reports that a rep closed a task: each one verified as its sender signs it, then read into
the task it names and the outcome. Pure: no I/O; `callback_api` finds the task and publishes.

- webhook: the receiver POSTs `{"task_id": "rt_…", "outcome": "completed"|"dismissed"}` signed like the
  tasks pqlflow sends it (`webhook.sign`: `X-Pqlflow-Timestamp`, `X-Pqlflow-Signature`).
- Slack: the "Mark done" button's interactivity request (form-encoded `payload`), signed with the Slack
  app's signing secret: `X-Slack-Signature` = `v0=` hex HMAC-SHA256 of `v0:<X-Slack-Request-Timestamp>:<body>`.
- HubSpot: webhooks v3 (`X-HubSpot-Signature-v3` = base64 HMAC-SHA256 of method + URI + body +
  `X-HubSpot-Request-Timestamp`, with the app's client secret) carrying `hs_task_status` changes of tasks.

Every signature is refused when its timestamp is more than five minutes from now (a replayed request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.channels.rep_tasks import webhook
from pqlflow.channels.rep_tasks.slack import DONE_ACTION

REPLAY_WINDOW = 300  # seconds, as Slack and HubSpot recommend
Outcome = Literal["completed", "dismissed"]
Via = Literal["hubspot", "slack", "webhook"]


class Unverified(Exception):
    """The request is not from the connector (HTTP 401); the message says why, never what was sent."""


class BadCallback(ValueError):
    """The request is signed but not a callback pqlflow reads (HTTP 400); the message names the field."""


@dataclass(frozen=True)
class Closure:
    """A task reported closed: by pqlflow's task id, or by HubSpot's id of it."""

    via: Via
    outcome: Outcome
    task_id: str | None = None
    hubspot_id: str | None = None
    occurred_at: float | None = None  # epoch seconds, when the connector says


class CallbackSecrets(BaseModel):
    """The callback secret (JSON in Secrets Manager): what each connector signs its callbacks with.
    A connector without its key is refused (401)."""

    model_config = ConfigDict(extra="forbid")

    class Webhook(BaseModel):
        model_config = ConfigDict(extra="forbid")
        secret: str = Field(min_length=16)

    class Slack(BaseModel):
        model_config = ConfigDict(extra="forbid")
        signing_secret: str = Field(min_length=1)

    class HubSpot(BaseModel):
        model_config = ConfigDict(extra="forbid")
        client_secret: str = Field(min_length=1)
        webhook_url: str | None = Field(
            default=None, pattern=r"^https://", description="the target URL set in HubSpot, when it differs "
            "from the one API Gateway sees (a custom domain)"
        )

    webhook: Webhook | None = None
    slack: Slack | None = None
    hubspot: HubSpot | None = None


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get(name.lower())
    if not value:
        raise Unverified(f"missing {name} header")
    return value


def _fresh(timestamp: str, now: float, *, millis: bool = False) -> None:
    try:
        seconds = int(timestamp) / (1000 if millis else 1)
    except ValueError:
        raise Unverified("timestamp header is not a number") from None
    if abs(now - seconds) > REPLAY_WINDOW:
        raise Unverified("stale timestamp: more than 5 minutes from now (replayed?)")


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    timestamp = _header(headers, webhook.TIMESTAMP_HEADER)
    signature = _header(headers, webhook.SIGNATURE_HEADER)
    _fresh(timestamp, now)
    if not webhook.verify(secret, timestamp, body, signature):
        raise Unverified(f"bad signature: {webhook.SIGNATURE_HEADER} does not match the body")


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack(signing_secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    timestamp = _header(headers, "X-Slack-Request-Timestamp")
    signature = _header(headers, "X-Slack-Signature")
    _fresh(timestamp, now)
    if not webhook.same(slack_signature(signing_secret, timestamp, body), signature):
        raise Unverified("bad signature: X-Slack-Signature does not match the body")


# The characters HubSpot decodes in the URI before signing it (its request-validation guide).
_HUBSPOT_DECODED = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
                    "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}


def hubspot_signature(client_secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    for encoded, char in _HUBSPOT_DECODED.items():
        uri = uri.replace(encoded, char).replace(encoded.lower(), char)
    source = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(client_secret.encode(), source, hashlib.sha256).digest()).decode()


def verify_hubspot(
    client_secret: str, headers: Mapping[str, str], method: str, uri: str, body: bytes, now: float
) -> None:
    timestamp = _header(headers, "X-HubSpot-Request-Timestamp")
    signature = _header(headers, "X-HubSpot-Signature-v3")
    _fresh(timestamp, now, millis=True)
    if not webhook.same(hubspot_signature(client_secret, method, uri, body, timestamp), signature):
        raise Unverified("bad signature: X-HubSpot-Signature-v3 does not match the request")


class _WebhookBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    task_id: str = Field(pattern=r"^rt_[0-9a-f]{24}$")
    outcome: Outcome = "completed"
    # epoch SECONDS: under 1e11 (the year 5138), so epoch milliseconds get a 400 that names the field
    closed_at: float | None = Field(default=None, ge=0, lt=1e11, allow_inf_nan=False,
                                    description="epoch seconds, when the receiver knows")


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    return f"field {'.'.join(str(p) for p in first['loc']) or '(body)'}: {first['msg']}"


def read_webhook(body: bytes) -> Closure:
    try:
        doc = _WebhookBody.model_validate_json(body)
    except ValidationError as exc:
        raise BadCallback(_first_problem(exc)) from None
    return Closure("webhook", doc.outcome, task_id=doc.task_id, occurred_at=doc.closed_at)


def read_slack(body: bytes) -> Closure | None:
    """The "Mark done" click in a Slack interactivity request; None for any other interaction."""
    form = parse_qs(body.decode("utf-8", "replace"))
    if "payload" not in form:
        raise BadCallback("field payload: missing (Slack sends the interaction as a form field `payload`)")
    try:
        payload = json.loads(form["payload"][0])
    except ValueError:
        raise BadCallback("field payload: not JSON") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    for action in payload.get("actions") or []:
        if isinstance(action, dict) and action.get("action_id") == DONE_ACTION and isinstance(action.get("value"), str):
            ts = action.get("action_ts")
            try:
                at = float(ts) if ts else None
            except ValueError:
                at = None
            return Closure("slack", "completed", task_id=action["value"], occurred_at=at)
    return None


def read_hubspot(body: bytes) -> list[Closure]:
    """The task completions in a HubSpot webhook batch (a JSON array of events); other events are ignored."""
    try:
        events = json.loads(body)
    except ValueError:
        raise BadCallback("body: not JSON (HubSpot sends a JSON array of events)") from None
    if not isinstance(events, list):
        raise BadCallback("body: not a JSON array of events")
    out: list[Closure] = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadCallback(f"event {i}: not an object")
        kind = str(event.get("subscriptionType") or "")
        if not kind.endswith("propertyChange") or event.get("propertyName") != "hs_task_status":
            continue
        if event.get("propertyValue") != "COMPLETED":
            continue
        object_id: Any = event.get("objectId")
        if not isinstance(object_id, int | str) or isinstance(object_id, bool) or not str(object_id).isdigit():
            raise BadCallback(f"event {i}: field objectId: not a HubSpot object id")
        occurred = event.get("occurredAt")
        at = occurred / 1000 if isinstance(occurred, int | float) and not isinstance(occurred, bool) else None
        out.append(Closure("hubspot", "completed", hubspot_id=str(object_id), occurred_at=at))
    return out
