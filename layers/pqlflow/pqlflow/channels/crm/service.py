"""The crm_sync function's work: each SQS record is one EventBridge event (`PQL Qualified`,
`PQL Disqualified`, `Account Converted`), synced to every configured target exactly once.

Per target: a transition already written, skipped or superseded is not sent again (a redelivery); the
transition claims the record's state, and loses to a newer one already there (an older event arriving
late is recorded `superseded`, the record keeps the newer status); then the write. An account with no
mapped company is recorded `skipped` with the reason. A failed write is recorded `failed` and raised, so
SQS redelivers the message (after the visibility timeout) and, after `maxReceiveCount` tries, keeps it
in the dead-letter queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pqlflow.channels.crm.hubspot import CompanyNotFound, HubSpotCompanies
from pqlflow.channels.crm.record import CrmEventInvalid, CrmRecord, explanation_link, from_event
from pqlflow.channels.crm.store import FINAL, CrmSyncStore, SyncRecord
from pqlflow.channels.crm.webhook import CrmWebhook
from pqlflow.channels.rep_tasks.connectors import parse_names
from pqlflow.channels.rep_tasks.http import Backoff, DeliveryError, Http
from pqlflow.channels.rep_tasks.hubspot import HubSpotConfig
from pqlflow.channels.rep_tasks.service import connector_secret
from pqlflow.channels.rep_tasks.webhook import WebhookConfig
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.observability import log_id, logger, metrics

TARGETS = ("hubspot", "webhook")
MAX_NEWER_REWRITES = 5  # newer claims to follow after a write (each one means a transition arrived meanwhile)


class CrmSyncSettings(BaseModel):
    """The crm_sync function's environment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    CRM_TARGETS: str = Field(default="", description="'', 'hubspot', 'webhook' or 'hubspot,webhook'")
    CONNECTOR_SECRET_ARN: str = ""
    # Two targets, each up to 3 tries of 4 s plus a company search, stay under the 60 s function timeout.
    CRM_TIMEOUT_SECONDS: float = Field(default=4.0, gt=0, le=30)
    CRM_ATTEMPTS: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _known_targets(self) -> CrmSyncSettings:
        unknown = [n for n in parse_names(self.CRM_TARGETS) if n not in TARGETS]
        if unknown:
            raise ValueError(f"CRM_TARGETS: unknown target {unknown[0]!r} (known: {', '.join(TARGETS)})")
        if parse_names(self.CRM_TARGETS) and not self.CONNECTOR_SECRET_ARN:
            raise ValueError("CONNECTOR_SECRET_ARN is required when CRM_TARGETS is set")
        return self


class CrmConfig(BaseModel):
    """The optional `crm` object of the connector secret."""

    model_config = ConfigDict(extra="forbid")
    domains: dict[str, str] = Field(default_factory=dict, description="account id → company domain (trusted)")
    explanation_url: str | None = Field(
        default=None, pattern=r"^https://", description="with {account_id} and {transition_id} placeholders"
    )
    webhook: WebhookConfig | None = Field(default=None, description="else the rep tasks' `webhook` object")


class Target(Protocol):
    name: str

    def write(self, record: CrmRecord, explanation_url: str | None) -> tuple[str | None, int]:
        """Write the record once (idempotent on its transition id); returns (reference, attempts)."""
        ...


