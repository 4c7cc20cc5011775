"""Pure PQL evaluation: a `Definition` applied to an `AccountUsage`, and the transitions it causes.

`evaluate` computes the signals, rules, points, exclusions and touch level at a given event time, with
human-readable reasons. `decide` turns an evaluation and the stored `PqlState` into at most one
`Transition` (qualified, disqualified, converted, churned), applying exclusions, hysteresis, cooldown and
re-qualification; once an account has converted, only its life as a customer changes: churned (a
`Subscription Cancelled`, or its plan trait back to a free plan, after the conversion), and converted again
by a conversion event after the churn. `needs_decision` says, from a stream record's old and new usage
alone, whether the state could change at all, so the qualify function writes (and reads) nothing for most records.

"Now" is always the usage's event time (`usage.last_seen_ms`), so a replay of history gives the same
answers as live. Windows are whole UTC days (`pqlflow.ingest.usage.day_of`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pqlflow.contracts.emitted import (
    AccountChurned,
    AccountConverted,
    DefinitionRef,
    PqlDisqualified,
    PqlQualified,
    Reason,
    UserSummary,
)
from pqlflow.ingest.usage import DAY_MS, AccountUsage, day_of, fingerprint
from pqlflow.qualify.language import (
    ActiveUsersSignal,
    AllRule,
    AnyRule,
    Condition,
    CountSignal,
    DaysToSignal,
    Definition,
    GaugeSignal,
    NotRule,
    PointsRule,
    RatioSignal,
    ReasonKind,
    TraitSignal,
    VelocitySignal,
)
from pqlflow.qualify.reasons import with_words

Value = float | int | str | bool | None
USER_TRAITS_SHARED = ("email", "name", "first_name", "last_name", "timezone", "title", "role")
MAX_USERS_SHARED = 10


@dataclass
class Evaluation:
    """What a definition says about one account state at one moment, and why."""

    qualified: bool
    excluded: str | None
    score: float | None
    signals: dict[str, Value]
    reasons: list[Reason]
    touch: Literal["high", "low"]
    explain: list[str]
    would_enter: bool = False  # qualifies from not-qualified (threshold)
    would_stay: bool = False  # stays qualified (threshold - margin)
    unmet: list[Reason] = field(default_factory=list)  # why it is not (or no longer) qualified


@dataclass
class PqlState:
    """The qualification state of one subject (account, or user for `unit: user`)."""

    status: Literal["never", "qualified", "disqualified"] = "never"
    since_ms: int | None = None
    version: int | None = None  # definition version of the last qualification
    qualified_at_ms: int | None = None
    converted_reported: bool = False  # ever converted: the subject is a customer (or was one) from then on
    seq: int = 0
    definition_name: str | None = None
    converted_ms: int | None = None  # the conversion last reported (None on items older than churn)
    churned_ms: int | None = None  # the churn last reported, while not converted again since


@dataclass
class Transition:
    kind: Literal["qualified", "disqualified", "converted", "churned"]
    at_ms: int
    evaluation: Evaluation | None
    new_state: PqlState
    win_back: bool = False  # a conversion after a churn


# ---- formatting --------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A value as a person reads it: 2,000 · 0.8 · 12.5 · pro."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if value is None:
        return "unknown"
    return str(value)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def number(value: Any) -> float | None:
    """A finite number from a signal or trait value (numeric text counts; booleans do not), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _plain(value: Any) -> float | str | bool | None:
    """A value as Reason/PqlQualified carry it (numbers, text, booleans)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value
    return str(value)


# ---- signals -------------------------------------------------------------------------------------


def _count_for(usage: AccountUsage, key: str, now_ms: int, last_days: int | None) -> int:
    return usage.count_last(key, last_days, now_ms) if last_days else usage.count(key)


def _velocity(usage: AccountUsage, signal: VelocitySignal, now_ms: int) -> float:
    of = signal.velocity
    today = day_of(now_ms)
    start = today - of.days + 1
    if of.key is not None:
        last = usage.count_between(of.key, start, today)
        before = usage.count_between(of.key, start - of.days, start - 1)
    else:
        last = usage.active_users_between(start, today)
        before = usage.active_users_between(start - of.days, start - 1)
    return round(last / max(before, 1), 4)


def _days_to(usage: AccountUsage, signal: DaysToSignal) -> int | None:
    of = signal.days_to
    if usage.first_seen_ms is None:
        return None
    first = day_of(usage.first_seen_ms)
    if of.key is not None:
        days = usage.daily.get(of.key, {})
        # Counts older than the kept days are known only in total: they happened before the oldest kept day.
        running = usage.count(of.key) - sum(days.values())
        if running >= of.reach:
            return None  # reached before the oldest kept day: the exact day is no longer known
        for d in sorted(days):
            running += days[d]
            if running >= of.reach:
                return max(d - first, 0)
        return None
    seen: set[bytes] = set()
    for d in sorted(usage.active_users):
        seen |= usage.active_users[d]
        if len(seen) >= of.reach:
            return max(d - first, 0)
    return None


def _trait(usage: AccountUsage, signal: TraitSignal) -> Value:
    if signal.scope == "user":
        if usage.user_id is None:
            return None
        return _plain(usage.user_traits(usage.user_id).get(signal.trait))
    value = usage.trait(signal.trait)
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


def signal_value(
    defn: Definition, name: str, usage: AccountUsage, now_ms: int, cache: dict[str, Value]
) -> Value:
    """One signal's value (`trait.<name>` reads an account trait directly)."""
    if name in cache:
        return cache[name]
    value: Value
    if name.startswith("trait.") and name not in defn.signals:
        value = _trait(usage, TraitSignal(trait=name[len("trait.") :]))
        cache[name] = value
        return value
    signal = defn.signals[name]
    if isinstance(signal, CountSignal):
        value = _count_for(usage, signal.key, now_ms, signal.last_days)
    elif isinstance(signal, ActiveUsersSignal):
        window = signal.active_users
        if window.last_days:
            value = usage.active_users_last(window.last_days, now_ms)
        elif usage.first_seen_ms is None:
            value = 0
        else:
            first = day_of(usage.first_seen_ms)
            value = usage.active_users_between(first, first + (window.first_days or 1) - 1)
    elif isinstance(signal, GaugeSignal):
        value = usage.gauge(signal.spec.key)
    elif isinstance(signal, RatioSignal):
        of = number(signal_value(defn, signal.ratio.of, usage, now_ms, cache))
        limit = (
            signal.ratio.limit
            if signal.ratio.limit is not None
            else number(usage.trait(signal.ratio.limit_trait or ""))
        )
        value = round(of / limit, 6) if of is not None and limit else None
    elif isinstance(signal, VelocitySignal):
        value = _velocity(usage, signal, now_ms)
    elif isinstance(signal, DaysToSignal):
        value = _days_to(usage, signal)
    else:
        value = _trait(usage, signal)
    cache[name] = value
    return value


