"""Events pqlflow emits on the bus (source `pqlflow`), as typed models shared by every function.

Each model's `DETAIL_TYPE` is its EventBridge detail-type. JSON Schemas and samples of each live under
`events/pqlflow/` (regenerate the schemas with `make schemas`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SOURCE = "pqlflow"
TouchLevel = Literal["high", "low"]


class _Detail(BaseModel):
    # hide_input_in_errors: a refused event's error message (logged by Lambda) never quotes its traits.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    DETAIL_TYPE: ClassVar[str]


# What a reason says about the account; routing, the email and the rep task choose by it. `intent`: buying
# intent (pricing or upgrade pages, a sales contact): never quoted back to the reader, said to the rep.
ReasonKind = Literal["limit", "paid_feature", "usage", "intent", "team", "velocity", "score", "trait"]


class Reason(BaseModel):
    """Why an account qualified, in words a person reads, with the signal behind it."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="stable id of the rule or points condition that fired")
    text: str = Field(description="human-readable, e.g. '2,000 messages sent — the free plan's limit'")
    kind: ReasonKind = "usage"
    signal: str | None = Field(default=None, description="name of the signal in the definition")
    value: float | str | bool | None = None
    threshold: float | str | bool | None = None
    # The definition's words for the signal, for copy that puts its own number in front ("3 features used").
    label: str | None = Field(default=None, description="the signal after a number other than 1: 'features used'")
    label_one: str | None = Field(default=None, description="the signal after 1: 'feature used'")
    talking_point: str | None = Field(default=None, description="what the definition's author wants the rep to say")
    previous: float | None = Field(
        default=None, description="the signal's value 7 days before, when usage state still knows it"
    )


class UserSummary(BaseModel):
    """A user of the account, for personalization and rep context. Never logged."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    traits: dict[str, Any] = Field(default_factory=dict)
    last_seen: str | None = None


class DefinitionRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int


class PqlQualified(_Detail):
    """An account (or a user, for `unit: user` definitions) became a product-qualified lead."""

    DETAIL_TYPE: ClassVar[str] = "PQL Qualified"

    transition_id: str = Field(description="deterministic id of this transition: the idempotency key downstream")
    account_id: str
    user_id: str | None = Field(default=None, description="set when the definition's unit is user")
    definition: DefinitionRef
    qualified_at: str = Field(description="event time (ISO 8601, UTC) of the usage that qualified it")
    touch: TouchLevel
    score: float | None = None
    reasons: list[Reason]
    signals: dict[str, float | str | bool | None] = Field(default_factory=dict)
    account_traits: dict[str, Any] = Field(default_factory=dict)
    users: list[UserSummary] = Field(default_factory=list)


class PqlDisqualified(_Detail):
    """A qualified account no longer meets the definition (or an exclusion now applies)."""

    DETAIL_TYPE: ClassVar[str] = "PQL Disqualified"

    transition_id: str
    account_id: str
    user_id: str | None = None
    definition: DefinitionRef
    disqualified_at: str
    reasons: list[Reason] = Field(default_factory=list)


class NurtureAction(_Detail):
    """The one follow-up chosen for a qualification (or why there is none)."""

    DETAIL_TYPE: ClassVar[str] = "Nurture Action"

    action_id: str = Field(description="deterministic from the qualification: one action per qualification")
    transition_id: str
    account_id: str
    user_id: str | None = None
    channel: Literal["email", "offer", "rep_task", "none"]
    outcome: Literal["send", "holdout", "suppressed", "capped", "deferred"] = "send"
    why: str | None = Field(default=None, description="for holdout/suppressed/capped/deferred: the rule that decided")
    template: str | None = None
    offer: str | None = None
    recipient_user_id: str | None = None
    send_after: str | None = Field(default=None, description="ISO 8601: quiet hours defer delivery until then")
    touch: TouchLevel
    reasons: list[Reason] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict, description="the qualification, for the channel")


class OfferAccepted(_Detail):
    DETAIL_TYPE: ClassVar[str] = "Offer Accepted"

    offer_id: str
    account_id: str
    user_id: str
    offer: str
    accepted_at: str


class RepTaskCreated(_Detail):
    DETAIL_TYPE: ClassVar[str] = "Rep Task Created"

    task_id: str
    account_id: str
    owner: str
    due_at: str
    title: str
    body: str
    transition_id: str


class AccountConverted(_Detail):
    """The account started paying: closes the loop for PQL→paid measurement."""

    DETAIL_TYPE: ClassVar[str] = "Account Converted"

    account_id: str
    converted_at: str
    qualified_at: str | None = None
    seconds_since_qualified: float | None = None
    definition: DefinitionRef | None = None


EMITTED = (PqlQualified, PqlDisqualified, NurtureAction, OfferAccepted, RepTaskCreated, AccountConverted)
