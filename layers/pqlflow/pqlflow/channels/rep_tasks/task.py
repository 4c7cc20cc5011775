"""Rep follow-up tasks for high-touch PQLs: the roster (YAML), who owns the task (owner trait, else
round-robin), what the task says (why, who is active, usage against limits, talking points) and when it
is due (SLA, optionally in business hours). Pure: `pqlflow.channels.rep_tasks.store` keeps the counters and tasks."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pqlflow.contracts.emitted import NurtureAction, PqlQualified, Reason, RepTaskCreated
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.yamlfile import first_problem, load_config

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Rep(BaseModel):
    """A sales rep. Only ids here: names and emails stay in the CRM."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="stable rep id; an account's owner trait may name it")
    hubspot_owner_id: str | None = None
    # Slack member ids (U…, W… on Enterprise Grid): the one value the Slack message mentions unescaped.
    slack_user_id: str | None = Field(default=None, pattern=r"^[UW][A-Z0-9]{2,}$")
    territories: list[str] = Field(default_factory=list, description="empty: any territory")
    segments: list[str] = Field(default_factory=list, description="empty: any segment")
    active: bool = True

    def serves(self, territory: str | None, segment: str | None) -> bool:
        return _matches(self.territories, territory) and _matches(self.segments, segment)


def _matches(allowed: list[str], value: str | None) -> bool:
    if not allowed:
        return True
    return value is not None and value.lower() in {a.lower() for a in allowed}


def _weekdays() -> list[Weekday]:
    return ["mon", "tue", "wed", "thu", "fri"]


class BusinessHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = "UTC"
    start: str = "09:00"
    end: str = "17:00"
    days: list[Weekday] = Field(default_factory=_weekdays, min_length=1)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"expected HH:MM (24-hour), got {v!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _order(self) -> BusinessHours:
        if self.start >= self.end:
            raise ValueError(f"start {self.start} must be before end {self.end}")
        return self

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def open_close(self, day: date) -> tuple[datetime, datetime]:
        zone = self.zone()
        return (
            datetime.combine(day, time.fromisoformat(self.start), tzinfo=zone),
            datetime.combine(day, time.fromisoformat(self.end), tzinfo=zone),
        )