def _describe(defn: Definition, name: str, value: Value, usage: AccountUsage, cache: dict[str, Value]) -> str:
    """Default reason text for a signal's value: '2,000 “Message Sent” events', '3 teammates active…'."""
    if name == "score":
        return f"score of {fmt(value)}"
    if name.startswith("trait.") and name not in defn.signals:
        return f"{name[len('trait.') :]} is {fmt(value)}"
    signal = defn.signals[name]
    label = signal.label
    if isinstance(signal, CountSignal):
        return f"{fmt(value)} {signal.words(value)}"
    if isinstance(signal, ActiveUsersSignal):
        return f"{fmt(value)} {signal.active_words(value)}"
    if isinstance(signal, GaugeSignal):
        return f"{label or signal.gauge.event + ' ' + signal.gauge.property} at {fmt(value)}"
    if isinstance(signal, RatioSignal):
        limit_name = signal.ratio.limit_trait or "limit"
        of = cache.get(signal.ratio.of)
        limit = (
            signal.ratio.limit
            if signal.ratio.limit is not None
            else usage.trait(signal.ratio.limit_trait or "")
        )
        pct = fmt(round((value or 0) * 100, 1)) if isinstance(value, int | float) else "?"
        return f"{pct}% of the {label or limit_name} used ({fmt(of)} of {fmt(limit)})"
    if isinstance(signal, VelocitySignal):
        what = label or (f"“{signal.velocity.count}”" if signal.velocity.count else "active users")
        return f"{what} at {fmt(value)}× the previous {signal.velocity.days} days"
    if isinstance(signal, DaysToSignal):
        what = label or (f"“{signal.days_to.count}” events" if signal.days_to.count else "active users")
        return f"{fmt(signal.days_to.reach)} {what} within {fmt(value)} days of first use"
    return f"{label or signal.trait} is {fmt(value)}"


def _kind_of(defn: Definition, name: str) -> ReasonKind:
    if name == "score":
        return "score"
    signal = defn.signals.get(name)
    return signal.reason_kind if signal is not None else "trait"


def _render(template: str, fields: dict[str, str]) -> str:
    out = template
    for key, text in fields.items():
        out = out.replace("{" + key + "}", text)
    return out


