"""Routing a qualification to its one nurture action: a pure decision over the policy and a state snapshot.

`route(qualification, policy, state, now)` returns a `Decision`: the `NurtureAction`s to store and
emit (the primary one, plus an optional low-key email alongside a rep task) and the frequency-cap
slots the edge must claim, atomically with storing the actions. It never reads or writes anything;
the route function gathers the `NurtureState` it needs (see `lookups`) and writes the result.

The order of the checks, each of which may end the decision:

1. account suppressed                    → outcome `suppressed`, channel none: the account gets nothing
2. holdout (hash of salt and account id)  → outcome `holdout`, channel none: recorded to measure lift
3. the first policy rule that matches     → channel and template/offer (none matched: `suppressed`)
4. account frequency cap                  → outcome `capped`, channel none, `why` says when and which cap
5. email only: a recipient with an unsuppressed address, else the policy's consent fallback
   (an in-app offer, or `suppressed`)
6. user frequency cap (email and offer)   → `capped`
7. email only: quiet hours in the recipient's time zone → outcome `deferred` with `send_after`

The recipient is the account's most active user: the qualifying user first (for user-unit
definitions), then the most recent `last_seen`, ties kept in the order the qualification lists them.
For email only users with an email trait count. Users without `last_seen` come last.

Ids are deterministic: `action_id(transition_id)` for the primary action and
`action_id(transition_id, "also_email")` for the companion, so redelivered triggers and replays
produce the same ids and downstream consumers dedupe on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pqlflow.contracts.emitted import NurtureAction, PqlQualified, UserSummary
from pqlflow.nurture.policy import (
    WEEKDAYS,
    Comparison,
    Condition,
    Policy,
    QuietHours,
    ReasonMatch,
    Rule,
    Step,
    Then,
    valid_timezone,
)
from pqlflow.nurture.suppression import address_hash  # the suppression list's own key: never drifts

DAY_SECONDS = 86_400
COMPANION = "also_email"


@dataclass(frozen=True)
class NurtureState:
    """What the edge read before deciding. Times are epoch seconds of the last counted nudge."""

    account_suppressed: bool = False
    suppressed_addresses: frozenset[str] = frozenset()
    """`address_hash` of every suppressed address among the candidate recipients'."""
    account_last_nudge_at: float | None = None
    user_last_nudge_at: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CapClaim:
    """A frequency-cap slot to take: fails if `scope`/`id` had a nudge less than `days` ago."""

    scope: Literal["account", "user"]
    id: str
    days: float


@dataclass(frozen=True)
class Lookups:
    """The keys `route` may look at, so the edge reads exactly these and nothing else."""

    account_id: str
    user_ids: tuple[str, ...]
    address_hashes: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    actions: tuple[NurtureAction, ...]
    cap_claims: tuple[CapClaim, ...] = ()
    rule: str | None = None

    @property
    def primary(self) -> NurtureAction:
        return self.actions[0]

    def deliveries(self) -> tuple[NurtureAction, ...]:
        """The actions to put on the bus at their `send_after` (deferred by quiet hours)."""
        return tuple(scheduled_delivery(a) for a in self.actions if a.outcome == "deferred")


def action_id(transition_id: str, part: str = "primary", step: int = 0) -> str:
    """Deterministic: the same qualification (and journey step) always gets the same action id."""
    if step:
        part = f"step{step}" if part == "primary" else f"step{step}:{part}"
    digest = hashlib.sha256(f"nurture:{transition_id}:{part}".encode()).hexdigest()
    return f"act_{digest[:32]}"


