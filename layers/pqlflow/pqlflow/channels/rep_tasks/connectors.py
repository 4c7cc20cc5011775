"""Deliver rep tasks to where reps work: HubSpot (CRM v3 task on the company), a Slack incoming webhook,
or a generic signed JSON webhook. Stdlib HTTP with timeouts; transient failures retry with exponential
backoff and full jitter (the sleep is injectable); every call carries the task's idempotency key."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.channels.rep_tasks.task import RepTask
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError

USER_AGENT = "pqlflow-connectors/1"
TASK_TO_COMPANY = 192  # HubSpot-defined association type: task → company


class DeliveryError(Exception):
    """A connector could not deliver. `transient` failures are worth retrying later."""

    def __init__(self, message: str, *, transient: bool, attempts: int = 1, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.attempts = attempts
        self.retry_after = retry_after


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        return self.rand() * min(self.cap, self.base * (2**retry))


@dataclass
class Http:
    """JSON over urllib with a timeout, retrying connection errors, timeouts, 408, 429 and 5xx."""

    timeout: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str],
        attempts: int | None = None,
    ) -> tuple[Response, int]:
        """Send, retrying transient failures up to `attempts` (default: the backoff's) times."""
        tries = attempts or self.backoff.attempts
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        last = "no attempt made"
        retry_after: float | None = None
        for attempt in range(1, tries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(url, data=data, headers=hdrs, method=method)  # noqa: S310
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    return Response(resp.status, dict(resp.headers), resp.read()), attempt
            except urllib.error.HTTPError as exc:
                exc.read()
                status = exc.code
                # Only the status: error bodies may echo the values sent, which can be personal data.
                last = f"HTTP {status}"
                if status not in (408, 429) and status < 500:
                    raise DeliveryError(f"rejected: {last}", transient=False, attempts=attempt) from None
                retry_after = _retry_after(exc.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, bad replies
                reason = getattr(exc, "reason", exc)
                last = f"connection failed: {type(reason).__name__}"
            if attempt < tries:
                self.backoff.sleep(self.backoff.delay(attempt - 1, retry_after))
        raise DeliveryError(
            f"gave up after {tries} attempt(s): {last}", transient=True, attempts=tries, retry_after=retry_after
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class Connector(Protocol):
    name: str

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        """Deliver the task once (idempotent on task.idempotency_key); returns (reference, attempts)."""
        ...


# ---- HubSpot ------------------------------------------------------------------------------------


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class HubSpotConnector:
    """CRM v3 tasks: POST /crm/v3/objects/tasks, associated to the account's company.

    HubSpot has no idempotency header, so when `idempotency_property` is set (a custom task property
    created once in the portal) the connector first searches for a task carrying the key and creates
    one only when none exists; pqlflow also records the HubSpot id on its own task item."""

    token: str
    base_url: str = "https://api.hubapi.com"
    idempotency_property: str | None = "pqlflow_task_id"
    task_type: str = "TODO"
    http: Http = field(default_factory=Http)
    name: str = "hubspot"
    # HubSpot now also serves date-versioned paths (e.g. /crm/objects/2026-03/tasks) with the same body.
    tasks_path: str = "/crm/v3/objects/tasks"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def payload(self, task: RepTask) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "hs_timestamp": _epoch_ms(task.due_at),
            "hs_task_subject": task.title,
            "hs_task_body": task.body,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": task.priority,
            "hs_task_type": self.task_type,
        }
        if task.hubspot_owner_id:
            properties["hubspot_owner_id"] = task.hubspot_owner_id
        if self.idempotency_property:
            properties[self.idempotency_property] = task.idempotency_key
        body: dict[str, Any] = {"properties": properties}
        if task.crm_company_id:
            body["associations"] = [
                {
                    "to": {"id": task.crm_company_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_COMPANY}],
                }
            ]
        return body

    def find_existing(self, task: RepTask) -> str | None:
        assert self.idempotency_property
        query = {
            "filterGroups": [
                {
                    "filters": [
                        {
                            "propertyName": self.idempotency_property,
                            "operator": "EQ",
                            "value": task.idempotency_key,
                        }
                    ]
                }
            ],
            "properties": [self.idempotency_property],
            "limit": 1,
        }
        resp, _ = self.http.request(
            "POST",
            f"{self.base_url}{self.tasks_path}/search",
            body=query,
            headers=self._headers(),
            attempts=1,
        )
        results = (resp.json() or {}).get("results") or []
        return str(results[0]["id"]) if results else None

    def _create(self, task: RepTask, attempts: int | None) -> tuple[str | None, int]:
        resp, used = self.http.request(
            "POST",
            f"{self.base_url}{self.tasks_path}",
            body=self.payload(task),
            headers=self._headers(),
            attempts=attempts,
        )
        created = resp.json() or {}
        return (str(created["id"]) if "id" in created else None), used

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        if not self.idempotency_property:
            return self._create(task, None)
        # Each round searches before it creates: when a create's answer was lost (timeout, 502),
        # the next round finds the task instead of making a second one. HubSpot's search index
        # lags writes by seconds, which the backoff between rounds leaves room for.
        backoff = self.http.backoff
        for round_ in range(1, backoff.attempts + 1):
            try:
                existing = self.find_existing(task)
                return (existing or self._create(task, 1)[0]), round_
            except DeliveryError as exc:
                if not exc.transient or round_ == backoff.attempts:
                    raise DeliveryError(
                        str(exc), transient=exc.transient, attempts=round_, retry_after=exc.retry_after
                    ) from None
                backoff.sleep(backoff.delay(round_ - 1, exc.retry_after))
        raise AssertionError("unreachable")


# ---- Slack --------------------------------------------------------------------------------------


def _mrkdwn(text: str, limit: int = 2900) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


@dataclass
class SlackConnector:
    """A Slack incoming webhook (Block Kit message). Slack has no idempotency key: pqlflow's stored
    delivery record is what keeps a redelivered task from posting twice."""

    webhook_url: str
    http: Http = field(default_factory=Http)
    name: str = "slack"

    def payload(self, task: RepTask) -> dict[str, Any]:
        owner = f"<@{task.slack_user_id}>" if task.slack_user_id else f"`{task.owner}`"
        why = "\n".join(f"• {_mrkdwn(r.text, 300)}" for r in task.reasons) or "• qualified on product usage"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": task.title[:150], "emoji": False}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why now*\n{why}"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Owner*\n{owner}"},
                    {"type": "mrkdwn", "text": f"*Due*\n{task.due_at}"},
                    {"type": "mrkdwn", "text": f"*Priority*\n{task.priority}"},
                    {"type": "mrkdwn", "text": f"*Score*\n{task.score if task.score is not None else '—'}"},
                ],
            },
        ]
        if task.usage:
            usage = "\n".join(f"• {_mrkdwn(u.text, 200)}" for u in task.usage)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Usage against limits*\n{usage}"}})
        points = "\n".join(f"• {_mrkdwn(p, 400)}" for p in task.talking_points)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Talking points*\n{points}"}})
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"account `{task.account_id}` · task `{task.task_id}`"}],
            }
        )
        return {"text": _mrkdwn(task.title), "blocks": blocks}

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        _, attempts = self.http.request("POST", self.webhook_url, body=self.payload(task), headers={})
        return None, attempts