def _template_fields(
    defn: Definition,
    name: str,
    value: Value,
    threshold: Any,
    usage: AccountUsage,
    points: float | None = None,
) -> dict[str, str]:
    signal = defn.signals.get(name)
    fields = {
        "value": fmt(value),
        "threshold": fmt(threshold),
        "signal": name,
        "points": fmt(points),
        "limit": "",
        "days": "",
        "percent": "",
        "event": "",
    }
    if isinstance(signal, RatioSignal):
        limit = (
            signal.ratio.limit
            if signal.ratio.limit is not None
            else usage.trait(signal.ratio.limit_trait or "")
        )
        fields["limit"] = fmt(limit)
        if isinstance(value, int | float):
            fields["percent"] = fmt(round(value * 100, 1))
        if isinstance(threshold, int | float):
            fields["threshold"] = fmt(round(threshold * 100, 1)) + "%"
    if isinstance(signal, CountSignal):
        fields["event"] = signal.count
        fields["days"] = fmt(signal.last_days)
    elif isinstance(signal, ActiveUsersSignal):
        fields["days"] = fmt(signal.active_users.last_days or signal.active_users.first_days)
    elif isinstance(signal, VelocitySignal):
        fields["days"] = fmt(signal.velocity.days)
        fields["event"] = signal.velocity.count or ""
    elif isinstance(signal, GaugeSignal):
        fields["event"] = signal.gauge.event
    return fields


# ---- rules -------------------------------------------------------------------------------------


def compare(op: str, value: Value, threshold: Any) -> bool:
    """Whether `value` meets a condition's `op` and threshold (a missing value meets only ne / not_in)."""
    if op == "exists":
        return (value is not None) == bool(threshold)
    if value is None:
        return op == "ne" or op == "not_in"
    if op in ("gte", "gt", "lte", "lt"):
        numeric = number(value)
        if numeric is None:
            return False
        return {
            "gte": numeric >= threshold,
            "gt": numeric > threshold,
            "lte": numeric <= threshold,
            "lt": numeric < threshold,
        }[op]
    if op in ("eq", "ne"):
        same = _same(value, threshold)
        return same if op == "eq" else not same
    matched = any(_same(value, t) for t in threshold)
    return matched if op == "in" else not matched


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    na, nb = number(a) if not isinstance(a, str) else None, number(b) if not isinstance(b, str) else None
    if na is not None and nb is not None:
        return na == nb
    return str(a).lower() == str(b).lower() if isinstance(a, str) and isinstance(b, str) else a == b


class _Context:
    __slots__ = ("defn", "usage", "now_ms", "cache", "explain", "reasons", "lines")

    def __init__(self, defn: Definition, usage: AccountUsage, now_ms: int, explain: bool, reasons: bool):
        self.defn = defn
        self.usage = usage
        self.now_ms = now_ms
        self.cache: dict[str, Value] = {}
        self.explain = explain
        self.reasons = reasons or explain
        self.lines: list[str] = []

    def value(self, name: str) -> Value:
        return signal_value(self.defn, name, self.usage, self.now_ms, self.cache)

    def reason(self, cond: Condition, code: str, value: Value) -> Reason:
        name = cond.signal_name
        fields = _template_fields(self.defn, name, value, cond.threshold, self.usage)
        text = (
            _render(cond.reason, fields)
            if cond.reason
            else _describe(self.defn, name, value, self.usage, self.cache)
        )
        threshold = cond.threshold
        return Reason(
            code=cond.code or code,
            text=text,
            kind=cond.kind or _kind_of(self.defn, name),
            signal=name,
            value=_plain(value),
            threshold=_plain(threshold)
            if not isinstance(threshold, list)
            else ", ".join(map(fmt, threshold)),
        )