def holdout_fraction(account_id: str, salt: str) -> float:
    """Where an account falls in [0, 1): stable for a salt, uniform over accounts."""
    digest = hashlib.sha256(f"{salt}:{account_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(account_id: str, share: float, salt: str) -> bool:
    return share > 0 and holdout_fraction(account_id, salt) < share


def scheduled_delivery(action: NurtureAction) -> NurtureAction:
    """The event a deferral puts on the bus at `send_after`: the same action, now to be sent."""
    return action.model_copy(update={"outcome": "send"})


# --- recipients -----------------------------------------------------------------------------------


def email_of(user: UserSummary) -> str | None:
    email = user.traits.get("email")
    if isinstance(email, str) and "@" in email.strip():
        return email.strip()
    return None


def _seen_at(user: UserSummary) -> float | None:
    if not user.last_seen:
        return None
    try:
        seen = datetime.fromisoformat(user.last_seen)
    except ValueError:
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen.timestamp()


def ranked_users(q: PqlQualified) -> list[UserSummary]:
    """Most active first: the qualifying user, then latest `last_seen`, then the order given."""

    def key(item: tuple[int, UserSummary]) -> tuple[int, int, float, int]:
        index, user = item
        seen = _seen_at(user)
        return (0 if q.user_id and user.user_id == q.user_id else 1, 0 if seen is not None else 1,
                -(seen or 0.0), index)

    return [user for _, user in sorted(enumerate(q.users), key=key)]


def choose_recipient(q: PqlQualified, *, require_email: bool) -> UserSummary | None:
    for user in ranked_users(q):
        if not require_email or email_of(user):
            return user
    return None


def lookups(q: PqlQualified) -> Lookups:
    candidates = (choose_recipient(q, require_email=True), choose_recipient(q, require_email=False))
    users = [u for u in candidates if u]
    ids = tuple(dict.fromkeys(u.user_id for u in users))
    hashes = tuple(dict.fromkeys(address_hash(e) for u in users if (e := email_of(u))))
    return Lookups(q.account_id, ids, hashes)


# --- conditions ------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    a, e = _number(actual), _number(expected)
    if a is not None and e is not None and not (isinstance(actual, str) and isinstance(expected, str)):
        return a == e
    return actual == expected


def compare(values: Mapping[str, Any], test: Comparison) -> bool:
    """A missing (or null) value satisfies only `missing`; mismatched types compare false."""
    actual = values.get(test.name)
    present = actual is not None
    if test.op == "exists":
        return present
    if test.op == "missing":
        return not present
    if not present:
        return False
    if test.op == "==":
        return _equal(actual, test.value)
    if test.op == "!=":
        return not _equal(actual, test.value)
    if test.op in ("in", "not_in"):
        found = any(_equal(actual, v) for v in test.value or [])  # type: ignore[union-attr]
        return found if test.op == "in" else not found
    a, e = _number(actual), _number(test.value)
    if a is None or e is None:
        return False
    return {"<": a < e, "<=": a <= e, ">": a > e, ">=": a >= e}[test.op]


def _one_of(value: Any, allowed: Any) -> bool:
    return value in allowed if isinstance(allowed, list) else value == allowed


def _reason_matches(q: PqlQualified, match: ReasonMatch) -> bool:
    return any(
        (match.kind is None or _one_of(r.kind, match.kind))
        and (match.code is None or _one_of(r.code, match.code))
        for r in q.reasons
    )


@dataclass(frozen=True)
class Engagement:
    """What the recipients did with a journey's earlier steps: (step index, engagement) pairs."""

    rule: Rule | None = None
    seen: frozenset[tuple[int, str]] = frozenset()

    def did(self, step: int | str, events: list[str]) -> bool:
        index = self.rule.step_index(step) if self.rule else None
        return index is not None and any((index, e) in self.seen for e in events)


NO_ENGAGEMENT = Engagement()


def matches(condition: Condition | None, q: PqlQualified, recipient: UserSummary | None = None,
            engagement: Engagement = NO_ENGAGEMENT) -> bool:
    """Whether a policy condition holds for a qualification (and its chosen recipient's traits, and the
    engagement with the journey's earlier steps)."""
    if condition is None:
        return True
    if condition.all_ is not None:
        return all(matches(c, q, recipient, engagement) for c in condition.all_)
    if condition.any_ is not None:
        return any(matches(c, q, recipient, engagement) for c in condition.any_)
    if condition.not_ is not None:
        return not matches(condition.not_, q, recipient, engagement)
    if condition.engaged is not None:
        return engagement.did(condition.engaged.step, condition.engaged.events)
    if condition.touch is not None:
        return _one_of(q.touch, condition.touch)
    if condition.reason is not None:
        return _reason_matches(q, condition.reason)
    if condition.signal is not None:
        return compare(q.signals, condition.signal)
    if condition.trait is not None:
        return compare(q.account_traits, condition.trait)
    if condition.user_trait is not None:
        return compare(recipient.traits if recipient else {}, condition.user_trait)
    if condition.score is not None:
        if q.score is None:
            return False
        return compare({"score": q.score}, Comparison(name="score", op=condition.score.op,
                                                      value=condition.score.value))
    return False


def first_rule(policy: Policy, q: PqlQualified, recipient: UserSummary | None = None) -> Rule | None:
    return next((rule for rule in policy.rules if matches(rule.when, q, recipient)), None)


# --- quiet hours -----------------------------------------------------------------------------------


def recipient_zone(user: UserSummary | None, quiet: QuietHours) -> ZoneInfo:
    name = user.traits.get("timezone") if user else None
    if isinstance(name, str) and valid_timezone(name):
        return ZoneInfo(name)
    return ZoneInfo(quiet.default_timezone)


def next_send_time(now: datetime, zone: ZoneInfo, quiet: QuietHours) -> datetime | None:
    """None when `now` is inside the local sending window; otherwise the next window's start (UTC)."""
    if not quiet.enabled:
        return None
    local = now.astimezone(zone)
    if WEEKDAYS[local.weekday()] in quiet.days and quiet.start_time <= local.time() < quiet.end_time:
        return None
    for days_ahead in range(8):
        day = local.date() + timedelta(days=days_ahead)
        if WEEKDAYS[day.weekday()] not in quiet.days:
            continue
        start = datetime.combine(day, quiet.start_time, tzinfo=zone).astimezone(UTC)
        if start > now:
            return start
    raise AssertionError("quiet hours always have a day within a week")  # days has at least one entry


# --- the decision ----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ago(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def _days(days: float) -> str:
    return f"{days:g} day{'s' if days != 1 else ''}"


@dataclass(frozen=True)
class _Router:
    q: PqlQualified
    policy: Policy
    state: NurtureState
    now: float
    rule: str | None = None
    step: int = 0
    step_name: str | None = None
    send_now: float | None = None
    """When an email would go out, for quiet hours (None: `now`; a late journey step is decided as of its
    planned time, but goes out now)."""

    def action(self, part: str = "primary", **fields: Any) -> NurtureAction:
        return NurtureAction(
            action_id=action_id(self.q.transition_id, part, self.step),
            transition_id=self.q.transition_id,
            account_id=self.q.account_id,
            user_id=self.q.user_id,
            touch=self.q.touch,
            reasons=self.q.reasons,
            context=self.q.model_dump(mode="json"),
            rule=self.rule,
            step=self.step,
            step_name=self.step_name,
            **fields,
        )

    def nothing(self, outcome: str, why: str, part: str = "primary", **fields: Any) -> NurtureAction:
        return self.action(part, channel="none", outcome=outcome, why=why, **fields)

    def user_capped(self, user: UserSummary) -> str | None:
        days = self.policy.caps.user_days
        last = self.state.user_last_nudge_at.get(user.user_id)
        if days and last is not None and self.now - last < days * DAY_SECONDS:
            return (f"user cap: recipient {user.user_id} was nudged {_ago(self.now - last)} ago; "
                    f"at most one nudge per user per {_days(days)}")
        return None

    def user_claim(self, user: UserSummary | None) -> tuple[CapClaim, ...]:
        days = self.policy.caps.user_days
        return (CapClaim("user", user.user_id, days),) if user and days else ()

    def account_claim(self) -> tuple[CapClaim, ...]:
        days = self.policy.caps.account_days
        return (CapClaim("account", self.q.account_id, days),) if days else ()

    def email(self, template: str, part: str, why_prefix: str) -> tuple[NurtureAction | None, NurtureAction,
                                                                           tuple[CapClaim, ...]]:
        """An email action, or (None, the non-send action) when consent or the user cap stops it."""
        recipient = choose_recipient(self.q, require_email=True)
        address = email_of(recipient) if recipient else None
        if recipient is None or address is None:
            why = f"{why_prefix}no user of the account has an email address"
            return None, self.nothing("suppressed", why, part, template=template), ()
        if address_hash(address) in self.state.suppressed_addresses:
            return None, self.nothing("suppressed", f"{why_prefix}recipient's address is suppressed "
                                      "(unsubscribed, bounced or complained)", part, template=template,
                                      recipient_user_id=recipient.user_id), ()
        if capped := self.user_capped(recipient):
            return None, self.nothing("capped", why_prefix + capped, part, template=template,
                                      recipient_user_id=recipient.user_id), ()
        zone = recipient_zone(recipient, self.policy.quiet_hours)
        sending = self.now if self.send_now is None else self.send_now
        send_after = next_send_time(datetime.fromtimestamp(sending, UTC), zone, self.policy.quiet_hours)
        fields: dict[str, Any] = {"channel": "email", "template": template,
                                  "recipient_user_id": recipient.user_id}
        if send_after is not None:
            quiet = self.policy.quiet_hours
            fields |= {"outcome": "deferred", "send_after": _iso(send_after),
                       "why": f"{why_prefix}quiet hours: email goes out {quiet.start}-{quiet.end} "
                              f"{'/'.join(quiet.days)} in {zone.key}"}
        sent = self.action(part, **fields)
        return sent, sent, self.user_claim(recipient)

    def offer(self, offer: str, why: str | None = None) -> Decision:
        recipient = choose_recipient(self.q, require_email=False)
        if recipient and (capped := self.user_capped(recipient)):
            action = self.nothing("capped", capped, offer=offer, recipient_user_id=recipient.user_id)
            return Decision((action,))
        action = self.action(channel="offer", offer=offer, why=why,
                             recipient_user_id=recipient.user_id if recipient else None)
        return Decision((action,), self.account_claim() + self.user_claim(recipient))

    def decide(self) -> Decision:
        q, policy, state = self.q, self.policy, self.state
        if state.account_suppressed:
            return Decision((self.nothing("suppressed", "account is suppressed: it gets no nudge"),))
        holdout = policy.holdout
        recipient = choose_recipient(q, require_email=True) or choose_recipient(q, require_email=False)
        rule = first_rule(policy, q, recipient)
        if q.touch in holdout.touch and in_holdout(q.account_id, holdout.share, holdout.salt):
            # recorded under the rule that would have nudged it, so each rule's lift is against its own holdout;
            # a holdout decision starts no journey
            held = replace(self, rule=rule.name) if rule is not None else self
            return Decision((held.nothing("holdout", f"holdout: {holdout.share:.0%} of accounts get no nudge "
                                                     f"(salt {holdout.salt!r})"),))
        if rule is None:
            return Decision((self.nothing("suppressed", "no policy rule matched"),))
        decision = replace(self, rule=rule.name, step_name=rule.steps[0].name).apply(rule.first, rule.name)
        return Decision(decision.actions, decision.cap_claims, rule.name)

    def apply(self, then: Then, rule: str) -> Decision:
        if then.channel == "none":
            return Decision((self.nothing("suppressed", then.why or f"rule {rule}: no nudge"),))
        days, last = self.policy.caps.account_days, self.state.account_last_nudge_at
        if days and last is not None and self.now - last < days * DAY_SECONDS:
            why = (f"account cap: nudged {_ago(self.now - last)} ago; at most one nudge per account "
                   f"per {_days(days)} (rule {rule} chose {then.channel})")
            return Decision((self.nothing("capped", why, template=then.template, offer=then.offer),))
        if then.channel == "offer":
            return self.offer(then.offer or "")
        if then.channel == "rep_task":
            contact = choose_recipient(self.q, require_email=False)
            task = self.action(channel="rep_task", template=then.template,
                               recipient_user_id=contact.user_id if contact else None)
            if not then.also_email:
                return Decision((task,), self.account_claim())
            _, companion, claims = self.email(then.also_email, COMPANION, "alongside the rep task: ")
            return Decision((task, companion), self.account_claim() + claims)
        sent, record, claims = self.email(then.template or "", "primary", "")
        if sent is not None:
            return Decision((sent,), self.account_claim() + claims)
        consent = self.policy.consent
        if record.outcome == "suppressed" and consent.email_suppressed == "offer" and consent.fallback_offer:
            return self.offer(consent.fallback_offer, why=f"instead of email: {record.why}")
        return Decision((record,))


def route(q: PqlQualified, policy: Policy, state: NurtureState, now: float) -> Decision:
    """The nurture decision for one qualification at `now` (epoch seconds, from `pqlflow.kernel.clock`)."""
    return _Router(q, policy, state, now).decide()


@dataclass(frozen=True)
class StepDecision:
    """A journey step come due: its actions (`decision`), or why it did nothing (skipped), or a stop."""

    decision: Decision | None = None
    stop: Literal["suppressed", "unsubscribed"] | None = None
    why: str = ""


def superseded(q: PqlQualified, policy: Policy, now: float, why: str) -> Decision:
    """The record of a qualification routed after a later one of its subject: no nudge, no journey."""
    return Decision((_Router(q, policy, NurtureState(), now).nothing("suppressed", why),))


def route_step(q: PqlQualified, policy: Policy, rule: Rule, step: int, state: NurtureState,
               engagement: Engagement, now: float, send_now: float | None = None) -> StepDecision:
    """Journey step `step` (≥ 1) of `rule` for qualification `q`, at `now`.

    `now` is what caps are judged at (a late step: its planned time); `send_now` (default `now`) is when
    an email would actually go out, what quiet hours are judged at.

    A suppressed account or a recipient whose address is suppressed (unsubscribed, bounced, complained)
    stops the journey; a step whose `when` does not hold is skipped (the journey goes on); otherwise the
    step's action is decided like the first one: caps, consent and quiet hours apply.
    """
    spec: Step = rule.steps[step]
    if state.account_suppressed:
        return StepDecision(stop="suppressed", why="account is suppressed: it gets no nudge")
    recipient = choose_recipient(q, require_email=True)
    address = email_of(recipient) if recipient else None
    if address and address_hash(address) in state.suppressed_addresses:
        return StepDecision(stop="unsubscribed", why="the recipient's address is suppressed (unsubscribed, "
                            "bounced or complained)")
    recipient = recipient or choose_recipient(q, require_email=False)
    label = f"step {step}" + (f" ({spec.name})" if spec.name else "")
    if not matches(spec.when, q, recipient, engagement):
        return StepDecision(why=f"{label} of rule {rule.name}: its `when` did not hold; skipped")
    router = _Router(q, policy, state, now, rule=rule.name, step=step, step_name=spec.name, send_now=send_now)
    decision = router.apply(spec, rule.name)
    return StepDecision(Decision(decision.actions, decision.cap_claims, rule.name), why=label)