# ---- generic webhook ----------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Pqlflow-Signature"
TIMESTAMP_HEADER = "X-Pqlflow-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`; receivers recompute and compare."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


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


# ---- configuration ------------------------------------------------------------------------------


class _HubSpotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1)
    base_url: str = "https://api.hubapi.com"
    idempotency_property: str | None = "pqlflow_task_id"
    task_type: str = "TODO"
    tasks_path: str = Field(default="/crm/v3/objects/tasks", pattern=r"^/crm/")


class _SlackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    webhook_url: str = Field(pattern=r"^https?://")


class _WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16)


_CONFIGS: dict[str, type[BaseModel]] = {
    "hubspot": _HubSpotConfig,
    "slack": _SlackConfig,
    "webhook": _WebhookConfig,
}


def build_connectors(names: list[str], secret: Mapping[str, Any], http: Http | None = None) -> list[Connector]:
    """Connectors named in `names`, configured from the secret document
    `{"hubspot": {"token": ...}, "slack": {"webhook_url": ...}, "webhook": {"url": ..., "secret": ...}}`.
    Errors name the connector and field, never the value."""
    http = http or Http()
    out: list[Connector] = []
    for name in names:
        if name not in _CONFIGS:
            raise UsageError(f"CONNECTORS: unknown connector {name!r} (known: {', '.join(sorted(_CONFIGS))})")
        raw = secret.get(name)
        if not isinstance(raw, Mapping):
            raise UsageError(f"connector secret: missing object {name!r}")
        try:
            cfg = _CONFIGS[name].model_validate(dict(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"connector secret: field {name}.{where}: {first['msg']}") from None
        if isinstance(cfg, _HubSpotConfig):
            out.append(
                HubSpotConnector(
                    cfg.token,
                    cfg.base_url.rstrip("/"),
                    cfg.idempotency_property,
                    cfg.task_type,
                    http,
                    tasks_path=cfg.tasks_path,
                )
            )
        elif isinstance(cfg, _SlackConfig):
            out.append(SlackConnector(cfg.webhook_url, http))
        elif isinstance(cfg, _WebhookConfig):
            out.append(WebhookConnector(cfg.url, cfg.secret, http))
    return out


def parse_names(value: str) -> list[str]:
    """`"hubspot, slack"` → `["hubspot", "slack"]` (order kept, duplicates dropped)."""
    names: list[str] = []
    for part in value.split(","):
        name = part.strip().lower()
        if name and name not in names:
            names.append(name)
    return names