def _rule(ctx: _Context, rule: Any, code: str, depth: int) -> tuple[bool, list[Reason], list[Reason]]:
    """(holds, reasons it holds, reasons it does not)."""
    pad = "  " * depth
    if isinstance(rule, AllRule | AnyRule):
        parts = rule.all if isinstance(rule, AllRule) else rule.any
        word = "all" if isinstance(rule, AllRule) else "any"
        if ctx.explain:
            ctx.lines.append(f"{pad}{word} of:")
        results = [_rule(ctx, r, f"{code}.{word}[{i}]", depth + 1) for i, r in enumerate(parts)]
        holds = all(r[0] for r in results) if word == "all" else any(r[0] for r in results)
        good = [x for r in results if r[0] for x in r[1]]
        bad = [x for r in results if not r[0] for x in r[2]]
        if ctx.explain:
            ctx.lines.append(f"{pad}→ {word}: {'holds' if holds else 'does not hold'}")
        return holds, (good if holds else []), ([] if holds else bad)
    if isinstance(rule, NotRule):
        if ctx.explain:
            ctx.lines.append(f"{pad}not:")
        inner, good, _bad = _rule(ctx, rule.not_, f"{code}.not", depth + 1)
        return (not inner), [], good
    cond: Condition = rule
    value = ctx.value(cond.signal_name)
    holds = compare(cond.op, value, cond.threshold)
    if ctx.explain:
        from pqlflow.qualify.language import OP_SYMBOL

        shown = (
            ", ".join(map(fmt, cond.threshold)) if isinstance(cond.threshold, list) else fmt(cond.threshold)
        )
        ctx.lines.append(
            f"{pad}{'✔' if holds else '✘'} {cond.signal_name} = {fmt(value)} {OP_SYMBOL[cond.op]} {shown}"
        )
    if not ctx.reasons:
        return holds, [], []
    reason = ctx.reason(cond, code, value)
    return holds, ([reason] if holds else []), ([] if holds else [reason])


# ---- points ------------------------------------------------------------------------------------


def decayed_count(usage: AccountUsage, signal: CountSignal, now_ms: int, half_life_days: float) -> float:
    """Events weighted by age: each day's events count 0.5^(age in days / half-life)."""
    today = day_of(now_ms)
    days = usage.daily.get(signal.key, {})
    oldest = today - signal.last_days + 1 if signal.last_days else None
    total = 0.0
    for d, n in days.items():
        if d > today or (oldest is not None and d < oldest):
            continue
        total += n * 0.5 ** ((today - d) / half_life_days)
    if oldest is None:
        older = usage.count(signal.key) - sum(days.values())
        if older > 0:
            age = today - min(days) + 1 if days else 90
            total += older * 0.5 ** (age / half_life_days)
    return total


def _points(ctx: _Context, rule: PointsRule, i: int, half_life: float | None) -> tuple[float, Reason | None]:
    code = rule.code or f"points.rules[{i}]"
    defn = ctx.defn
    if rule.when is not None:
        holds, good, _ = _rule(ctx, rule.when, f"{code}.when", 1)
        pts = float(rule.points or 0) if holds else 0.0
        if ctx.explain:
            ctx.lines.append(f"  {'+' if pts >= 0 else ''}{fmt(pts)} points ({code})")
        if not holds or pts == 0:
            return 0.0, None
        if not ctx.reasons:
            return pts, None
        first = good[0] if good else None
        name = first.signal if first else None
        fields = _template_fields(
            defn,
            name or "",
            first.value if first else None,
            first.threshold if first else None,
            ctx.usage,
            pts,
        )
        text = _render(rule.reason, fields) if rule.reason else (first.text if first else code)
        kind = rule.kind or (first.kind if first else "score")
        return pts, Reason(
            code=code,
            text=text,
            kind=kind,
            signal=name,
            value=first.value if first else None,
            threshold=first.threshold if first else None,
        )
    name = rule.signal or ""
    value = ctx.value(name)
    signal = defn.signals[name]
    units = number(value) or 0.0
    decayed = ""
    if half_life and rule.decay and isinstance(signal, CountSignal):
        units = decayed_count(ctx.usage, signal, ctx.now_ms, half_life)
        decayed = f", {fmt(round(units, 2))} after decay" if ctx.explain else ""
    pts = units * float(rule.each or 0)
    if rule.cap is not None:
        pts = max(-rule.cap, min(rule.cap, pts))
    pts = round(pts, 4)
    if ctx.explain:
        cap = f", cap {fmt(rule.cap)}" if rule.cap is not None else ""
        ctx.lines.append(
            f"  {'+' if pts >= 0 else ''}{fmt(round(pts, 2))} points ({code}: {name} = {fmt(value)}"
            f"{decayed} × {fmt(rule.each)}{cap})"
        )
    if pts == 0 or not ctx.reasons:
        return pts, None
    fields = _template_fields(defn, name, value, None, ctx.usage, pts)
    text = _render(rule.reason, fields) if rule.reason else _describe(defn, name, value, ctx.usage, ctx.cache)
    return pts, Reason(
        code=code,
        text=text,
        kind=rule.kind or _kind_of(defn, name),
        signal=name,
        value=_plain(value),
        threshold=None,
    )


# ---- exclusions --------------------------------------------------------------------------------


