"""Personalized nurture email: the template context from a `Nurture Action`, sandboxed rendering, and MIME.

Everything here is pure (no AWS, no environment reads). The pieces, in the order send_email uses them:

- `EmailTemplates(root)` loads the Jinja templates shipped in the templates layer. Each template is a
  folder `email/<name>/` with `subject.txt`, `body.html` and `body.txt`; folders starting with `_` hold
  the shared layout and partials. `root/brand.yaml` is the copy config (company, postal address, links,
  feature names, incentives, testimonials), validated into `Brand`.
- `build_context(action, ...)` turns the action (its `context` is the `PqlQualified`) and the recipient
  into plain data for the templates: recipient, account, usage (top feature, usage against the limit,
  teammates active), reasons, offer, social proof, links. User-supplied strings are only ever values in
  this data, never template source, so a name of ``{{ 7*7 }}`` renders literally.
- `EmailTemplates.render(name, context)` renders subject, HTML (autoescaped) and text in an immutable
  sandbox with `StrictUndefined`: a template that uses a variable the context lacks raises
  `TemplateError` naming the file and line, in tests and previews rather than in production.
- `build_message(...)` makes the RFC 5322 multipart/alternative message with the RFC 8058 one-click
  unsubscribe headers; `message_bytes` gives the exact bytes handed to SES (`Content.Raw`).
"""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.channels.email import unsubscribe
from pqlflow.contracts.emitted import NurtureAction, PqlQualified, Reason
from pqlflow.kernel import clock
from pqlflow.kernel.yamlfile import first_problem
from pqlflow.nurture import suppression

EMAIL_DIR = "email"
BRAND_FILE = "brand.yaml"
TEMPLATE_PARTS = ("subject.txt", "body.html", "body.txt")
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
MAX_SUBJECT_CHARS = 150
ONE_CLICK = "List-Unsubscribe=One-Click"

# What send_email uses when the route left `template` empty: the strongest reason decides.
DEFAULT_TEMPLATE_BY_REASON = {"limit": "limit_approaching", "paid_feature": "demo_invite"}
DEFAULT_TEMPLATE = "upgrade_nudge"


class MailError(Exception):
    """A message cannot be built from this action (bad template name, unknown offer, no recipient)."""


class NoRecipient(MailError):
    """The action names no user with a usable email address."""


class TemplateError(MailError):
    """A template failed to render; the message names the template file and line."""


# --------------------------------------------------------------------------------------------- brand


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


# ------------------------------------------------------------------------------------------ context


@dataclass(frozen=True)
class Recipient:
    """The person an email goes to. Never logged: log `user_id` or the address hash instead."""

    user_id: str | None
    email: str
    traits: Mapping[str, Any]

    @property
    def name(self) -> str | None:
        name = _text(self.traits.get("name"))
        if name:
            return name
        parts = [_text(self.traits.get("first_name")), _text(self.traits.get("last_name"))]
        return " ".join(p for p in parts if p) or None

    @property
    def first_name(self) -> str | None:
        first = _text(self.traits.get("first_name") or self.traits.get("firstName"))
        if first:
            return first
        name = self.name
        return name.split()[0] if name else None


