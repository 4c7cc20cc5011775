"""The copy config, `brand.yaml`: what a copy writer changes without touching code, validated into `Brand`.

`<root>/brand.yaml` sits beside the `email/` templates: company, postal address, links, feature names,
incentives, testimonials, and which qualification reasons an email may quote back to its reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.channels.email.errors import MailError
from pqlflow.contracts.emitted import Reason
from pqlflow.kernel.yamlfile import first_problem

BRAND_FILE = "brand.yaml"


class Testimonial(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote: str
    author: str
    role: str | None = None
    company: str | None = None
    metric: str | None = Field(default=None, description="a short result, e.g. '3x faster onboarding'")
    features: list[str] = Field(default_factory=list, description="signals this story speaks to")


class ContentLink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    url: str
    kind: Literal["guide", "video", "case_study", "webinar", "article"] = "guide"
    minutes: int | None = None
    summary: str | None = None


class Feature(BaseModel):
    """How copy names a signal (usage metric or feature) and what the paid plan adds to it."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="lower-case noun phrase used in sentences, e.g. 'contacts'")
    title: str | None = Field(default=None, description="capitalized feature name, e.g. 'Contacts'")
    unit: str | None = Field(default=None, description="unit after a number, e.g. 'GB'")
    scale: float = Field(default=1, gt=0, description="divide values by this for display (bytes -> GB: 1e9)")
    of: str | None = Field(default=None, description="ratio signals: the usage signal the ratio is of")
    limit_trait: str | None = Field(default=None, description="ratio signals: the account trait of the limit")
    premium_pitch: str | None = None
    advanced_feature: str | None = Field(default=None, description="the paid capability to demo")
    demo_pitch: str | None = None
    content: list[ContentLink] = Field(default_factory=list)


class Incentive(BaseModel):
    """An incentive an email can present; its id is the `offer` of the Nurture Action."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["discount", "extended_trial", "premium_feature"]
    headline: str
    details: str
    percent: int | None = Field(default=None, ge=1, le=100)
    months: int | None = Field(default=None, ge=1)
    days: int | None = Field(default=None, ge=1)
    feature: str | None = None
    code: str | None = None
    valid_days: int = Field(default=14, ge=1, description="how long the offer stands, shown in the email")
    cta: str = "Claim your offer"


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: int = 30
    url: str
    host: str | None = None


class ReasonDisplay(BaseModel):
    """Which qualification reasons an email may show its reader ("What we noticed")."""

    model_config = ConfigDict(extra="forbid")

    show: bool = True
    kinds: list[str] = Field(
        default_factory=lambda: ["limit", "usage", "paid_feature", "team", "velocity"],
        description="a lead score or a firmographic trait is for the sales team, not the reader",
    )
    hidden_signals: list[str] = Field(
        default_factory=list, description="signals too personal to quote back, e.g. pricing page views"
    )

    def shown(self, reasons: Sequence[Reason]) -> list[Reason]:
        if not self.show:
            return []
        return [r for r in reasons if r.kind in self.kinds and r.signal not in self.hidden_signals]


class Brand(BaseModel):
    """The copy config in `brand.yaml`: everything a copy writer changes without touching code."""

    model_config = ConfigDict(extra="forbid")

    company: str
    product: str
    postal_address: str
    support_email: str
    app_url: str
    upgrade_url: str
    pricing_url: str
    logo_url: str | None = None
    accent_color: str = Field(default="#4f46e5", pattern=r"^#[0-9a-fA-F]{6}$")
    preferences_url: str | None = None
    sender_name: str | None = Field(default=None, description="signature under the message body")
    sender_title: str | None = None
    paid_plan: str = "Pro"
    demo: Demo
    features: dict[str, Feature] = Field(default_factory=dict)
    content: list[ContentLink] = Field(default_factory=list, description="fallback targeted content")
    incentives: dict[str, Incentive] = Field(default_factory=dict)
    default_incentive: str | None = None
    social_proof: list[Testimonial] = Field(default_factory=list)
    utm: bool = Field(default=True, description="add utm_source/medium/campaign to links")
    reasons: ReasonDisplay = Field(default_factory=lambda: ReasonDisplay())

    def incentive(self, offer: str | None) -> tuple[str, Incentive] | None:
        offer_id = offer or self.default_incentive
        if offer_id is None:
            return None
        if offer_id not in self.incentives:
            raise MailError(f"offer {offer_id!r} is not in brand.yaml incentives ({sorted(self.incentives)})")
        return offer_id, self.incentives[offer_id]


def load_brand(root: Path, overrides: Mapping[str, Any] | None = None) -> Brand:
    """Read and validate `<root>/brand.yaml`; `overrides` (e.g. a postal address from config) win."""
    path = Path(root) / BRAND_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise MailError(f"{path}: missing (the copy config the email templates need)") from exc
    except yaml.YAMLError as exc:
        raise MailError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise MailError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in (overrides or {}).items() if v not in (None, "")})
    try:
        return Brand.model_validate(raw)
    except ValidationError as exc:
        raise MailError(f"{path}: {first_problem(exc)}") from exc