def _host(value: str) -> str:
    text = value.strip().lower()
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].split(":", 1)[0]
    return text[4:] if text.startswith("www.") else text


def _internal(host: str, domains: list[str]) -> bool:
    return any(host == d.lower() or host.endswith("." + d.lower()) for d in domains)


def exclusion(defn: Definition, usage: AccountUsage) -> Reason | None:
    """The exclusion that applies to this account, if any. Exclusions always win."""
    ex = defn.exclusions
    if ex.converted and usage.converted:
        return Reason(code="exclusion.converted", text="already a paying customer (converted)", kind="trait")
    account = usage.account_id
    if account in ex.account_ids or any(account.startswith(p) for p in ex.account_id_prefixes):
        return Reason(code="exclusion.account_ids", text="internal or test account", kind="trait")
    for trait, values in ex.paying.items():
        value = usage.trait(trait)
        if value is not None and any(_same(value, v) for v in values):
            return Reason(
                code="exclusion.paying",
                text=f"already paying: {trait} is {fmt(value)}",
                kind="trait",
                signal=f"trait.{trait}",
                value=_plain(value),
            )
    if ex.internal_domains:
        for trait in ex.domain_traits:
            value = usage.trait(trait)
            if isinstance(value, str) and _internal(_host(value), ex.internal_domains):
                return Reason(
                    code="exclusion.internal_domains", text="internal account (company domain)", kind="trait"
                )
        users = [usage.user_id] if usage.user_id else list(usage.users)
        emails = [usage.user_trait(u, "email") for u in users]
        emails = [e for e in emails if isinstance(e, str) and "@" in e]
        if emails and all(_internal(_host(e), ex.internal_domains) for e in emails):
            return Reason(
                code="exclusion.internal_domains", text="internal account (staff email domain)", kind="trait"
            )
    return None


# ---- evaluation --------------------------------------------------------------------------------


def evaluate(
    defn: Definition,
    usage: AccountUsage,
    now_ms: int,
    *,
    was_qualified: bool = False,
    explain: bool = True,
    reasons: bool = True,
) -> Evaluation:
    """Apply a definition to one usage state at `now_ms` (event time). `was_qualified` drives hysteresis.

    `explain` adds the lines `pqlflow definition explain` prints; `reasons=False` skips writing reasons
    (the qualify function's check of every record needs only `would_enter` / `would_stay`).
    """
    ctx = _Context(defn, usage, now_ms, explain, reasons)
    excluded = exclusion(defn, usage)
    score: float | None = None
    point_reasons: list[Reason] = []
    if defn.points is not None:
        if explain:
            ctx.lines.append("points:")
        score = 0.0
        for i, rule in enumerate(defn.points.rules):
            pts, reason = _points(ctx, rule, i, defn.points.half_life_days)
            score += pts
            if reason is not None and pts > 0:
                point_reasons.append(reason)
        score = round(score, 2)
        ctx.cache["score"] = score
    rule_reasons: list[Reason]
    rule_unmet: list[Reason]
    rule_ok, rule_reasons, rule_unmet = True, [], []
    if defn.qualify is not None:
        if explain:
            ctx.lines.append("qualify:")
        rule_ok, rule_reasons, rule_unmet = _rule(ctx, defn.qualify, "qualify", 1)
    enter = stay = rule_ok and excluded is None
    unmet = list(rule_unmet)
    found = list(rule_reasons)
    if defn.points is not None and score is not None:
        pm = defn.points
        enter = enter and score >= pm.threshold
        stay = stay and score >= pm.threshold - pm.margin
        found += sorted(point_reasons, key=lambda r: r.code)
    if defn.points is not None and score is not None and ctx.reasons:
        pm = defn.points
        score_reason = Reason(
            code="points",
            text=f"score {fmt(score)} ({fmt(pm.threshold)} needed)",
            kind="score",
            signal="score",
            value=score,
            threshold=pm.threshold,
        )
        if score >= pm.threshold - (pm.margin if was_qualified else 0):
            found.append(score_reason)
        else:
            floor = pm.threshold - (pm.margin if was_qualified else 0)
            unmet.append(
                score_reason.model_copy(
                    update={"text": f"score {fmt(score)} below {fmt(floor)}", "threshold": floor}
                )
            )
    qualified = stay if was_qualified else enter
    if excluded is not None:
        unmet.insert(0, excluded)
    touch = defn.touch.default
    if defn.touch.high is not None:
        if explain:
            ctx.lines.append("touch high when:")
        high, _, _ = _rule(ctx, defn.touch.high, "touch.high", 1)
        if high:
            touch = "high"
    signals = {name: signal_value(defn, name, usage, now_ms, ctx.cache) for name in defn.signals}
    if score is not None:
        signals["score"] = score
    lines: list[str] = []
    if explain:
        lines = [f"definition {defn.name} v{defn.version} · unit {defn.unit} · at {iso(now_ms)}", "signals:"]
        lines += [f"  {name} = {fmt(value)}" for name, value in signals.items()]
        lines += ctx.lines
        if defn.points is not None and score is not None:
            pm = defn.points
            lines.append(
                f"score {fmt(score)} · threshold {fmt(pm.threshold)} · margin {fmt(pm.margin)}"
                + (" (stays qualified down to " + fmt(pm.threshold - pm.margin) + ")" if pm.margin else "")
            )
        lines.append(f"exclusion: {excluded.text if excluded else 'none'}")
        lines.append(f"result: {'QUALIFIED' if qualified else 'not qualified'} · touch {touch}")
        for r in found if qualified else unmet:
            lines.append(f"  {'because' if qualified else 'missing'}: {r.text} [{r.kind}]")
    return Evaluation(
        qualified=qualified,
        excluded=excluded.text if excluded else None,
        score=score,
        signals=signals,
        reasons=found if qualified else [],
        touch=touch,
        explain=lines,
        would_enter=enter,
        would_stay=stay,
        unmet=unmet,
    )


