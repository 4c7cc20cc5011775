"""What CRM sync writes for one transition: `PQL Qualified`, `PQL Disqualified` or `Account Converted` as a
`CrmRecord` (status, score, top reasons in words, definition version, qualified-at, touch level, the link to
the explanation), the order of transitions on one account, and the HubSpot company properties that hold it.
Pure: no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import ValidationError

from pqlflow.channels.rep_tasks.task import ranked
from pqlflow.contracts.emitted import AccountConverted, DefinitionRef, PqlDisqualified, PqlQualified, Reason

Status = Literal["qualified", "disqualified", "converted"]
# Within one millisecond a conversion outranks a disqualification, which outranks a qualification.
_RANK: dict[Status, int] = {"qualified": 0, "disqualified": 1, "converted": 2}
TOP_REASONS = 3
GROUP = "pqlflow"


class CrmEventInvalid(ValueError):
    """The event is not one CRM sync reads; the message names the field, never its value."""


@dataclass(frozen=True)
class CrmRecord:
    account_id: str
    transition_id: str
    status: Status
    changed_at: str  # ISO 8601: the event time of the transition
    sequence: int  # orders transitions of one account: epoch ms * 10 + status rank
    definition: str | None = None
    definition_version: int | None = None
    qualified_at: str | None = None
    score: float | None = None
    touch: str | None = None
    reasons: tuple[str, ...] = ()

    def to_json(self, explanation_url: str | None = None) -> dict[str, Any]:
        """The webhook's `record`: plain names, ISO times."""
        return {
            "account_id": self.account_id,
            "transition_id": self.transition_id,
            "status": self.status,
            "changed_at": self.changed_at,
            "sequence": self.sequence,
            "definition": self.definition,
            "definition_version": self.definition_version,
            "qualified_at": self.qualified_at,
            "score": self.score,
            "touch": self.touch,
            "reasons": list(self.reasons),
            "explanation_url": explanation_url,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CrmRecord:
        """The record `to_json` wrote (as a claim keeps it)."""
        fields = {k: v for k, v in doc.items() if k != "explanation_url"}
        return cls(**{**fields, "reasons": tuple(fields.get("reasons") or ())})


def epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _sequence(iso: str, status: Status) -> int:
    return epoch_ms(iso) * 10 + _RANK[status]


def reason_lines(reasons: list[Reason], limit: int = TOP_REASONS) -> tuple[str, ...]:
    """The top reasons in the order a rep hears them: the reason's words, then what to say when the
    definition's author wrote it."""
    lines = []
    for r in ranked(reasons)[:limit]:
        lines.append(r.text + (f" (say: {r.talking_point})" if r.talking_point else ""))
    return tuple(lines)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'detail'}: {first['msg']}"


def _record(
    status: Status, account_id: str, transition_id: str, at: str, definition: DefinitionRef | None, **rest: Any
) -> CrmRecord:
    return CrmRecord(
        account_id=account_id, transition_id=transition_id, status=status, changed_at=at,
        sequence=_sequence(at, status), definition=definition.name if definition else None,
        definition_version=definition.version if definition else None, **rest,
    )


def from_event(detail_type: str, detail: Any) -> CrmRecord:
    """The record for one emitted event; `CrmEventInvalid` names the bad field."""
    try:
        if detail_type == PqlQualified.DETAIL_TYPE:
            q = PqlQualified.model_validate(detail)
            return _record("qualified", q.account_id, q.transition_id, q.qualified_at, q.definition,
                           qualified_at=q.qualified_at, score=q.score, touch=q.touch, reasons=reason_lines(q.reasons))
        if detail_type == PqlDisqualified.DETAIL_TYPE:
            d = PqlDisqualified.model_validate(detail)
            return _record("disqualified", d.account_id, d.transition_id, d.disqualified_at, d.definition,
                           reasons=reason_lines(d.reasons))
        if detail_type == AccountConverted.DETAIL_TYPE:
            c = AccountConverted.model_validate(detail)
            # A conversion carries no transition id: one is derived from what identifies it.
            digest = hashlib.sha256(f"{c.account_id}\x00{c.converted_at}".encode()).hexdigest()[:24]
            return _record("converted", c.account_id, f"conv_{digest}", c.converted_at, c.definition,
                           qualified_at=c.qualified_at)
    except ValidationError as exc:
        raise CrmEventInvalid(f"{detail_type}: field {_first_error(exc)}") from None
    except ValueError:
        raise CrmEventInvalid(f"{detail_type}: a time field is not ISO 8601") from None
    raise CrmEventInvalid(f"detail-type {detail_type!r} is not a PQL transition")


