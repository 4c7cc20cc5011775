"""The HubSpot connector: a CRM v3 task on the account's company, found again by its idempotency key
rather than created twice.

Which company a task is associated with is never read from event data: account traits are set by the
product's own users, and a `hubspot_company_id` trait would let anyone attach tasks (and what they say
about the account) to another customer's company record. The company comes only from what the CRM's
side controls, in this order:

1. `companies` in the connector secret: account id → HubSpot company id, written by the operator;
2. `company_property`: a company property your CRM admins or CRM sync fill with pqlflow's account id
   (e.g. `pqlflow_account_id`); the connector searches companies for it (CRM search API) and uses the
   company only when exactly one carries the account id.

Otherwise the task is created without a company (the owner still gets it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.rep_tasks.http import DeliveryError, Http
from pqlflow.channels.rep_tasks.task import RepTask

TASK_TO_COMPANY = 192  # HubSpot-defined association type: task → company


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
    companies: dict[str, str] = field(default_factory=dict)
    company_property: str | None = None
    portal_id: str | None = None  # for the company record's link in the task body
    app_url: str = "https://app.hubspot.com"

    def record_url(self, company_id: str) -> str | None:
        """The company record in HubSpot's app (where CRM sync writes the PQL status and the explanation
        link), when the portal id is configured."""
        return f"{self.app_url}/contacts/{self.portal_id}/record/0-2/{company_id}" if self.portal_id else None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    @property
    def companies_path(self) -> str:
        return self.tasks_path.rsplit("/", 1)[0] + "/companies"

    def company_for(self, account_id: str) -> str | None:
        """The HubSpot company of the account, from the trusted mapping only (see the module docstring)."""
        if account_id in self.companies:
            return self.companies[account_id]
        if not self.company_property:
            return None
        query = {
            "filterGroups": [
                {"filters": [{"propertyName": self.company_property, "operator": "EQ", "value": account_id}]}
            ],
            "properties": [self.company_property],
            "limit": 2,
        }
        resp, _ = self.http.request(
            "POST", f"{self.base_url}{self.companies_path}/search", body=query, headers=self._headers(), attempts=1
        )
        results = (resp.json() or {}).get("results") or []
        # Exactly one, and really this account (HubSpot's EQ on text ignores case): else no company.
        exact = [r for r in results if str((r.get("properties") or {}).get(self.company_property)) == account_id]
        return str(exact[0]["id"]) if len(results) == 1 and len(exact) == 1 else None

    def payload(self, task: RepTask, company_id: str | None = None) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "hs_timestamp": _epoch_ms(task.due_at),
            "hs_task_subject": task.title,
            "hs_task_body": task.body + (f"\n\nCompany record: {url}" if company_id and
                                         (url := self.record_url(company_id)) else ""),
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": task.priority,
            "hs_task_type": self.task_type,
        }
        if task.hubspot_owner_id:
            properties["hubspot_owner_id"] = task.hubspot_owner_id
        if self.idempotency_property:
            properties[self.idempotency_property] = task.idempotency_key
        body: dict[str, Any] = {"properties": properties}
        if company_id:
            body["associations"] = [
                {
                    "to": {"id": company_id},
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
            body=self.payload(task, self.company_for(task.account_id)),
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


class HubSpotConfig(BaseModel):
    """The `hubspot` object of the connector secret."""

    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1)
    base_url: str = "https://api.hubapi.com"
    idempotency_property: str | None = "pqlflow_task_id"
    task_type: str = "TODO"
    tasks_path: str = Field(default="/crm/v3/objects/tasks", pattern=r"^/crm/")
    companies: dict[str, Annotated[str, Field(pattern=r"^[0-9]+$")]] = Field(
        default_factory=dict, description="account id → HubSpot company id, set by the operator"
    )
    company_property: str | None = Field(
        default=None, min_length=1, description="company property holding pqlflow's account id"
    )
    portal_id: str | None = Field(
        default=None, pattern=r"^[0-9]+$", description="the HubSpot account (hub) id: links the task to the record"
    )


def connect(cfg: HubSpotConfig, http: Http) -> HubSpotConnector:
    return HubSpotConnector(
        cfg.token,
        cfg.base_url.rstrip("/"),
        cfg.idempotency_property,
        cfg.task_type,
        http,
        tasks_path=cfg.tasks_path,
        companies=dict(cfg.companies),
        company_property=cfg.company_property,
        portal_id=cfg.portal_id,
    )