# ---- transitions -------------------------------------------------------------------------------


DEFAULT_FREE_PLANS = ("free", "trial")  # a `plan` trait that means not paying, when the definition says nothing


def free_plan(defn: Definition, trait: str, value: Any) -> bool:
    """Whether an account trait's value means a free plan: for a trait the definition's `exclusions.paying`
    names, any value not among its paying values; with no `paying` at all, `plan` in DEFAULT_FREE_PLANS."""
    paying = defn.exclusions.paying
    if paying:
        return trait in paying and value is not None and not any(_same(value, v) for v in paying[trait])
    return trait == "plan" and isinstance(value, str) and value.strip().lower() in DEFAULT_FREE_PLANS


def plan_is_free(defn: Definition, usage: AccountUsage) -> tuple[int, str] | None:
    """(ms, trait) when the account's plan trait says a free plan (`free_plan`), else None."""
    for trait in defn.exclusions.paying or ("plan",):
        entry = usage.traits.get(trait)
        if entry is not None and free_plan(defn, trait, usage.trait(trait)):
            return entry[0], trait
    return None


def churn_of(defn: Definition, usage: AccountUsage, since_ms: int) -> tuple[int, str] | None:
    """(ms, reason) of the first sign after `since_ms` (a conversion) that the customer stopped paying:
    its latest `Subscription Cancelled`, or its plan trait set to a free plan (a `group` call after the
    conversion saying so). None while it pays."""
    signs: list[tuple[int, str]] = []
    cancelled = usage.last_cancellation
    if cancelled is not None and cancelled[0] > since_ms:
        signs.append((cancelled[0], "subscription_cancelled"))
    free = plan_is_free(defn, usage)
    if free is not None and free[0] > since_ms:
        signs.append((free[0], "plan_downgraded"))
    return min(signs) if signs else None


def customer_marks(defn: Definition, usage: AccountUsage) -> tuple[Any, ...]:
    """What a customer's transitions depend on: a change here is the only reason to decide again."""
    conversion = usage.last_conversion
    cancelled = usage.last_cancellation
    free = plan_is_free(defn, usage)
    return (conversion[0] if conversion else None, cancelled[0] if cancelled else None, free)


def _customer(usage: AccountUsage, state: PqlState, defn: Definition) -> Transition | None:
    """A customer's next transition: churned while paying, converted again once churned."""
    if state.churned_ms is None:
        since = state.converted_ms if state.converted_ms is not None else usage.converted_at_ms or 0
        churn = churn_of(defn, usage, since)
        if churn is None:
            return None
        return Transition("churned", churn[0], None, replace(state, churned_ms=churn[0], seq=state.seq + 1))
    last = usage.last_conversion
    if last is None or last[0] <= state.churned_ms:
        return None
    return Transition("converted", last[0], None, replace(state, converted_ms=last[0], churned_ms=None,
                                                          seq=state.seq + 1), win_back=True)