def explanation_link(template: str | None, record: CrmRecord) -> str | None:
    """The operator's explanation URL with `{account_id}` and `{transition_id}` replaced by the URL-quoted
    ids (plain substitution: the URL is never template code)."""
    if not template:
        return None
    return template.replace("{account_id}", quote(record.account_id, safe="")).replace(
        "{transition_id}", quote(record.transition_id, safe="")
    )


# ---- HubSpot company properties ---------------------------------------------------------------------


@dataclass(frozen=True)
class Property:
    name: str
    label: str
    type: str
    field_type: str
    description: str
    options: tuple[str, ...] = ()

    def definition(self, order: int) -> dict[str, Any]:
        """The body of POST /crm/v3/properties/companies."""
        body: dict[str, Any] = {
            "name": self.name, "label": self.label, "type": self.type, "fieldType": self.field_type,
            "groupName": GROUP, "description": self.description, "displayOrder": order,
        }
        if self.options:
            body["options"] = [
                {"label": o.capitalize(), "value": o, "displayOrder": i} for i, o in enumerate(self.options)
            ]
        return body


PROPERTIES: tuple[Property, ...] = (
    Property("pqlflow_pql_status", "PQL status", "enumeration", "select",
             "qualified, disqualified or converted, as of the latest transition", tuple(_RANK)),
    Property("pqlflow_pql_score", "PQL score", "number", "number", "the definition's score when it qualified"),
    Property("pqlflow_pql_reasons", "PQL top reasons", "string", "textarea",
             "why the account qualified, in words, one reason per line"),
    Property("pqlflow_definition", "PQL definition", "string", "text", "the definition's name"),
    Property("pqlflow_definition_version", "PQL definition version", "number", "number",
             "the version of the definition that decided"),
    Property("pqlflow_qualified_at", "PQL qualified at", "datetime", "date",
             "when the account's usage qualified it"),
    Property("pqlflow_status_changed_at", "PQL status changed at", "datetime", "date",
             "event time of the latest transition"),
    Property("pqlflow_touch_level", "PQL touch level", "enumeration", "select",
             "high: a rep follows up; low: the product and email do", ("high", "low")),
    Property("pqlflow_explanation_url", "PQL explanation", "string", "text", "link to why it qualified"),
    Property("pqlflow_account_id", "pqlflow account id", "string", "text",
             "the product's account id; CRM sync and rep tasks can find the company by it"),
)


def company_properties(record: CrmRecord, explanation_url: str | None) -> dict[str, str]:
    """The PATCH body's properties. Fields a transition does not carry are left as they are on the record,
    except the reasons, which always say the latest transition's."""
    props: dict[str, str] = {
        "pqlflow_pql_status": record.status,
        "pqlflow_status_changed_at": str(epoch_ms(record.changed_at)),
        "pqlflow_pql_reasons": "\n".join(record.reasons),
        "pqlflow_account_id": record.account_id,
    }
    if record.score is not None:
        props["pqlflow_pql_score"] = f"{record.score:g}"
    if record.definition is not None:
        props["pqlflow_definition"] = record.definition
    if record.definition_version is not None:
        props["pqlflow_definition_version"] = str(record.definition_version)
    if record.qualified_at is not None:
        props["pqlflow_qualified_at"] = str(epoch_ms(record.qualified_at))
    if record.touch is not None:
        props["pqlflow_touch_level"] = record.touch
    if explanation_url:
        props["pqlflow_explanation_url"] = explanation_url
    return props
