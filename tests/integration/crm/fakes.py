"""A local fake of HubSpot's CRM v3 company API (property groups, properties, company search and PATCH)
that checks requests the way HubSpot does, and a webhook receiver that verifies pqlflow's signature
with the documented recipe and honours the Idempotency-Key."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pqlflow.channels.crm.webhook import SIGNATURE_HEADER, SignatureError, verify
from pqlflow.kernel import clock

from tests.support.http_fakes import TOKEN, Reply, Seen

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"  # noqa: S105 - a test credential for the local receiver
TYPES = {("string", "text"), ("string", "textarea"), ("number", "number"), ("enumeration", "select"),
         ("datetime", "date")}


@dataclass
class FakeHubSpotCrm:
    """HubSpot CRM v3 for companies. `script` holds replies given (in order) before the real answer to
    requests whose method is `script_method`; the first `slow` requests are answered `delay` seconds late
    (a timeout)."""

    companies: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: list[Reply] = field(default_factory=list)
    script_method: str = "PATCH"
    slow: int = 0
    delay: float = 0.0
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    creates: int = 0  # POSTs that asked to create a group or property

    def __call__(self, req: Seen) -> Reply:
        if self.slow > 0:
            self.slow -= 1
            time.sleep(self.delay)
        if self.script and req.method == self.script_method:
            return self.script.pop(0)
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"status": "error", "category": "INVALID_AUTHENTICATION"}
        if req.body and req.headers.get("content-type") != "application/json":
            return 415, {"status": "error"}
        route = (req.method, req.path)
        if route == ("GET", "/crm/v3/properties/companies/groups"):
            return 200, {"results": list(self.groups.values())}
        if route == ("POST", "/crm/v3/properties/companies/groups"):
            return self._create_group(req.json())
        if route == ("GET", "/crm/v3/properties/companies"):
            return 200, {"results": list(self.properties.values())}
        if route == ("POST", "/crm/v3/properties/companies"):
            return self._create_property(req.json())
        if route == ("POST", "/crm/v3/objects/companies/search"):
            return self._search(req.json())
        if req.method == "PATCH" and req.path.startswith("/crm/v3/objects/companies/"):
            return self._patch(req.path.rsplit("/", 1)[1], req.json())
        return 404, {"status": "error", "message": f"no route {req.method} {req.path}"}

    def _create_group(self, body: dict[str, Any]) -> Reply:
        self.creates += 1
        if not body.get("name") or not body.get("label"):
            return 400, {"status": "error", "category": "VALIDATION_ERROR"}
        if body["name"] in self.groups:
            return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS"}
        self.groups[body["name"]] = body
        return 201, body

    def _create_property(self, body: dict[str, Any]) -> Reply:
        self.creates += 1
        if (body.get("type"), body.get("fieldType")) not in TYPES or not body.get("label"):
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "bad type"}
        if body.get("groupName") not in self.groups:
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "no such group"}
        if body["type"] == "enumeration" and not body.get("options"):
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "options required"}
        if body["name"] in self.properties:
            return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS"}
        self.properties[body["name"]] = body
        return 201, body

    def _search(self, body: dict[str, Any]) -> Reply:
        (flt,) = body["filterGroups"][0]["filters"]
        if flt["operator"] != "EQ":
            return 400, {"status": "error"}
        value = str(flt["value"]).lower()  # HubSpot's EQ on text ignores case
        hits = [
            {"id": cid, "properties": props}
            for cid, props in self.companies.items()
            if str(props.get(flt["propertyName"], "")).lower() == value
        ]
        return 200, {"total": len(hits), "results": hits[: body.get("limit", 10)]}

    def _patch(self, company_id: str, body: dict[str, Any]) -> Reply:
        if company_id not in self.companies:
            return 404, {"status": "error", "category": "OBJECT_NOT_FOUND"}
        props = body.get("properties") or {}
        unknown = [p for p in props if p not in self.properties and p != "domain"]
        if unknown:
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "property does not exist"}
        for name, value in props.items():
            spec = self.properties.get(name, {})
            allowed = {o["value"] for o in spec.get("options", [])}
            if spec.get("type") == "enumeration" and value not in allowed:
                return 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "bad option"}
            if spec.get("type") in {"number", "datetime"} and value != "":
                float(value)
        self.patches.append((company_id, props))
        self.companies[company_id].update(props)
        return 200, {"id": company_id, "properties": self.companies[company_id]}


@dataclass
class WebhookReceiver:
    """A receiver written from docs/crm.md: verify the signature on the raw body, then keep each
    Idempotency-Key once. `script` replies come first (failures to inject)."""

    secret: str = WEBHOOK_SECRET
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: int = 0
    rejected: list[str] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)

    def __call__(self, req: Seen) -> Reply:
        if self.script:
            return self.script.pop(0)
        try:
            # The test world's clock (simulated); a real receiver leaves `now` to the wall clock.
            verify(self.secret, req.headers.get(SIGNATURE_HEADER.lower()), req.body, now=clock.now())
        except SignatureError as exc:
            self.rejected.append(str(exc))
            return 401, {"error": str(exc)}
        key = req.headers.get("idempotency-key")
        if not key:
            return 400, {"error": "Idempotency-Key required"}
        self.deliveries += 1
        self.received.setdefault(key, req.json())
        return 200, {"ok": True}
