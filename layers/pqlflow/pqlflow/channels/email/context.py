"""The data a nurture email's templates see, made from a `Nurture Action` and the person it goes to.

`build_context(action, ...)` turns the action (its `context` is the `PqlQualified`) and the recipient
into plain data for the templates: recipient, account, usage (top feature, usage against the limit,
teammates active), reasons, offer, social proof, links. User-supplied strings are only ever values in
this data, never template source, so a name of ``{{ 7*7 }}`` renders literally; every trait read as
text loses its control characters, and names (`display_text`) also any RFC 2047 encoded-word, since
they reach mail headers. Pure: no AWS, no environment reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from pqlflow.channels.email.brand import Brand, ContentLink, Incentive
from pqlflow.channels.email.errors import MailError, NoRecipient
from pqlflow.contracts.emitted import NurtureAction, PqlQualified, Reason
from pqlflow.qualify.words import is_one, singular_of

# What send_email uses when the route left `template` empty: the strongest reason decides.
DEFAULT_TEMPLATE_BY_REASON = {"limit": "limit_approaching", "paid_feature": "demo_invite"}
DEFAULT_TEMPLATE = "upgrade_nudge"
# What matters to the reader, most first: a limit they are about to hit, a paid feature they tried, their team
# growing, adoption speeding up, then plain usage. The headline is about the first of these, never simply
# the most frequent event (buying intent, a lead score and traits are never shown to the reader at all).
READER_PRIORITY = ("limit", "paid_feature", "team", "velocity", "usage")


@dataclass(frozen=True)
class Recipient:
    """The person an email goes to. Never logged: log `user_id` or the address hash instead."""

    user_id: str | None
    email: str
    traits: Mapping[str, Any]

    @property
    def name(self) -> str | None:
        name = display_text(self.traits.get("name"))
        if name:
            return name
        parts = [display_text(self.traits.get("first_name")), display_text(self.traits.get("last_name"))]
        return " ".join(p for p in parts if p) or None

    @property
    def first_name(self) -> str | None:
        first = display_text(self.traits.get("first_name") or self.traits.get("firstName"))
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
    # The address as given: one with a control or invisible character is refused, never "cleaned" into
    # some other address.
    raw = user.traits.get("email")
    if not email or not _EMAIL.match(email) or not isinstance(raw, str) or not raw.strip().isprintable():
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
    shown = brand.reasons.shown(reasons)
    highlight = _highlight(shown, brand)
    offer = brand.incentive(action.offer)
    account_name = display_text(traits.get("name")) or display_text(traits.get("company"))
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
            "shown_reasons": [_reason(r, brand) for r in shown],
            "signals": _plain(q.signals),
        },
        "usage": {"feature": feature, "limit": limit, "team": team, "highlight": highlight},
        "offer": _offer(offer, template, brand),
        "content": [
            c.model_dump(mode="json") | {"url": _link(c.url, template, brand)}
            for c in _content(feature, brand)
        ],
        "demo": _demo(feature, brand),
        "social_proof": _social_proof(q.account_id, _proof_topic(feature, highlight, brand), brand),
        "links": links,
    }


def _text(value: Any) -> str | None:
    """A trait as one line of visible text: whitespace collapsed, control and invisible formatting
    characters (NUL, ESC, DEL, bidi overrides, zero-width spaces) removed."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable() or ch in _JOINERS)
    text = " ".join(text.split())
    return text or None


_JOINERS = frozenset("\u200c\u200d")  # ZWNJ and ZWJ: part of how some scripts and emoji are written
# RFC 2047 encoded-word, =?charset?encoding?text?=, which mail clients decode in display names and
# subjects (lenient ones even inside a word): a name must never be one.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[A-Za-z]\?[^?]*\?=")


def display_text(value: Any, limit: int | None = None) -> str | None:
    """A person's or a company's name as it may appear in a mail header (display name, subject) and a
    greeting: `_text`, with RFC 2047 encoded-word syntax taken out (whole encoded-words, then any `=?`
    or `?=` left, so no pass leaves a new one behind), cut to `limit` characters."""
    text = _text(value)
    if text is None:
        return None
    text = _ENCODED_WORD.sub(" ", text)
    while "=?" in text or "?=" in text:
        text = text.replace("=?", "").replace("?=", "")
    text = " ".join(text.split())[:limit].strip()
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


def as_number(value: Any) -> float | None:
    """`value` read leniently as a number ("1,200" is 1200.0); None when it is not one (a bool is not)."""
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


def _feature(key: str, brand: Brand, count: float | None, reason: Reason | None = None) -> dict[str, Any]:
    """A signal as copy names it: brand.yaml's feature when it has one, else the definition's words for it
    (the reason's label), else its name in words. `phrase` is the count with its label agreeing in number:
    "1 HD video", "1,240 HD videos", "1.8 GB of storage", "1 feature used"."""
    known = brand.features.get(key)
    if known:
        many, one = known.label, None
    elif reason and reason.label:
        many, one = reason.label, reason.label_one  # the definition's words, singular from qualify
    else:
        many, one = _humanize(key), None
    one = one or singular_of(many)
    scale = known.scale if known else 1.0
    shown = count / scale if count is not None else None
    unit = known.unit if known else None
    label = one if is_one(shown) and not unit else many
    phrase = None
    if shown is not None:
        phrase = f"{format_number(shown)} {unit} of {many}" if unit else f"{format_number(shown)} {label}"
    return {
        "key": key,
        "label": label,
        "known": known is not None,
        "phrase": phrase,
        "title": (known.title if known and known.title else many[:1].upper() + many[1:]),
        "unit": unit,
        "scale": scale,
        "count": shown,
        "premium_pitch": known.premium_pitch if known else None,
        "advanced_feature": known.advanced_feature if known else None,
        "demo_pitch": known.demo_pitch if known else None,
    }