def decide(defn: Definition, usage: AccountUsage, state: PqlState | None, now_ms: int) -> Transition | None:
    """The one transition this usage causes from `state`, or None. Conversion is reported once; from then on
    the subject is a customer (never a PQL again): it churns, and may convert again after churning."""
    state = state or PqlState()
    if state.converted_reported:
        return _customer(usage, state, defn)
    if usage.converted and usage.converted_at_ms is not None:
        return Transition(
            "converted",
            usage.converted_at_ms,
            None,
            replace(state, converted_reported=True, converted_ms=usage.converted_at_ms, seq=state.seq + 1),
        )
    was = state.status == "qualified"
    ev = evaluate(defn, usage, now_ms, was_qualified=was, explain=False)
    if was:
        if ev.qualified or (ev.excluded is None and not defn.requalify.disqualify):
            return None
        return Transition(
            "disqualified",
            now_ms,
            ev,
            replace(state, status="disqualified", since_ms=now_ms, seq=state.seq + 1),
        )
    if not ev.qualified:
        return None
    if state.status == "disqualified" and not defn.requalify.again:
        return None
    cooldown_ms = defn.requalify.cooldown_days * DAY_MS
    if state.qualified_at_ms is not None and now_ms - state.qualified_at_ms < cooldown_ms:
        return None
    return Transition(
        "qualified",
        now_ms,
        ev,
        replace(
            state,
            status="qualified",
            since_ms=now_ms,
            version=defn.version,
            qualified_at_ms=now_ms,
            seq=state.seq + 1,
            definition_name=defn.name,
        ),
    )


Hint = Literal["enter", "leave", "convert", "customer", "recheck"]


def needs_decision(defn: Definition, old: AccountUsage | None, new: AccountUsage | None) -> Hint | None:
    """Whether a change from `old` to `new` usage could change the stored state, and how (None: it cannot,
    so nothing is written or read).

    Every earlier change was decided the same way, so a subject qualified before this change still met
    the stay condition on `old`, and one not qualified did not meet the enter condition on `old` (unless a
    cooldown or a newly published definition held it back: those are rechecked once per active day).
    """
    if new is None or new.last_seen_ms is None:
        return None
    if new.converted:
        if old is None or not old.converted:
            return "convert"
        return "customer" if customer_marks(defn, old) != customer_marks(defn, new) else None
    now = new.last_seen_ms
    ev_new = evaluate(defn, new, now, explain=False, reasons=False)
    if old is None or old.last_seen_ms is None:
        return "enter" if ev_new.would_enter else None
    ev_old = evaluate(defn, old, old.last_seen_ms, explain=False, reasons=False)
    if ev_new.would_enter and not ev_old.would_enter:
        return "enter"
    if ev_old.would_stay and not ev_new.would_stay:
        return "leave"
    if ev_new.would_enter and day_of(now) != day_of(old.last_seen_ms):
        return "recheck"
    return None


def state_sk(user_id: str | None) -> str:
    """Sort key of a subject's qualification state item (pk `A#<account_id>`)."""
    return "PQL" if user_id is None else f"PQL#U#{user_id}"


def transition_id(account_id: str, user_id: str | None, seq: int) -> str:
    """Deterministic: the same transition always gets the same id (downstream dedupes on it)."""
    return hashlib.sha256(f"{account_id}\x1f{user_id or ''}\x1f{seq}".encode()).hexdigest()[:32]


def _users(usage: AccountUsage) -> list[UserSummary]:
    ids = (
        [usage.user_id]
        if usage.user_id
        else sorted(usage.users, key=lambda u: (usage.user_last_seen_ms(u) or 0, u), reverse=True)[
            :MAX_USERS_SHARED
        ]
    )
    out = []
    for uid in ids:
        traits = usage.user_traits(uid)
        seen = usage.user_last_seen_ms(uid)
        out.append(
            UserSummary(
                user_id=uid,
                traits={k: traits[k] for k in USER_TRAITS_SHARED if k in traits},
                last_seen=iso(seen) if seen else None,
            )
        )
    return out


def _subject(defn: Definition, usage: AccountUsage, transition: Transition) -> dict[str, Any]:
    """The fields a qualified and a disqualified event share: which transition, of whom, under what."""
    return {
        "transition_id": transition_id(usage.account_id, usage.user_id, transition.new_state.seq),
        "account_id": usage.account_id,
        "user_id": usage.user_id,
        "definition": DefinitionRef(name=defn.name, version=defn.version),
    }


def qualified_event(defn: Definition, usage: AccountUsage, transition: Transition) -> PqlQualified:
    ev = transition.evaluation
    assert ev is not None and transition.kind == "qualified"
    return PqlQualified(
        **_subject(defn, usage, transition),
        qualified_at=iso(transition.at_ms),
        touch=ev.touch,
        score=ev.score,
        reasons=with_words(defn, usage, transition.at_ms, ev.reasons),
        signals={
            k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in ev.signals.items()
        },
        account_traits={k: usage.trait(k) for k in usage.traits},
        users=_users(usage),
    )


