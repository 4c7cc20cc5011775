"""The HubSpot CRM target: the transition's properties PATCHed onto the account's company
(PATCH /crm/v3/objects/companies/{id}), and `setup`, which creates the `pqlflow` property group and its
properties once (POST /crm/v3/properties/companies/groups and /crm/v3/properties/companies).

The company is found exactly as the rep-task connector finds it (`rep_tasks.hubspot`), from what the
CRM's side controls and never from event data: the secret's `companies` map, else the `company_property`
search, else the secret's `crm.domains` map (account id → domain, written by the operator), searched on
HubSpot's `domain` property. No company means `CompanyNotFound`: recorded as skipped, not retried."""

from __future__ import annotations

from dataclasses import dataclass, field

from pqlflow.channels.crm.record import GROUP, PROPERTIES, CrmRecord, company_properties
from pqlflow.channels.rep_tasks.http import DeliveryError, Http
from pqlflow.channels.rep_tasks.hubspot import HubSpotConnector

COMPANIES = "/crm/v3/objects/companies"
PROPERTIES_PATH = "/crm/v3/properties/companies"


class CompanyNotFound(Exception):
    """No trusted mapping names a company for the account: nothing to write, and retrying will not help."""


@dataclass
class HubSpotCompanies:
    """Writes a `CrmRecord` onto the account's HubSpot company."""

    token: str
    base_url: str = "https://api.hubapi.com"
    companies: dict[str, str] = field(default_factory=dict)
    company_property: str | None = None
    domains: dict[str, str] = field(default_factory=dict)
    http: Http = field(default_factory=Http)
    name: str = "hubspot"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def company_for(self, account_id: str) -> str | None:
        """The account's company: the rep-task connector's trusted mapping, then the operator's domain map."""
        mapped = HubSpotConnector(
            self.token, self.base_url, http=self.http, companies=self.companies,
            company_property=self.company_property,
        ).company_for(account_id)
        if mapped or account_id not in self.domains:
            return mapped
        domain = self.domains[account_id].lower()
        query = {
            "filterGroups": [{"filters": [{"propertyName": "domain", "operator": "EQ", "value": domain}]}],
            "properties": ["domain"],
            "limit": 2,
        }
        resp, _ = self.http.request(
            "POST", f"{self.base_url}{COMPANIES}/search", body=query, headers=self._headers(), attempts=1
        )
        results = (resp.json() or {}).get("results") or []
        exact = [r for r in results if str((r.get("properties") or {}).get("domain", "")).lower() == domain]
        return str(exact[0]["id"]) if len(results) == 1 and len(exact) == 1 else None

    def write(self, record: CrmRecord, explanation_url: str | None) -> tuple[str, int]:
        """PATCH the company; returns (company id, attempts). Raises `CompanyNotFound` or `DeliveryError`."""
        company_id = self.company_for(record.account_id)
        if company_id is None:
            raise CompanyNotFound("no HubSpot company is mapped to the account (companies, company_property or "
                                  "crm.domains in the connector secret)")
        _, attempts = self.http.request(
            "PATCH", f"{self.base_url}{COMPANIES}/{company_id}",
            body={"properties": company_properties(record, explanation_url)}, headers=self._headers(),
        )
        return company_id, attempts


@dataclass(frozen=True)
class SetupResult:
    group_created: bool
    created: tuple[str, ...]
    existing: tuple[str, ...]


def _exists(exc: DeliveryError) -> bool:
    # HubSpot answers 409 Conflict when the group or property already exists (a concurrent setup).
    return str(exc).endswith("HTTP 409")


def setup(target: HubSpotCompanies) -> SetupResult:
    """Create the `pqlflow` group and the properties that are missing; running it again creates nothing."""
    base, headers, http = target.base_url, target._headers(), target.http
    groups, _ = http.request("GET", f"{base}{PROPERTIES_PATH}/groups", headers=headers)
    group_created = False
    if GROUP not in {g.get("name") for g in (groups.json() or {}).get("results") or []}:
        try:
            http.request("POST", f"{base}{PROPERTIES_PATH}/groups", headers=headers,
                         body={"name": GROUP, "label": "pqlflow (product-qualified leads)", "displayOrder": -1})
            group_created = True
        except DeliveryError as exc:
            if not _exists(exc):
                raise
    listed, _ = http.request("GET", f"{base}{PROPERTIES_PATH}", headers=headers)
    have = {p.get("name") for p in (listed.json() or {}).get("results") or []}
    created: list[str] = []
    existing: list[str] = []
    for order, prop in enumerate(PROPERTIES):
        if prop.name in have:
            existing.append(prop.name)
            continue
        try:
            http.request("POST", f"{base}{PROPERTIES_PATH}", headers=headers, body=prop.definition(order))
            created.append(prop.name)
        except DeliveryError as exc:
            if not _exists(exc):
                raise
            existing.append(prop.name)
    return SetupResult(group_created, tuple(created), tuple(existing))
