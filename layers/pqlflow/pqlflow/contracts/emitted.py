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
    rule: str | None = Field(default=None, description="the nurture policy rule that chose this action")
    step: int = Field(default=0, ge=0, description="0: the action at qualification; n: the n-th later step of "
                      "the rule's journey")
    step_name: str | None = Field(default=None, description="the journey step's name, when the policy gives one")
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
    mrr: float | None = Field(default=None, description="monthly recurring revenue the sender gave "
                              "(Segment `properties.mrr` of `Subscription Started`)")
    revenue: float | None = Field(default=None, description="one-off revenue the sender gave "
                                  "(Segment `properties.revenue` of `Order Completed`)")
    currency: str | None = Field(default=None, description="ISO 4217, as the sender gave it")
    plan: str | None = None


class AccountChurned(_Detail):
    """A paying account stopped paying: `Subscription Cancelled`, or its plan trait back to a free plan."""

    DETAIL_TYPE: ClassVar[str] = "Account Churned"

    account_id: str
    churned_at: str
    converted_at: str | None = None
    reason: Literal["subscription_cancelled", "plan_downgraded"]
    mrr: float | None = Field(default=None, description="the monthly recurring revenue lost, when known")


# --- journeys: the follow-up steps after the first action -------------------------------------------

StopReason = Literal[
    "converted", "disqualified", "unsubscribed", "suppressed", "offer_accepted", "task_closed",
    "requalified", "completed",
]


class JourneyStepDue(_Detail):
    """A journey's later step has come due (put on the bus by its EventBridge Scheduler one-time schedule)."""

    DETAIL_TYPE: ClassVar[str] = "Journey Step Due"

    transition_id: str = Field(description="the qualification the journey follows up")
    account_id: str
    user_id: str | None = Field(default=None, description="the qualified user (user-unit definitions)")
    rule: str = Field(description="the policy rule whose journey this is")
    step: int = Field(ge=1, description="the step to run: 1 is the first step after the one at qualification")
    due_at: str


class JourneyStopped(_Detail):
    """A journey ended: no step after `after_step` runs. Once per journey."""

    DETAIL_TYPE: ClassVar[str] = "Journey Stopped"

    transition_id: str
    account_id: str
    user_id: str | None = None
    rule: str
    reason: StopReason
    after_step: int = Field(ge=0, description="the last step that ran")
    stopped_at: str
    why: str | None = None


# --- engagement: what recipients did with an action ---------------------------------------------------


class _Engagement(_Detail):
    engagement_id: str = Field(description="deterministic from the source event: consumers dedupe on it")
    action_id: str = Field(description="the Nurture Action engaged with")
    transition_id: str
    account_id: str
    user_id: str | None = None
    step: int = Field(default=0, ge=0, description="the journey step of the action")
    occurred_at: str


class _EmailEngagement(_Engagement):
    template: str
    ses_message_id: str


class EmailDelivered(_EmailEngagement):
    """SES delivered the nurture email to the recipient's mail server."""

    DETAIL_TYPE: ClassVar[str] = "Email Delivered"


class EmailOpened(_EmailEngagement):
    """The recipient's client loaded the nurture email's open pixel (machine opens included, as SES counts)."""

    DETAIL_TYPE: ClassVar[str] = "Email Opened"


class EmailClicked(_EmailEngagement):
    """The recipient followed a link of the nurture email."""

    DETAIL_TYPE: ClassVar[str] = "Email Clicked"

    link: str | None = Field(default=None, description="scheme, host and path of the link; never its query")


class EmailBounced(_EmailEngagement):
    DETAIL_TYPE: ClassVar[str] = "Email Bounced"

    bounce_type: Literal["Permanent", "Transient", "Undetermined"]


class EmailComplained(_EmailEngagement):
    """The recipient marked the nurture email as spam; the address is suppressed for good."""

    DETAIL_TYPE: ClassVar[str] = "Email Complained"


class OfferViewed(_Engagement):
    """The product showed the in-app offer to its recipient (the offers API's view call)."""

    DETAIL_TYPE: ClassVar[str] = "Offer Viewed"

    offer_id: str
    offer: str


class OfferDismissed(_Engagement):
    DETAIL_TYPE: ClassVar[str] = "Offer Dismissed"

    offer_id: str
    offer: str


class RepTaskClosed(_Engagement):
    """The rep closed the follow-up task, reported back by the connector (HubSpot, Slack, webhook)."""

    DETAIL_TYPE: ClassVar[str] = "Rep Task Closed"

    task_id: str
    outcome: Literal["completed", "dismissed"]
    via: Literal["hubspot", "slack", "webhook"]


ENGAGEMENT = (EmailDelivered, EmailOpened, EmailClicked, EmailBounced, EmailComplained, OfferViewed,
              OfferDismissed, RepTaskClosed)

EMITTED = (PqlQualified, PqlDisqualified, NurtureAction, OfferAccepted, RepTaskCreated, AccountConverted,
           AccountChurned, JourneyStepDue, JourneyStopped, *ENGAGEMENT)