def disqualified_event(defn: Definition, usage: AccountUsage, transition: Transition) -> PqlDisqualified:
    ev = transition.evaluation
    assert ev is not None and transition.kind == "disqualified"
    return PqlDisqualified(
        **_subject(defn, usage, transition),
        disqualified_at=iso(transition.at_ms),
        reasons=ev.unmet,
    )


def _money(fields: dict[str, Any], key: str) -> float | None:
    value = fields.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def converted_event(defn: Definition, usage: AccountUsage, transition: Transition) -> AccountConverted:
    """Account Converted, with the revenue of the latest conversion event the account sent. A conversion
    after a churn (a win-back) names no qualification: the PQL's own conversion was the first."""
    state = transition.new_state
    again = transition.win_back
    qualified_at = None if again else state.qualified_at_ms
    ref = None
    if state.version is not None and not again:
        ref = DefinitionRef(name=state.definition_name or defn.name, version=state.version)
    last = usage.last_conversion
    fields = last[1] if last is not None else {}
    # the subscription's mrr and plan, from the latest conversion that gave one (an Order Completed after the
    # Subscription Started gives revenue, not mrr)
    fields = {**usage.last_subscription, **fields}
    return AccountConverted(
        account_id=usage.account_id,
        converted_at=iso(transition.at_ms),
        qualified_at=iso(qualified_at) if qualified_at is not None else None,
        seconds_since_qualified=(transition.at_ms - qualified_at) / 1000
        if qualified_at is not None
        else None,
        definition=ref,
        mrr=_money(fields, "mrr"),
        revenue=_money(fields, "revenue"),
        currency=fields.get("currency"),
        plan=fields.get("plan"),
    )


def churned_event(usage: AccountUsage, transition: Transition, reason: str) -> AccountChurned:
    """Account Churned: the mrr lost is the cancellation's own, else the conversion's."""
    cancelled = usage.last_cancellation
    last = usage.last_conversion
    mrr = _money(cancelled[1], "mrr") if cancelled is not None and reason == "subscription_cancelled" else None
    if mrr is None:
        mrr = _money(usage.last_subscription, "mrr")
    if mrr is None and last is not None:
        mrr = _money(last[1], "mrr")
    converted = transition.new_state.converted_ms or usage.converted_at_ms
    return AccountChurned(
        account_id=usage.account_id,
        churned_at=iso(transition.at_ms),
        converted_at=iso(converted) if converted is not None else None,
        reason="plan_downgraded" if reason == "plan_downgraded" else "subscription_cancelled",
        mrr=mrr,
    )


def transition_event(
    defn: Definition, usage: AccountUsage, transition: Transition
) -> PqlQualified | PqlDisqualified | AccountConverted | AccountChurned:
    """The event a transition emits: PQL Qualified, PQL Disqualified, Account Converted or Account Churned."""
    if transition.kind == "qualified":
        return qualified_event(defn, usage, transition)
    if transition.kind == "disqualified":
        return disqualified_event(defn, usage, transition)
    if transition.kind == "churned":
        churn = churn_of(defn, usage, transition.new_state.converted_ms or usage.converted_at_ms or 0)
        return churned_event(usage, transition, churn[1] if churn else "subscription_cancelled")
    return converted_event(defn, usage, transition)


# ---- the trial-only warning ----------------------------------------------------------------------


def fires_on_trial_alone(defn: Definition) -> str | None:
    """An example of usage made only of `Signed Up` / `Trial Started` that qualifies, or None."""
    now = 20_000 * DAY_MS + 12 * 3_600_000
    day = day_of(now)
    crowds = [1] if defn.unit == "user" else [1, 3, 10, 50, 1000]
    for users in crowds:
        for repeats in (1, 5):
            usage = AccountUsage(account_id="trial-check", user_id="u0" if defn.unit == "user" else None)
            n = users * repeats
            for event in ("Signed Up", "Trial Started"):
                usage.lifetime[event] = n
                usage.daily[event] = {day: n}
            usage.active_users[day] = {fingerprint(f"u{i}") for i in range(users)}
            usage.first_seen_ms = usage.last_seen_ms = now
            if evaluate(defn, usage, now, explain=False, reasons=False).qualified:
                who = "one user" if users == 1 else f"{users} users"
                times = "" if repeats == 1 else f", {repeats} times each"
                return f"e.g. {who} signing up and starting a trial{times}"
    return None
