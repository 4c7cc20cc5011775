"""In-app incentive offers: the catalog (YAML), offer instances, and the pure rules for showing,
accepting and dismissing them. No I/O here; `pqlflow.channels.offers.store` persists what these rules decide."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.contracts.emitted import NurtureAction, Reason
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.yamlfile import first_problem, load_config

OfferKind = Literal["discount", "extended_trial", "premium_feature"]
OfferStatus = Literal["active", "accepted", "dismissed", "expired"]

_DAY = 86_400
_MONTH = 31 * _DAY


class _OfferSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, description="what the user sees, e.g. '20% off Pro for 3 months'")
    description: str = ""
    valid_for_days: int = Field(ge=1, le=365, description="how long the user has to accept the offer")


class DiscountSpec(_OfferSpecBase):
    kind: Literal["discount"]
    percent: int = Field(ge=1, le=100)
    duration_months: int = Field(ge=1, le=36)

    def benefit_seconds(self) -> int:
        return self.duration_months * _MONTH


class ExtendedTrialSpec(_OfferSpecBase):
    kind: Literal["extended_trial"]
    days: int = Field(ge=1, le=365)

    def benefit_seconds(self) -> int:
        return self.days * _DAY


class PremiumFeatureSpec(_OfferSpecBase):
    kind: Literal["premium_feature"]
    feature: str = Field(min_length=1, description="the paid feature unlocked, e.g. 'sso'")
    days: int = Field(ge=1, le=365)

    def benefit_seconds(self) -> int:
        return self.days * _DAY


OfferSpec = Annotated[DiscountSpec | ExtendedTrialSpec | PremiumFeatureSpec, Field(discriminator="kind")]


class Catalog(BaseModel):
    """The offers the nurture policy may name (`NurtureAction.offer` is a key of `offers`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    version: int = 1
    offers: dict[str, OfferSpec] = Field(min_length=1)

    def spec(self, key: str) -> DiscountSpec | ExtendedTrialSpec | PremiumFeatureSpec:
        try:
            return self.offers[key]
        except KeyError:
            known = ", ".join(sorted(self.offers))
            raise UsageError(f"offer {key!r} is not in catalog {self.name!r} (known: {known})") from None


def parse_catalog(data: Any, source: str = "<catalog>") -> Catalog:
    """Validate a catalog document; errors name the source and the field path at fault."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: an offer catalog is a mapping with an `offers:` key")
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: field {first_problem(exc)}") from None


def load_catalog(path: str | Path) -> Catalog:
    return parse_catalog(load_config(path, "offer catalog"), str(path))


class Offer(BaseModel):
    """One offer made to one user of one account; `status` is as stored (see `effective_status`)."""

    model_config = ConfigDict(extra="forbid")

    offer_id: str
    account_id: str
    user_id: str
    offer: str = Field(description="catalog key")
    kind: OfferKind
    title: str
    description: str = ""
    terms: dict[str, Any]
    status: Literal["active", "accepted", "dismissed"] = "active"
    created_at: int
    valid_until: int = Field(description="epoch seconds: the offer can be accepted until then")
    benefit_seconds: int
    accepted_at: int | None = None
    dismissed_at: int | None = None
    accept_published: bool = False
    publish_claimed_at: int | None = Field(
        default=None, description="who publishes `Offer Accepted`, since when"
    )
    viewed_at: int | None = Field(default=None, description="epoch seconds: the app first showed the offer")
    view_published: bool = False
    view_claimed_at: int | None = Field(default=None, description="who publishes `Offer Viewed`, since when")
    dismiss_published: bool = False
    dismiss_claimed_at: int | None = Field(default=None, description="who publishes `Offer Dismissed`, since when")
    action_id: str
    transition_id: str
    step: int = Field(default=0, ge=0, description="the journey step of the Nurture Action that made the offer")
    reasons: list[Reason] = Field(default_factory=list)

    def public(self, now: float) -> dict[str, Any]:
        """What the app receives: no internal bookkeeping."""
        return {
            "id": self.offer_id,
            "offer": self.offer,
            "kind": self.kind,
            "title": self.title,
            "description": self.description,
            "terms": self.terms,
            "status": effective_status(self, now),
            "expires_at": iso_time(self.valid_until),
            "accepted_at": iso_time(self.accepted_at) if self.accepted_at else None,
            "reasons": [r.text for r in self.reasons],
        }


def offer_id_for(action_id: str) -> str:
    """Deterministic from the action, so a redelivered action names the same offer."""
    return "of_" + hashlib.sha256(action_id.encode()).hexdigest()[:24]


def recipient_of(action: NurtureAction) -> str | None:
    """The user who sees the offer: the action's recipient, else its user, else the qualification's
    first user (B2B accounts qualify as a whole; the route function normally names the recipient)."""
    if action.recipient_user_id:
        return action.recipient_user_id
    if action.user_id:
        return action.user_id
    users = action.context.get("users") or []
    if users and isinstance(users[0], dict) and users[0].get("user_id"):
        return str(users[0]["user_id"])
    return None


def make_offer(
    action: NurtureAction,
    spec: DiscountSpec | ExtendedTrialSpec | PremiumFeatureSpec,
    user_id: str,
    now: float,
) -> Offer:
    created = int(now)
    terms = spec.model_dump(exclude={"title", "description", "valid_for_days", "kind"})
    return Offer(
        offer_id=offer_id_for(action.action_id),
        account_id=action.account_id,
        user_id=user_id,
        offer=action.offer or "",
        kind=spec.kind,
        title=spec.title,
        description=spec.description,
        terms=terms,
        created_at=created,
        valid_until=created + spec.valid_for_days * _DAY,
        benefit_seconds=spec.benefit_seconds(),
        action_id=action.action_id,
        transition_id=action.transition_id,
        step=action.step,
        reasons=list(action.reasons),
    )


def effective_status(offer: Offer, now: float) -> OfferStatus:
    """Stored status, except that an active offer past its validity is expired (TTL deletion lags)."""
    if offer.status == "active" and now >= offer.valid_until:
        return "expired"
    return offer.status


def is_visible(offer: Offer, now: float) -> bool:
    """`GET /offers` shows offers the user can still act on."""
    return effective_status(offer, now) == "active"


class Decision(BaseModel):
    """What an accept/dismiss request does: `change` the stored offer, or answer as it is."""

    outcome: Literal["change", "unchanged", "conflict"]
    message: str = ""


def decide_accept(offer: Offer, now: float) -> Decision:
    status = effective_status(offer, now)
    if status == "active":
        return Decision(outcome="change")
    if status == "accepted":
        return Decision(outcome="unchanged", message="offer already accepted")
    if status == "dismissed":
        return Decision(outcome="conflict", message="this offer was dismissed and can no longer be accepted")
    return Decision(
        outcome="conflict",
        message=f"this offer expired at {iso_time(offer.valid_until)} and can no longer be accepted",
    )


def decide_dismiss(offer: Offer, now: float) -> Decision:
    status = effective_status(offer, now)
    if status == "accepted":
        return Decision(outcome="conflict", message="this offer was already accepted and cannot be dismissed")
    if status == "dismissed":
        return Decision(outcome="unchanged", message="offer already dismissed")
    return Decision(outcome="change")


def decide_view(offer: Offer, now: float) -> Decision:
    """A view is recorded once, while the offer can still be acted on; a repeated view answers as it is."""
    if offer.viewed_at is not None:
        return Decision(outcome="unchanged", message="offer already viewed")
    status = effective_status(offer, now)
    if status == "active":
        return Decision(outcome="change")
    if status == "expired":
        return Decision(
            outcome="conflict",
            message=f"this offer expired at {iso_time(offer.valid_until)} and can no longer be shown",
        )
    return Decision(outcome="conflict", message=f"this offer was {status} and can no longer be shown")


def engagement_id_for(offer_id: str, kind: Literal["viewed", "dismissed"]) -> str:
    """Deterministic: one `Offer Viewed` and one `Offer Dismissed` per offer, whoever publishes it."""
    return "en_" + hashlib.sha256(f"{offer_id}\n{kind}".encode()).hexdigest()[:24]


def benefit_until(offer: Offer, accepted_at: float) -> int:
    """Until when an accepted offer's benefit runs; the stored item lives at least that long."""
    return int(accepted_at) + offer.benefit_seconds


@overload
def iso_time(epoch: float) -> str: ...


@overload
def iso_time(epoch: None) -> None: ...


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as the API and events show it (UTC, `Z`); None stays None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")