def format_number(value: Any, digits: int = 1) -> str:
    """A number as emails show it (`1,234`, `3.5`); anything else as its text (the templates' `number` filter)."""
    number = as_number(value)
    if number is None:
        return "" if value is None else str(value)
    if number == int(number):
        return f"{int(number):,}"
    return f"{number:,.{digits}f}"


def _top_feature(
    recipient: Recipient, reasons: Sequence[Reason], q: PqlQualified, brand: Brand, limit: dict | None
) -> dict | None:
    """The feature the email is about: the recipient's `top_feature` trait, else a paid feature they tried,
    else usage, a feature copy knows (brand.yaml) before one it does not, in the definition's order (not
    by count: ten sign-ins are not a feature)."""
    key = _text(recipient.traits.get("top_feature"))
    if key:
        reason = next((r for r in reasons if r.signal == key), None)
        return _feature(key, brand, as_number(q.signals.get(key)), reason)
    ranked = [r for r in reasons if r.signal and r.kind in ("paid_feature", "usage")]
    ranked.sort(key=lambda r: (r.kind != "paid_feature", r.signal not in brand.features))
    if ranked:
        key = ranked[0].signal or ""
        count = as_number(ranked[0].value)
        return _feature(key, brand, count if count is not None else as_number(q.signals.get(key)), ranked[0])
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
        used = as_number(q.signals.get(known.of))
        limit = as_number(q.account_traits.get(known.limit_trait or ""))
        return (known.of, used, limit) if used is not None and limit else None
    signals = {k: v for k, v in q.signals.items() if k != key and (as_number(v) or 0) > 0}
    traits = {k: v for k, v in q.account_traits.items() if (as_number(v) or 0) > 0}
    found = []
    for s_name, s_value in signals.items():
        for t_name, t_value in traits.items():
            quotient = (as_number(s_value) or 0) / (as_number(t_value) or 1)
            if abs(quotient - ratio) <= max(1e-6, ratio * 0.005):
                named = s_name.split("_")[0] in t_name or any(w in t_name for w in ("limit", "quota", "tier"))
                found.append((not named, s_name, t_name))
    if not found:
        return None
    _, s_name, t_name = min(found)
    return s_name, as_number(q.signals[s_name]) or 0.0, as_number(q.account_traits[t_name]) or 0.0


def _limit(reasons: Sequence[Reason], q: PqlQualified, brand: Brand) -> dict | None:
    """Usage against the plan limit, from the first `limit` reason.

    A count reason (2,000 messages, threshold 2,000) is usage against its threshold, or against
    `account_traits.limits[<signal>]` when the account carries its plan limits. A ratio reason (0.8 of a
    contact tier) is resolved to its usage signal and limit trait (`_ratio_parts`); when that fails
    only the percentage is known and `used`/`limit` are None.
    """
    reason = next((r for r in reasons if r.kind == "limit" and as_number(r.value) is not None), None)
    if reason is None:
        return None
    key = reason.signal or reason.code
    value = as_number(reason.value) or 0.0
    threshold = as_number(reason.threshold)
    limits = q.account_traits.get("limits")
    plan_limit = as_number(limits.get(key)) if isinstance(limits, Mapping) else None
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
    active = as_number(q.signals.get("active_users"))
    count = int(active) if active is not None else len(q.users)
    return {"active_users": count, "teammates": max(count - 1, len(others)), "names": names[:3]}


def _reason(reason: Reason, brand: Brand) -> dict[str, Any]:
    feature = _feature(reason.signal, brand, as_number(reason.value), reason) if reason.signal else None
    return {
        "code": reason.code,
        "text": reason.text,
        "kind": reason.kind,
        "signal": reason.signal,
        "label": feature["label"] if feature else None,
        "value": _plain(reason.value),
        "threshold": _plain(reason.threshold),
    }


def _highlight(shown: Sequence[Reason], brand: Brand) -> dict[str, Any] | None:
    """The one reason the headline is about: the first of the reader's reasons by `READER_PRIORITY`, in the
    definition's order within a kind. Its `text` is the definition's words ("5 invites sent")."""
    ranked = [r for r in shown if r.kind in READER_PRIORITY]
    if not ranked:
        return None
    best = min(ranked, key=lambda r: READER_PRIORITY.index(r.kind))
    return _reason(best, brand)


def _proof_topic(feature: dict | None, highlight: dict | None, brand: Brand) -> str | None:
    """What the testimonial should be about: the feature copy knows, else the team when the team grew."""
    if feature is not None and feature["key"] in brand.features:
        return str(feature["key"])
    if highlight is not None and highlight["kind"] == "team" and "active_users" in brand.features:
        return "active_users"
    return feature["key"] if feature else None


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


def _social_proof(account_id: str, key: str | None, brand: Brand) -> dict[str, Any] | None:
    """One testimonial about `key` (a feature) when there is one, the same for the same account every time."""
    if not brand.social_proof:
        return None
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