_EMAIL = re.compile(r"^[^@\s<>\"(),;:\\\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


def qualification_of(action: NurtureAction) -> PqlQualified:
    """The `PqlQualified` carried in the action's `context`."""
    try:
        return PqlQualified.model_validate(action.context)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise MailError(f"action {action.action_id}: context.{field}: {first['msg']}") from exc


def resolve_recipient(action: NurtureAction, qualification: PqlQualified) -> Recipient:
    """The user the action addresses (`recipient_user_id`, else the qualifying user, else the only user)."""
    users = {u.user_id: u for u in qualification.users}
    wanted = action.recipient_user_id or action.user_id or qualification.user_id
    if wanted is None and len(users) == 1:
        wanted = next(iter(users))
    user = users.get(wanted) if wanted is not None else None
    if user is None:
        raise NoRecipient(
            f"action {action.action_id}: recipient {wanted!r} is not among the qualification's users"
        )
    email = _text(user.traits.get("email"))
    if not email or not _EMAIL.match(email):
        raise NoRecipient(f"action {action.action_id}: user {wanted!r} has no valid email trait")
    return Recipient(user_id=user.user_id, email=email, traits=dict(user.traits))


def choose_template(action: NurtureAction) -> str:
    """The template the route asked for, else one chosen from the qualification's first telling reason."""
    if action.template:
        return action.template
    for reason in action.reasons:
        if reason.kind in DEFAULT_TEMPLATE_BY_REASON:
            return DEFAULT_TEMPLATE_BY_REASON[reason.kind]
    return DEFAULT_TEMPLATE


def build_context(
    action: NurtureAction,
    *,
    template: str,
    recipient: Recipient,
    brand: Brand,
    unsubscribe_url: str,
    qualification: PqlQualified | None = None,
) -> dict[str, Any]:
    """The data a template sees: plain dicts, lists, strings and numbers (never markup or callables).

    Usage against the limit comes from the first `limit` reason: `value` is the usage and the plan
    limit is `account_traits.limits[<signal>]` when the account carries it, else the reason's
    `threshold`. The feature the recipient uses most is their `top_feature` trait, else the signal of
    the strongest usage or paid-feature reason. Teammates are the qualification's other users; the
    active count is the `active_users` signal when present.
    """
    q = qualification or qualification_of(action)
    traits = dict(q.account_traits)
    reasons = list(action.reasons or q.reasons)
    limit = _limit(reasons, q, brand)
    feature = _top_feature(recipient, reasons, q, brand, limit)
    team = _team(recipient, q)
    offer = brand.incentive(action.offer)
    account_name = _text(traits.get("name")) or _text(traits.get("company"))
    first_name = recipient.first_name
    links = {
        "app": _link(brand.app_url, template, brand),
        "upgrade": _link(brand.upgrade_url, template, brand),
        "pricing": _link(brand.pricing_url, template, brand),
        "demo": _link(brand.demo.url, template, brand),
        "unsubscribe": unsubscribe_url,
        "preferences": brand.preferences_url,
    }
    return {
        "template": template,
        "brand": brand.model_dump(mode="json"),
        "recipient": {
            "user_id": recipient.user_id,
            "first_name": first_name,
            "name": recipient.name,
            "greeting": f"Hi {first_name}," if first_name else "Hi there,",
            "title": _text(recipient.traits.get("title")),
            "traits": _plain(recipient.traits),
        },
        "account": {
            "id": q.account_id,
            "name": account_name,
            "display_name": account_name or "your team",
            "plan": _text(traits.get("plan")),
            "traits": _plain(traits),
        },
        "qualification": {
            "transition_id": q.transition_id,
            "qualified_at": q.qualified_at,
            "touch": q.touch,
            "score": q.score,
            "definition": q.definition.name,
            "reasons": [_reason(r, brand) for r in reasons],
            "shown_reasons": [_reason(r, brand) for r in brand.reasons.shown(reasons)],
            "signals": _plain(q.signals),
        },
        "usage": {"feature": feature, "limit": limit, "team": team},
        "offer": _offer(offer, template, brand),
        "content": [
            c.model_dump(mode="json") | {"url": _link(c.url, template, brand)}
            for c in _content(feature, brand)
        ],
        "demo": _demo(feature, brand),
        "social_proof": _social_proof(q.account_id, feature, brand),
        "links": links,
    }


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = " ".join(str(value).split())
    return text or None


def _plain(value: Any) -> Any:
    """Copy into JSON-like data, so nothing a template reaches is a live object."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).replace(",", ""))
    except ValueError:
        return None


def _humanize(key: str) -> str:
    return " ".join(
        re.sub(r"([a-z])([A-Z])", r"\1 \2", key).replace("_", " ").replace("-", " ").split()
    ).lower()


def _feature(key: str, brand: Brand, count: float | None) -> dict[str, Any]:
    known = brand.features.get(key)
    label = known.label if known else _humanize(key)
    scale = known.scale if known else 1.0
    return {
        "key": key,
        "label": label,
        "title": (known.title if known and known.title else label[:1].upper() + label[1:]),
        "unit": known.unit if known else None,
        "scale": scale,
        "count": count / scale if count is not None else None,
        "premium_pitch": known.premium_pitch if known else None,
        "advanced_feature": known.advanced_feature if known else None,
        "demo_pitch": known.demo_pitch if known else None,
    }


def _top_feature(
    recipient: Recipient, reasons: Sequence[Reason], q: PqlQualified, brand: Brand, limit: dict | None
) -> dict | None:
    key = _text(recipient.traits.get("top_feature"))
    if key:
        return _feature(key, brand, _number(q.signals.get(key)))
    ranked = [r for r in reasons if r.signal and r.kind in ("paid_feature", "usage")]
    ranked.sort(key=lambda r: (r.kind != "paid_feature", -(_number(r.value) or 0.0)))
    if ranked:
        key = ranked[0].signal or ""
        return _feature(key, brand, _number(ranked[0].value) or _number(q.signals.get(key)))
    if limit is not None and limit["used"] is not None:
        known = brand.features.get(limit["key"])
        return _feature(limit["key"], brand, limit["used"] * (known.scale if known else 1.0))
    return None


def _looks_like_ratio(value: float, threshold: float | None) -> bool:
    """A ratio signal's reason: value and threshold are shares of a limit (0.8 = 80%), not counts."""
    if threshold is None or not 0 < threshold <= 1.5 or not 0 <= value <= 10:
        return False
    return threshold < 1 or value != int(value)


def _ratio_parts(key: str, ratio: float, q: PqlQualified, brand: Brand) -> tuple[str, float, float] | None:
    """The usage signal and plan-limit trait behind a ratio: brand.yaml's `of`/`limit_trait` for the
    signal when given, else the (signal, account trait) pair whose quotient is the ratio."""
    known = brand.features.get(key)
    if known and known.of:
        used = _number(q.signals.get(known.of))
        limit = _number(q.account_traits.get(known.limit_trait or ""))
        return (known.of, used, limit) if used is not None and limit else None
    signals = {k: v for k, v in q.signals.items() if k != key and (_number(v) or 0) > 0}
    traits = {k: v for k, v in q.account_traits.items() if (_number(v) or 0) > 0}
    found = []
    for s_name, s_value in signals.items():
        for t_name, t_value in traits.items():
            quotient = (_number(s_value) or 0) / (_number(t_value) or 1)
            if abs(quotient - ratio) <= max(1e-6, ratio * 0.005):
                named = s_name.split("_")[0] in t_name or any(w in t_name for w in ("limit", "quota", "tier"))
                found.append((not named, s_name, t_name))
    if not found:
        return None
    _, s_name, t_name = min(found)
    return s_name, _number(q.signals[s_name]) or 0.0, _number(q.account_traits[t_name]) or 0.0


def _limit(reasons: Sequence[Reason], q: PqlQualified, brand: Brand) -> dict | None:
    """Usage against the plan limit, from the first `limit` reason.

    A count reason (2,000 messages, threshold 2,000) is usage against its threshold, or against
    `account_traits.limits[<signal>]` when the account carries its plan limits. A ratio reason (0.8 of a
    contact tier) is resolved to its usage signal and limit trait (`_ratio_parts`); when that fails
    only the percentage is known and `used`/`limit` are None.
    """
    reason = next((r for r in reasons if r.kind == "limit" and _number(r.value) is not None), None)
    if reason is None:
        return None
    key = reason.signal or reason.code
    value = _number(reason.value) or 0.0
    threshold = _number(reason.threshold)
    limits = q.account_traits.get("limits")
    plan_limit = _number(limits.get(key)) if isinstance(limits, Mapping) else None
    used: float | None
    limit: float | None
    if plan_limit:
        used, limit, ratio = value, plan_limit, value / plan_limit
    elif _looks_like_ratio(value, threshold) or (brand.features.get(key) and brand.features[key].of):
        parts = _ratio_parts(key, value, q, brand)
        key, used, limit = parts if parts else (key, None, None)
        ratio = value
    elif threshold and threshold > 0:
        used, limit, ratio = value, threshold, value / threshold
    else:
        return None
    feature = _feature(key, brand, used)
    scale = feature["scale"]
    label = feature["label"]
    if used is None and key not in brand.features:  # an unresolved ratio: "contact_use" -> "contact limit"
        label = _humanize(re.sub(r"_(use|usage|used|ratio|share|pct|percent)$", "", key)) + " limit"
    return {
        "key": key,
        "label": label,
        "premium_pitch": feature["premium_pitch"],
        "unit": feature["unit"],
        "used": used / scale if used is not None else None,
        "limit": limit / scale if limit is not None else None,
        "remaining": max(limit - used, 0.0) / scale if used is not None and limit is not None else None,
        "ratio": ratio,
        "percent": round(ratio * 100),
        "bar_percent": max(2, min(100, round(ratio * 100))),
        "reached": ratio >= 1,
    }


def _team(recipient: Recipient, q: PqlQualified) -> dict[str, Any]:
    others = [u for u in q.users if u.user_id != recipient.user_id]
    names = []
    for user in others:
        first = Recipient(user.user_id, "", user.traits).first_name
        if first:
            names.append(first)
    active = _number(q.signals.get("active_users"))
    count = int(active) if active is not None else len(q.users)
    return {"active_users": count, "teammates": max(count - 1, len(others)), "names": names[:3]}


def _reason(reason: Reason, brand: Brand) -> dict[str, Any]:
    feature = _feature(reason.signal, brand, _number(reason.value)) if reason.signal else None
    return {
        "code": reason.code,
        "text": reason.text,
        "kind": reason.kind,
        "signal": reason.signal,
        "label": feature["label"] if feature else None,
        "value": _plain(reason.value),
        "threshold": _plain(reason.threshold),
    }


def _offer(chosen: tuple[str, Incentive] | None, template: str, brand: Brand) -> dict[str, Any] | None:
    if chosen is None:
        return None
    offer_id, incentive = chosen
    url = _link(brand.upgrade_url, template, brand, extra={"offer": offer_id})
    return incentive.model_dump(mode="json") | {"id": offer_id, "url": url}


def _content(feature: dict | None, brand: Brand) -> list[ContentLink]:
    if feature is not None:
        known = brand.features.get(feature["key"])
        if known and known.content:
            return known.content[:3]
    return brand.content[:3]


def _demo(feature: dict | None, brand: Brand) -> dict[str, Any]:
    topic = feature["advanced_feature"] if feature and feature["advanced_feature"] else None
    return {
        "minutes": brand.demo.minutes,
        "host": brand.demo.host,
        "topic": topic or f"getting more out of {brand.product}",
        "pitch": feature["demo_pitch"] if feature else None,
    }


def _social_proof(account_id: str, feature: dict | None, brand: Brand) -> dict[str, Any] | None:
    """One testimonial about the feature when there is one, the same for the same account every time."""
    if not brand.social_proof:
        return None
    key = feature["key"] if feature else None
    pool = [t for t in brand.social_proof if key in t.features] or brand.social_proof
    digest = hashlib.sha256(account_id.encode("utf-8")).digest()
    chosen = pool[int.from_bytes(digest[:4], "big") % len(pool)]
    return chosen.model_dump(mode="json", exclude={"features"})


def _link(url: str, template: str, brand: Brand, extra: Mapping[str, str] | None = None) -> str:
    params = dict(extra or {})
    if brand.utm:
        params |= {"utm_source": "pqlflow", "utm_medium": "email", "utm_campaign": template}
    if not params:
        return url
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update({k: v for k, v in params.items() if k not in query})
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderedEmail:
    template: str
    subject: str
    html: str
    text: str


def _format_number(value: Any, digits: int = 1) -> str:
    number = _number(value)
    if number is None:
        return "" if value is None else str(value)
    if number == int(number):
        return f"{int(number):,}"
    return f"{number:,.{digits}f}"


def _format_percent(value: Any) -> str:
    number = _number(value)
    return "" if number is None else f"{round(number * 100)}%"


LAMBDA_TEMPLATES_DIR = Path("/opt")
"""Where the templates layer lands in Lambda: its ContentUri is the repository's templates/ folder."""
REPO_TEMPLATES_DIR = Path(__file__).resolve().parents[5] / "templates"


def find_templates_dir(configured: str | Path | None = None) -> Path:
    """The folder holding `email/`: `configured` (TEMPLATES_DIR) if given, else the layer, else the repo's."""
    if configured:
        return Path(configured)
    for candidate in (LAMBDA_TEMPLATES_DIR, REPO_TEMPLATES_DIR):
        if (candidate / EMAIL_DIR).is_dir():
            return candidate
    raise MailError(
        f"no email templates: set TEMPLATES_DIR (looked in {LAMBDA_TEMPLATES_DIR}, {REPO_TEMPLATES_DIR})"
    )


class EmailTemplates:
    """The shipped email templates under `<root>/email/`, rendered in an immutable sandbox."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not (self.root / EMAIL_DIR).is_dir():
            raise MailError(f"{self.root}: no '{EMAIL_DIR}/' folder of email templates here")
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._names: list[str] | None = None
        self.env.filters["number"] = _format_number
        self.env.filters["percent"] = _format_percent

    def names(self) -> list[str]:
        """The templates a Nurture Action can name: folders holding subject, HTML and text parts."""
        if self._names is None:
            folder = self.root / EMAIL_DIR
            self._names = sorted(
                p.name
                for p in folder.iterdir()
                if p.is_dir()
                and TEMPLATE_NAME.match(p.name)
                and all((p / part).is_file() for part in TEMPLATE_PARTS)
            )
        return list(self._names)

    def check_name(self, name: str) -> str:
        if not TEMPLATE_NAME.match(name or "") or name not in self.names():
            raise MailError(
                f"no email template {name!r} in {self.root / EMAIL_DIR} (have: {', '.join(self.names())})"
            )
        return name

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedEmail:
        self.check_name(name)
        subject = self._render(f"{EMAIL_DIR}/{name}/subject.txt", context)
        html = self._render(f"{EMAIL_DIR}/{name}/body.html", context)
        text = self._render(f"{EMAIL_DIR}/{name}/body.txt", context)
        subject = " ".join(subject.split())
        if not subject:
            raise TemplateError(f"{EMAIL_DIR}/{name}/subject.txt: renders an empty subject")
        if len(subject) > MAX_SUBJECT_CHARS:
            subject = subject[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"
        return RenderedEmail(template=name, subject=subject, html=html, text=_tidy_text(text))

    def render_page(self, path: str, context: Mapping[str, Any]) -> str:
        """Render a web page template (e.g. `web/unsubscribe.html`) with the same sandbox and rules."""
        return self._render(path, context)

    def _render(self, path: str, context: Mapping[str, Any]) -> str:
        try:
            return self.env.get_template(path).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or path}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"{path}: includes a template that does not exist: {exc.name}") from exc
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, TypeError, ValueError) as exc:
            raise TemplateError(f"{_where(exc, self.root) or path}: {exc}") from exc


def _where(exc: BaseException, root: Path) -> str | None:
    """`file:line` of the innermost template frame in the traceback (Jinja maps frames to template lines)."""
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(str(root)):
            where = f"{Path(frame.filename).relative_to(root)}:{frame.lineno}"
    return where


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line == "" and tidy and tidy[-1] == "":
            continue
        tidy.append(line)
    return "\n".join(tidy).strip() + "\n"


# --------------------------------------------------------------------------------------------- MIME


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    recipient: Recipient,
    unsubscribe_url: str,
    message_key: str,
    sent_at: float,
) -> EmailMessage:
    """An RFC 5322 multipart/alternative message (text first, then HTML) with RFC 8058 one-click headers.

    `message_key` (the action id) makes the Message-ID deterministic, so a resend of the same action
    would carry the same id and mail systems can tell it is the same message.
    """
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    display = " ".join((recipient.name or "").split())[:78] or ""
    try:
        msg["To"] = Address(display_name=display, addr_spec=recipient.email)
    except (ValueError, IndexError) as exc:
        raise NoRecipient(
            f"recipient {recipient.user_id!r}: address is not valid for an email header"
        ) from exc
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(sent_at, UTC))
    domain = sender.rsplit("@", 1)[-1].strip(" >") or "pqlflow.invalid"
    msg["Message-ID"] = f"<{hashlib.sha256(message_key.encode()).hexdigest()[:32]}@{domain}>"
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    msg["X-Pqlflow-Template"] = rendered.template
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return msg


def message_bytes(msg: EmailMessage) -> bytes:
    """The exact bytes to send (CRLF line endings, as SMTP and SES `Content.Raw` expect)."""
    return msg.as_bytes(policy=policy.SMTP)


def unsubscribe_link(base_url: str, token: str) -> str:
    """`base_url` with `token=<token>` added to its query."""
    parts = urlsplit(base_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


# ----------------------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Composed:
    """One action's email, ready to send."""

    recipient: Recipient
    rendered: RenderedEmail
    message: EmailMessage


def compose(
    action: NurtureAction,
    *,
    templates: EmailTemplates,
    brand: Brand,
    sender: str,
    unsubscribe_url: str,
    signing_key: bytes,
    token_ttl_seconds: int = unsubscribe.DEFAULT_TTL_DAYS * 86400,
    template: str | None = None,
) -> Composed:
    """Everything between a Nurture Action and the MIME message: recipient, token, context, render.

    `template` overrides the action's (previews). Raises `NoRecipient`, `MailError` or `TemplateError`.
    """
    qualification = qualification_of(action)
    recipient = resolve_recipient(action, qualification)
    name = templates.check_name(template or choose_template(action))
    now = clock.now()
    token = unsubscribe.issue(
        signing_key,
        address_hash=suppression.address_hash(recipient.email),
        account_id=action.account_id,
        user_id=recipient.user_id,
        ttl_seconds=token_ttl_seconds,
        now=now,
    )
    link = unsubscribe_link(unsubscribe_url, token)
    context = build_context(
        action,
        template=name,
        recipient=recipient,
        brand=brand,
        unsubscribe_url=link,
        qualification=qualification,
    )
    rendered = templates.render(name, context)
    message = build_message(
        rendered,
        sender=sender,
        recipient=recipient,
        unsubscribe_url=link,
        message_key=action.action_id,
        sent_at=now,
    )
    return Composed(recipient, rendered, message)


class SendRejected(Exception):
    """SES answered and did not accept the message: it was certainly not sent, so a retry is safe."""


class DeliveryLedger(Protocol):
    """The `EMAIL#<action_id>` marker items: one per action, claimed before the send."""

    def claim(self, account_id: str, action_id: str, attributes: Mapping[str, Any]) -> bool: ...

    def finish(self, account_id: str, action_id: str, status: str, attributes: Mapping[str, Any]) -> None: ...

    def release(self, account_id: str, action_id: str) -> None: ...


class SuppressionCheck(Protocol):
    def is_suppressed(self, hashed: str) -> bool: ...


class Outbox(Protocol):
    def send(self, raw: bytes, *, to: str, template: str) -> str:
        """Send the exact MIME bytes and return the message id; raise `SendRejected` when refused."""
        ...


Outcome = Literal["sent", "duplicate", "suppressed", "no_recipient", "ignored"]


@dataclass(frozen=True)
class Delivery:
    """What happened to one Nurture Action's email (no personal data: safe to log)."""

    outcome: Outcome
    action_id: str
    template: str | None = None
    message_id: str | None = None
    address_hash: str | None = None


@dataclass
class EmailSender:
    """Sends the one email a `Nurture Action` asks for, at most once per action.

    Delivery is **at-most-once**, deliberately. The action's marker item (`EMAIL#<action_id>`) is
    claimed with a conditional put *before* the send and completed after it. A redelivered action finds
    the claim and sends nothing. If the process dies between the claim and the send's answer, the
    claim stays `sending` and no retry sends it: the recipient may miss this nudge, but never gets
    the same nudge twice. For a marketing nudge that is what the person on the other end expects: a
    duplicate looks careless or spammy, costs trust and sender reputation (complaints suppress the
    address for good), while a missed nudge costs little (the account stays qualified and there are
    other nudges). The loss window is kept to the SES call itself: everything that can fail for
    ordinary reasons (bad template, no address, suppression lookup) happens before the claim or
    leaves nothing claimed, and when SES *answers* with a refusal (`SendRejected`, e.g. throttling)
    the claim is released and the error re-raised, so the trigger's retry sends it. Only an
    unanswered call (timeout, crash) is recorded as `unknown`; the error is re-raised for visibility,
    and the retry it causes finds the claim and sends nothing.

    Suppression is checked after the claim, immediately before the send, so an unsubscribe that lands
    while an action waits in a retry is honoured.
    """

    templates: EmailTemplates
    brand: Brand
    sender: str
    unsubscribe_url: str
    signing_key: bytes
    ledger: DeliveryLedger
    suppressions: SuppressionCheck
    outbox: Outbox
    token_ttl_seconds: int = 90 * 86400
    marker_ttl_seconds: int = 180 * 86400

    def prepare(self, action: NurtureAction) -> Composed:
        """Render the action's email and build its MIME message (pure; raises before anything is claimed)."""
        return compose(
            action,
            templates=self.templates,
            brand=self.brand,
            sender=self.sender,
            unsubscribe_url=self.unsubscribe_url,
            signing_key=self.signing_key,
            token_ttl_seconds=self.token_ttl_seconds,
        )

    def deliver(self, action: NurtureAction) -> Delivery:
        if action.channel != "email" or action.outcome != "send":
            return Delivery("ignored", action.action_id, action.template)
        try:
            composed = self.prepare(action)
            recipient, rendered, message = composed.recipient, composed.rendered, composed.message
        except NoRecipient:
            return Delivery("no_recipient", action.action_id, action.template)
        hashed = suppression.address_hash(recipient.email)
        now = clock.now()
        claimed = self.ledger.claim(
            action.account_id,
            action.action_id,
            {
                "template": rendered.template,
                "transition_id": action.transition_id,
                "recipient_user_id": recipient.user_id,
                "address_hash": hashed,
                "claimed_at": _iso(now),
                "expires_at": int(now + self.marker_ttl_seconds),
            },
        )
        if not claimed:
            return Delivery("duplicate", action.action_id, rendered.template, address_hash=hashed)
        if self.suppressions.is_suppressed(hashed):
            self.ledger.finish(action.account_id, action.action_id, "suppressed", {})
            return Delivery("suppressed", action.action_id, rendered.template, address_hash=hashed)
        try:
            message_id = self.outbox.send(
                message_bytes(message), to=recipient.email, template=rendered.template
            )
        except SendRejected:
            self.ledger.release(action.account_id, action.action_id)
            raise
        except Exception:
            # No answer from SES: it may have sent. Keep the claim (at-most-once) and surface the error.
            self.ledger.finish(
                action.account_id, action.action_id, "unknown", {"failed_at": _iso(clock.now())}
            )
            raise
        self.ledger.finish(
            action.account_id,
            action.action_id,
            "sent",
            {"message_id": message_id, "sent_at": _iso(clock.now())},
        )
        return Delivery(
            "sent", action.action_id, rendered.template, message_id=message_id, address_hash=hashed
        )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