class Sla(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hours: float = Field(default=24, gt=0, le=24 * 90)
    business_hours: BusinessHours | None = Field(default=None, description="count only these hours")


class Roster(BaseModel):
    """Who gets rep tasks and how: owner trait, round-robin filters, SLA. (Which CRM company a task is on is
    the HubSpot connector's, from its trusted mapping: never from a trait.)"""

    model_config = ConfigDict(extra="forbid")

    owner_trait: str = Field(default="owner", description="account trait naming the owning rep")
    territory_trait: str = "territory"
    segment_trait: str = "segment"
    # Refused (see the validator): kept only to tell a roster written for an older pqlflow what changed.
    company_id_trait: None = Field(default=None, exclude=True)
    high_priority_score: float | None = Field(default=None, description="score at or above → HIGH priority")
    sla: Sla = Field(default_factory=Sla)
    reps: list[Rep] = Field(min_length=1)

    @field_validator("company_id_trait", mode="before")
    @classmethod
    def _no_company_trait(cls, v: object) -> None:
        if v is None:
            return None
        raise ValueError(
            "no longer read: an account trait cannot choose the CRM company (the product's users set "
            "traits). Map accounts to HubSpot companies in the connector secret's `hubspot` object "
            "(companies, or company_property; see docs/deploy.md) and remove this line"
        )

    @model_validator(mode="after")
    def _unique(self) -> Roster:
        seen: set[str] = set()
        for rep in self.reps:
            if rep.id in seen:
                raise ValueError(f"rep id {rep.id!r} appears twice")
            seen.add(rep.id)
        if not any(r.active for r in self.reps):
            raise ValueError("no active rep: round-robin needs at least one")
        return self

    def rep(self, rep_id: str) -> Rep | None:
        return next((r for r in self.reps if r.id == rep_id), None)


def parse_roster(data: Any, source: str = "<roster>") -> Roster:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a roster is a mapping with a `reps:` list")
    try:
        return Roster.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{source}: field {first_problem(exc)}") from None


def load_roster(path: str | Path) -> Roster:
    return parse_roster(load_config(path, "roster"), str(path))


# ---- owner choice -------------------------------------------------------------------------------


class OwnerChoice(BaseModel):
    """Either a fixed owner (the account's owner trait) or a round-robin pool to draw from."""

    source: Literal["trait", "round_robin"]
    owner: str | None = Field(default=None, description="set when source is trait")
    pool: str | None = Field(default=None, description="round-robin counter name, e.g. 'enterprise:emea'")
    eligible: list[str] = Field(default_factory=list, description="rep ids in draw order")


def _trait(traits: dict[str, Any], name: str) -> str | None:
    value = traits.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def choose_owner(qualification: PqlQualified, roster: Roster) -> OwnerChoice:
    """The owner trait wins; otherwise the active reps serving the account's territory and segment
    (falling back to every active rep when none does), sorted so every invocation draws alike."""
    traits = qualification.account_traits
    owner = _trait(traits, roster.owner_trait)
    if owner:
        return OwnerChoice(source="trait", owner=owner)
    territory = _trait(traits, roster.territory_trait)
    segment = _trait(traits, roster.segment_trait)
    active = [r for r in roster.reps if r.active]
    eligible = [r for r in active if r.serves(territory, segment)] or active
    pool = f"{(segment or 'any').lower()}:{(territory or 'any').lower()}"
    return OwnerChoice(source="round_robin", pool=pool, eligible=sorted(r.id for r in eligible))


def pick_round_robin(eligible: list[str], slot: int) -> str:
    """The rep for the `slot`-th task of a pool (slot counts from 0)."""
    if not eligible:
        raise ValueError("round-robin over an empty pool")
    return eligible[slot % len(eligible)]


# ---- due date -----------------------------------------------------------------------------------


def due_at(start: datetime, sla: Sla) -> datetime:
    """`start` plus the SLA, counting only business hours when configured. Returns UTC."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if sla.business_hours is None:
        return (start + timedelta(hours=sla.hours)).astimezone(UTC)
    bh = sla.business_hours
    remaining = timedelta(hours=sla.hours)
    cursor = start.astimezone(bh.zone())
    for _ in range(366 * 2):
        day = cursor.date()
        open_, close = bh.open_close(day)
        if _WEEKDAYS[day.weekday()] in bh.days and cursor < close:
            cursor = max(cursor, open_)
            available = close - cursor
            if remaining <= available:
                return (cursor + remaining).astimezone(UTC)
            remaining -= available
        cursor = bh.open_close(day + timedelta(days=1))[0]
    raise ValueError("SLA does not fit in two years of business hours")


# ---- task content -------------------------------------------------------------------------------


class ActiveUser(BaseModel):
    user_id: str
    name: str | None = None
    email: str | None = None
    title: str | None = None
    last_seen: str | None = None


class UsageLine(BaseModel):
    signal: str
    value: float
    limit: float
    percent: float
    text: str


class Delivery(BaseModel):
    status: Literal["delivered", "failed"]
    ref: str | None = Field(default=None, description="the connector's id for the task, e.g. HubSpot task id")
    error: str | None = None
    attempts: int = 0


TaskStatus = Literal["pending", "stored", "delivered", "delivery_failed"]


class RepTask(BaseModel):
    """A follow-up for the rep, stored as `TASK#<transition_id>` and sent through connectors."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    transition_id: str
    action_id: str
    account_id: str
    owner: str
    owner_source: Literal["trait", "round_robin"]
    hubspot_owner_id: str | None = None
    slack_user_id: str | None = None
    title: str
    body: str
    priority: Literal["HIGH", "MEDIUM", "LOW"] = "MEDIUM"
    created_at: str
    due_at: str
    score: float | None = None
    definition: str
    reasons: list[Reason] = Field(default_factory=list)
    top_signals: dict[str, float | str | bool | None] = Field(default_factory=dict)
    active_users: list[ActiveUser] = Field(default_factory=list)
    usage: list[UsageLine] = Field(default_factory=list)
    talking_points: list[str] = Field(default_factory=list)
    status: TaskStatus = "pending"
    deliveries: dict[str, Delivery] = Field(default_factory=dict)
    created_published: bool = False
    step: int = Field(default=0, ge=0, description="the journey step of the Nurture Action that asked for it")
    # Set once, by the first callback that reports the task closed (`pqlflow.channels.rep_tasks.callbacks`).
    closed_at: str | None = None
    closed_via: Literal["hubspot", "slack", "webhook"] | None = None
    close_outcome: Literal["completed", "dismissed"] | None = None
    close_published: bool = False
    close_claimed_at: int | None = Field(default=None, description="who publishes `Rep Task Closed`, since when")

    @property
    def idempotency_key(self) -> str:
        """Sent to every connector; the CRM uses it to refuse a second copy."""
        return self.task_id

    def created_event(self) -> RepTaskCreated:
        return RepTaskCreated(
            task_id=self.task_id,
            account_id=self.account_id,
            owner=self.owner,
            due_at=self.due_at,
            title=self.title,
            body=self.body,
            transition_id=self.transition_id,
        )


def task_slot(transition_id: str, step: int = 0) -> str:
    """What a task is unique to: its qualification, and its journey step (a journey may ask for two tasks)."""
    return transition_id if step == 0 else f"{transition_id}#S{step}"


def task_id_for(transition_id: str, step: int = 0) -> str:
    return "rt_" + hashlib.sha256(task_slot(transition_id, step).encode()).hexdigest()[:24]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return str(value)
    return f"{number:,.0f}" if number.is_integer() else f"{number:,.2f}"


def usage_against_limits(reasons: list[Reason]) -> list[UsageLine]:
    lines = []
    for r in reasons:
        value, limit = _number(r.value), _number(r.threshold)
        if r.kind != "limit" or value is None or not limit:
            continue
        percent = round(100 * value / limit, 1)
        name = r.signal or r.code
        lines.append(
            UsageLine(
                signal=name,
                value=value,
                limit=limit,
                percent=percent,
                text=f"{name}: {_fmt(value)} of {_fmt(limit)} ({percent:g}%)",
            )
        )
    return lines


def top_signals(q: PqlQualified, limit: int = 5) -> dict[str, float | str | bool | None]:
    """The signals behind the reasons first, then the largest remaining numeric signals."""
    picked: dict[str, float | str | bool | None] = {}
    for r in q.reasons:
        if r.signal and r.signal in q.signals and r.signal not in picked:
            picked[r.signal] = q.signals[r.signal]
    rest = sorted(
        ((k, v) for k, v in q.signals.items() if k not in picked and _number(v) is not None),
        key=lambda kv: (-float(kv[1]), kv[0]),  # type: ignore[arg-type]
    )
    for k, v in rest:
        picked[k] = v
    return dict(list(picked.items())[:limit])


# What a rep should hear first: a limit about to bite, a purchase being weighed, a paid feature tried, the
# team growing, adoption speeding up, then plain use, fit and score. Titles, "why now" and talking points
# follow this order, not the order (or the size) of the definition's counts.
REP_PRIORITY = ("limit", "intent", "paid_feature", "team", "velocity", "usage", "trait", "score")
_WHY_NOW = {
    "limit": "Near a plan limit",
    "intent": "Buying intent",
    "paid_feature": "Trying a paid feature",
    "team": "Team growing",
    "velocity": "Adoption accelerating",
    "usage": "Regular use",
    "trait": "Fits the customer profile",
    "score": "Strong overall engagement",
}
_OFFER = {
    "limit": "the next tier's headroom, before the limit blocks them (talk capacity, not price)",
    "intent": "a walkthrough of the paid plan and a quote: answer plan fit, price and security questions directly",
    "paid_feature": "a short guided demo of what the paid plan adds around the feature they tried",
    "team": "what admins need as the team grows: roles, SSO, central billing",
    "velocity": "a rollout plan for the rest of the team",
    "usage": "a review of how they use the product today and where the paid plan takes it further",
}


def ranked(reasons: list[Reason]) -> list[Reason]:
    """The reasons in the order a rep should hear them (`REP_PRIORITY`), the definition's order within a kind."""
    order = {kind: i for i, kind in enumerate(REP_PRIORITY)}
    return sorted(reasons, key=lambda r: order.get(r.kind, len(order)))


def _name(r: Reason) -> str:
    """The signal in the definition's words ('sign-ins in the last 30 days'), else its name in words."""
    return r.label or (r.signal or r.code).replace("_", " ")


def why_now(r: Reason) -> str:
    return f"{_WHY_NOW.get(r.kind, 'Qualified')}: {r.text}"


def since_last_week(reasons: list[Reason]) -> list[str]:
    """'sign-ins in the last 30 days: 9, up from 5 a week ago (+4)' for each signal whose value a week before
    is known (counts and active users; a gauge or a trait keeps only its latest value); from nothing a week
    ago, 'invites sent: 5, none a week ago'."""
    lines: list[str] = []
    seen: set[str] = set()
    for r in ranked(reasons):
        now = _number(r.value)
        if r.previous is None or now is None or (r.signal or r.code) in seen:
            continue
        seen.add(r.signal or r.code)
        delta = now - r.previous
        if delta == 0:
            lines.append(f"{_name(r)}: {_fmt(now)}, the same as a week ago")
        elif r.previous == 0:
            lines.append(f"{_name(r)}: {_fmt(now)}, none a week ago")
        else:
            way = "up" if delta > 0 else "down"
            lines.append(
                f"{_name(r)}: {_fmt(now)}, {way} from {_fmt(r.previous)} a week ago ({'+' if delta > 0 else '-'}"
                f"{_fmt(abs(delta))})"
            )
    return lines


def what_to_offer(reasons: list[Reason], offer: str | None = None, limit: int = 2) -> list[str]:
    """What to put in front of them, from the strongest reasons' kinds (and the incentive routing chose)."""
    lines = [f"The incentive chosen for this account: {offer}"] if offer else []
    kinds = [k for k in dict.fromkeys(r.kind for r in ranked(reasons)) if k in _OFFER]
    lines += [_OFFER[k][:1].upper() + _OFFER[k][1:] for k in kinds[:limit]]
    return lines or ["Ask what they are trying to get done and whether the current plan still fits."]


def _point(r: Reason) -> str:
    if r.talking_point:
        return r.talking_point  # the definition's author knows the product: their words win
    name = _name(r)
    if r.kind == "limit":
        where = f" ({_fmt(r.value)} of {_fmt(r.threshold)})" if r.value is not None and r.threshold else ""
        return (
            f"They are close to the plan limit on {name}{where}: talk about the headroom the next tier "
            "gives them before they hit the wall, not about price."
        )
    if r.kind == "paid_feature":
        return (
            f"They tried {name}, a paid feature: offer a short guided demo of what the paid plan adds "
            "around it and ask what they hoped it would do."
        )
    if r.kind == "intent":
        return (
            f"Buying intent: they are weighing a purchase ({r.text}). Ask what they need to decide (plan fit, "
            "price, security review, who signs) and offer to walk them through the paid plan."
        )
    if r.kind == "team":
        return (
            f"The team is growing ({r.text}): ask how the rollout is going and what admins need next "
            "(roles, SSO, central billing)."
        )
    if r.kind == "velocity":
        return (
            f"Adoption is accelerating ({r.text}): ask what changed and what outcome they are working toward."
        )
    if r.kind == "score":
        return (
            f"Strong overall engagement ({r.text}): ask which workflows matter most and map them to the plan."
        )
    if r.kind == "trait":
        return (
            f"They fit the ideal customer profile ({r.text}): reference similar customers and their results."
        )
    return (
        f"They use the product regularly ({r.text}): ask what they rely on it for and what the whole team "
        "would need to depend on it."
    )


def talking_points(reasons: list[Reason], limit: int = 5) -> list[str]:
    """One point per signal, in the order a rep should raise them (`REP_PRIORITY`)."""
    points: list[str] = []
    seen: set[tuple[str, str | None]] = set()
    for r in ranked(reasons):
        key = (r.kind, r.signal or r.code)
        if key in seen:
            continue
        seen.add(key)
        points.append(_point(r))
    if not points:
        points.append("Ask what they are trying to get done and whether the current plan still fits.")
    return points[:limit]


def _active_users(q: PqlQualified, limit: int = 10) -> list[ActiveUser]:
    users = sorted(q.users, key=lambda u: u.last_seen or "", reverse=True)
    out = []
    for u in users[:limit]:
        t = u.traits
        out.append(
            ActiveUser(
                user_id=u.user_id,
                name=t.get("name") if isinstance(t.get("name"), str) else None,
                email=t.get("email") if isinstance(t.get("email"), str) else None,
                title=t.get("title") if isinstance(t.get("title"), str) else None,
                last_seen=u.last_seen,
            )
        )
    return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _moment(moment: datetime | str, *, day_only: bool = False) -> str:
    """A time as a person writes it in a task: `Mon 23 Nov 2026, 15:00 UTC` (or `23 Nov 2026`); an ISO
    string that does not parse is shown as it is."""
    parsed = clock.parse_iso(moment) if isinstance(moment, str) else moment
    if parsed is None:
        return str(moment)
    when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    day = f"{when.day} {when:%b %Y}"
    return day if day_only else f"{when:%a} {day}, {when:%H:%M} UTC"


def build_task(
    action: NurtureAction,
    qualification: PqlQualified,
    owner: str,
    owner_source: Literal["trait", "round_robin"],
    roster: Roster,
    now: datetime,
) -> RepTask:
    """The task a rep reads: why (reasons, score, signals), who, usage, what to say, by when."""
    q = qualification
    rep = roster.rep(owner)
    hubspot_owner = rep.hubspot_owner_id if rep else (owner if owner.isdigit() else None)
    company = _trait(q.account_traits, "name") or _trait(q.account_traits, "company") or q.account_id
    due = due_at(now, roster.sla)
    usage = usage_against_limits(q.reasons)
    users = _active_users(q)
    signals = top_signals(q)
    points = talking_points(q.reasons)
    high = bool(usage) or (
        roster.high_priority_score is not None
        and q.score is not None
        and q.score >= roster.high_priority_score
    )
    reasons = ranked(q.reasons)
    headline = why_now(reasons[0]) if reasons else "qualified on product usage"
    title = f"PQL follow-up: {company} — {headline}"[:250]
    labels = {r.signal: r.label for r in q.reasons if r.signal and r.label}

    lines = [
        f"{company} became a product-qualified lead on {_moment(q.qualified_at)} "
        f"(definition {q.definition.name} v{q.definition.version}"
        + (f", score {_fmt(q.score)})." if q.score is not None else ")."),
        "",
        "Why now:",
        *[f"- {why_now(r)}" for r in reasons],
    ]
    changed = since_last_week(reasons)
    if changed:
        lines += ["", "Since last week:", *[f"- {line}" for line in changed]]
    lines += ["", "What to offer:", *[f"- {line}" for line in what_to_offer(reasons, action.offer)]]
    if signals:
        lines += ["", "Top signals:", *[f"- {labels.get(k, k)}: {_fmt(v)}" for k, v in signals.items()]]
    if usage:
        lines += ["", "Usage against limits:", *[f"- {u.text}" for u in usage]]
    if users:
        lines += ["", f"Active users ({len(q.users)}):"]
        for u in users:
            who = " ".join(p for p in (u.name, f"<{u.email}>" if u.email else None) if p) or u.user_id
            seen = f"last seen {_moment(u.last_seen, day_only=True)}" if u.last_seen else None
            extra = ", ".join(p for p in (u.title, seen) if p)
            lines.append(f"- {who}" + (f" ({extra})" if extra else ""))
    lines += ["", "Suggested talking points:", *[f"- {p}" for p in points]]
    sla = f"{roster.sla.hours:g}h" + (" in business hours" if roster.sla.business_hours else "")
    lines += ["", f"Due {_moment(due)} (SLA {sla})."]

    return RepTask(
        task_id=task_id_for(q.transition_id, action.step),
        transition_id=q.transition_id,
        action_id=action.action_id,
        step=action.step,
        account_id=q.account_id,
        owner=owner,
        owner_source=owner_source,
        hubspot_owner_id=hubspot_owner,
        slack_user_id=rep.slack_user_id if rep else None,
        title=title,
        body="\n".join(lines),
        priority="HIGH" if high else "MEDIUM",
        created_at=_iso(now),
        due_at=_iso(due),
        score=q.score,
        definition=f"{q.definition.name} v{q.definition.version}",
        reasons=list(q.reasons),
        top_signals=signals,
        active_users=users,
        usage=usage,
        talking_points=points,
    )


def settle(task: RepTask, configured: list[str]) -> TaskStatus:
    """The task's status once every configured connector has been tried."""
    if not configured:
        return "stored"
    if all(task.deliveries.get(n) and task.deliveries[n].status == "delivered" for n in configured):
        return "delivered"
    return "delivery_failed"