def _validated(model: type[BaseModel], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise UsageError(f"connector secret: missing object {where!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"connector secret: field {where}.{field}: {first['msg']}") from None


def build_targets(names: list[str], secret: dict[str, Any], http: Http) -> tuple[list[Target], CrmConfig]:
    """The targets named, configured from the connector secret; errors name the field, never the value."""
    crm: CrmConfig = _validated(CrmConfig, secret.get("crm", {}), "crm")
    targets: list[Target] = []
    for name in names:
        if name == "hubspot":
            hs: HubSpotConfig = _validated(HubSpotConfig, secret.get("hubspot"), "hubspot")
            targets.append(HubSpotCompanies(
                hs.token, hs.base_url.rstrip("/"), dict(hs.companies), hs.company_property,
                dict(crm.domains), http,
            ))
        elif name == "webhook":
            wh: WebhookConfig = crm.webhook or _validated(WebhookConfig, secret.get("webhook"), "webhook")
            targets.append(CrmWebhook(wh.url, wh.secret, http))
        else:
            raise UsageError(f"CRM_TARGETS: unknown target {name!r} (known: {', '.join(TARGETS)})")
    return targets, crm


@dataclass
class CrmSync:
    store: CrmSyncStore | None
    targets: list[Target]
    explanation_url: str | None = None

    @classmethod
    def from_settings(cls, s: CrmSyncSettings) -> CrmSync:
        names = parse_names(s.CRM_TARGETS)
        if not names:
            return cls(None, [])
        http = Http(timeout=s.CRM_TIMEOUT_SECONDS, backoff=Backoff(attempts=s.CRM_ATTEMPTS))
        targets, crm = build_targets(names, connector_secret(s.CONNECTOR_SECRET_ARN), http)
        return cls(CrmSyncStore(s.TABLE_NAME), targets, crm.explanation_url)

    def sync_event(self, event: dict[str, Any]) -> dict[str, str]:
        """One EventBridge event → {target: status}. Raises `CrmEventInvalid` or `CrmSyncFailed`."""
        if not self.targets:
            return {}  # no targets configured (the default, and `pqlflow dev`): nothing to do
        assert self.store is not None
        record = from_event(str(event.get("detail-type")), event.get("detail"))
        link = explanation_link(self.explanation_url, record)
        statuses: dict[str, str] = {}
        failed: list[str] = []
        for target in self.targets:
            status = self._sync(record, target, link)
            statuses[target.name] = status
            if status == "failed":
                failed.append(target.name)
        if failed:
            raise CrmSyncFailed(f"transition {record.transition_id}: {', '.join(failed)} failed; kept for retry")
        return statuses

    def _sync(self, record: CrmRecord, target: Target, link: str | None) -> str:
        assert self.store is not None
        acct, tid, name = record.account_id, record.transition_id, target.name
        log = {"account_id": log_id(acct), "transition_id": tid, "target": name, "status": record.status}
        done = self.store.get(acct, name, tid)
        if done is not None and done.status in FINAL:
            metrics.add_metric(name="CrmSyncRedeliveries", unit=MetricUnit.Count, value=1)
            return done.status
        if not self.store.claim(acct, name, record.sequence, tid, json.dumps(record.to_json())):
            newer = self.store.claimed(acct, name).transition_id
            result = SyncRecord("superseded", f"a newer transition ({newer}) is already on the record")
            logger.info("crm sync superseded", extra=log)
        else:
            try:
                ref, attempts = target.write(record, link)
                result = SyncRecord("written", ref=ref, attempts=attempts)
                logger.info("crm sync written", extra=log | {"attempts": attempts})
                self._newest_last(record, target, log)
            except CompanyNotFound as exc:
                result = SyncRecord("skipped", str(exc))
                logger.info("crm sync skipped", extra=log | {"reason": str(exc)})
            except DeliveryError as exc:
                result = SyncRecord("failed", str(exc), attempts=exc.attempts)
                logger.warning("crm sync failed", extra=log | {"error": str(exc), "transient": exc.transient})
        self.store.finish(acct, name, tid, result)
        metrics.add_metric(name=f"CrmSync_{result.status}", unit=MetricUnit.Count, value=1)
        return result.status

    def _newest_last(self, written: CrmRecord, target: Target, log: dict[str, Any]) -> None:
        """After a write, make sure the newest claimed transition's record is the last one written.

        Two transitions of one account handled at once (two invocations) both claim before either writes;
        the older one's write can then land after the newer one's. So each, after writing, reads the newest
        claim: if a newer one was claimed meanwhile, it writes that one again (its claim keeps its record;
        the same transition id, so the webhook's Idempotency-Key and HubSpot's PATCH make it harmless).
        A newer claim made after this read is written by its own invocation, after this write."""
        assert self.store is not None
        sequence = written.sequence
        for _ in range(MAX_NEWER_REWRITES):
            claim = self.store.claimed(written.account_id, target.name)
            if claim.sequence <= sequence or claim.record is None:
                return
            newer = CrmRecord.from_json(json.loads(claim.record))
            target.write(newer, explanation_link(self.explanation_url, newer))
            sequence = newer.sequence
            logger.info("crm sync rewrote the newer transition", extra=log | {"newer": newer.transition_id})
            metrics.add_metric(name="CrmSyncNewerRewritten", unit=MetricUnit.Count, value=1)

    def record_handler(self, body: str) -> dict[str, str]:
        """An SQS message body (the EventBridge event, as the rule's queue target delivers it)."""
        try:
            event = json.loads(body)
        except json.JSONDecodeError as exc:
            raise CrmEventInvalid(f"message body is not JSON (line {exc.lineno} column {exc.colno})") from None
        if not isinstance(event, dict):
            raise CrmEventInvalid("message body: expected an EventBridge event object")
        return self.sync_event(event)


class CrmSyncFailed(Exception):
    """A target failed after its retries; the message stays on the queue for SQS to redeliver."""
