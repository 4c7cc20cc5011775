"""Per-account usage state: the logical model that qualification and backtests read, and its in-memory fold.

`AccountUsage` is what a PQL definition is evaluated on. Live, it is decoded from the DynamoDB item
that ingest writes (`pqlflow.ingest.item`); in a backtest it is built in memory by `apply`, with the
same semantics, so a backtest and the live system agree on every signal.

Times are epoch milliseconds (event time, from the Segment `timestamp`); days are UTC epoch days.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pqlflow.contracts.usage_events import UsageEvent

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SEEN = "$seen"  # pseudo-trait recording when a user was last seen

MAX_EVENT_NAMES = 200  # distinct event/counter names kept per account; see docs/ingest.md
MAX_USERS_PER_DAY = 1000  # distinct active users counted per day (the count saturates there)
MAX_USERS_KEPT = 25  # users whose traits are kept for personalization (most recently seen)
# User traits kept for personalization and rep context. Every write is billed on the whole item's size,
# so the rest of what identify calls carry (addresses, createdAt…) is not kept on the usage item.
DEFAULT_USER_TRAITS = frozenset({
    "email", "name", "firstName", "first_name", "lastName", "last_name", "title", "role", "timezone",
})
MAX_TRAIT_JSON = 1024  # a trait value whose JSON is longer is not kept
# A customer's money, kept as two pseudo account traits (last writer wins, tidied and carried by compaction
# like every trait, and absent from accounts that never pay): the latest conversion event's revenue fields,
# and the latest cancellation. Account traits of these names sent by a product are not kept.
CONVERSION_TRAIT = "$conversion"
CANCELLATION_TRAIT = "$cancellation"
# The subscription as the latest conversion that gave an mrr left it ({mrr, plan, currency}): a later
# conversion without one (an `Order Completed` after the `Subscription Started`) does not erase it
SUBSCRIPTION_TRAIT = "$subscription"
PSEUDO_TRAITS = frozenset({CONVERSION_TRAIT, CANCELLATION_TRAIT, SUBSCRIPTION_TRAIT})
# The AccountUsage attribute each pseudo trait is kept in (on the item they are stored as traits)
PSEUDO_ATTRIBUTES = {CONVERSION_TRAIT: "conversion", CANCELLATION_TRAIT: "cancellation",
                     SUBSCRIPTION_TRAIT: "subscription"}
MONEY_PROPERTIES = ("mrr", "revenue")  # Segment Spec: Subscription Started `mrr`, Order Completed `revenue`
MAX_LABEL_CHARS = 64  # currency and plan as the sender gave them, clipped


def fingerprint(text: str) -> bytes:
    """8-byte fingerprint of an id: the dedupe key of an event (messageId) or of a user in day sets."""
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def seen_stamp(ms: int) -> int:
    """When a user was last seen, kept to the day (UTC): every batch of the day then adds the same element to
    the usage item (a set union adds nothing), where an exact time would add one per batch, billed per KB."""
    return ms - ms % DAY_MS


def day_of(ms: int) -> int:
    return ms // DAY_MS


def hour_of(ms: int) -> int:
    return ms // HOUR_MS


@dataclass(frozen=True, slots=True)
class GaugeSpec:
    """A numeric property whose latest value is kept, e.g. `Contacts Updated` → `properties.total`."""

    event: str
    property: str

    @builtins.property  # the field above shadows the builtin in this class body, for the type checker
    def key(self) -> str:
        return f"{self.event}.{self.property}"


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A counter of one event restricted to property values, e.g. `Feature Used` where `tier` = "paid"."""

    event: str
    property: str
    values: tuple[str | int | float | bool, ...]

    @builtins.property  # as in GaugeSpec
    def key(self) -> str:
        shown = "|".join(json.dumps(v) if not isinstance(v, str) else v for v in self.values)
        return f"{self.event}[{self.property}={shown}]"

    def matches(self, properties: dict[str, Any]) -> bool:
        value = properties.get(self.property)
        return value is not None and not isinstance(value, dict | list) and value in self.values


@dataclass(frozen=True)
class TrackingSpec:
    """What ingest keeps beyond plain counts; derived from the definition in force (and configuration).

    `unit` is the definition's unit: with `user`, usage state is kept per (account, user).
    """

    gauges: tuple[GaugeSpec, ...] = ()
    filters: tuple[FilterSpec, ...] = ()
    conversions: frozenset[str] = frozenset({"Subscription Started", "Plan Upgraded", "Order Completed"})
    cancellations: frozenset[str] = frozenset({"Subscription Cancelled"})
    unit: Literal["account", "user"] = "account"
    retention_days: int = 90
    active_user_days: int = 35
    protected_names: frozenset[str] = frozenset()  # names a definition uses: never dropped by caps
    user_traits: frozenset[str] = DEFAULT_USER_TRAITS  # identify traits kept per user

    @cached_property
    def _gauges_by_event(self) -> dict[str, tuple[GaugeSpec, ...]]:
        return {e: tuple(g for g in self.gauges if g.event == e) for e in {g.event for g in self.gauges}}

    @cached_property
    def _filters_by_event(self) -> dict[str, tuple[FilterSpec, ...]]:
        return {e: tuple(f for f in self.filters if f.event == e) for e in {f.event for f in self.filters}}

    def gauges_for(self, name: str) -> tuple[GaugeSpec, ...]:
        return self._gauges_by_event.get(name, ())

    def filters_for(self, name: str) -> tuple[FilterSpec, ...]:
        return self._filters_by_event.get(name, ())


class GaugeError(ValueError):
    """A gauge property is present but not a finite number; the event is quarantined."""

    def __init__(self, prop: str, value: Any):
        self.field = f"properties.{prop}"
        if isinstance(value, float) and math.isnan(value):
            what = "is NaN"
        elif isinstance(value, float) and math.isinf(value):
            what = "is infinite"
        elif isinstance(value, int) and not isinstance(value, bool):
            what = "is out of range"  # an integer no float can hold (10**400): valid JSON, not a reading
        else:
            what = f"is not a number ({_clip_repr(value)})"
        super().__init__(f"gauge value {what}")


def _clip_repr(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:40] + "…"


def gauge_value(value: Any, prop: str) -> float:
    """A gauge reading as a float, or `GaugeError` (bools, strings, NaN and infinities are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GaugeError(prop, value)
    try:
        number = float(value)
    except OverflowError:
        raise GaugeError(prop, value) from None
    if not math.isfinite(number):
        raise GaugeError(prop, value)
    return number


class RevenueError(GaugeError):
    """A conversion's `mrr` or `revenue` is present but not a finite, non-negative number; quarantined."""

    def __init__(self, prop: str, value: Any):
        ValueError.__init__(self, f"revenue is not a non-negative number ({_clip_repr(value)})")
        self.field = f"properties.{prop}"


def money_fields(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The revenue fields of a conversion's or cancellation's properties.

    `mrr`/`revenue` must be finite numbers ≥ 0 (`RevenueError` otherwise: the event is quarantined with the
    field named, as a bad gauge value is); `currency` and `plan` are kept as text when they are strings."""
    kept: dict[str, Any] = {}
    for prop in MONEY_PROPERTIES:
        if prop in properties and properties[prop] is not None:
            value = properties[prop]
            try:
                number = gauge_value(value, prop)
            except GaugeError:
                raise RevenueError(prop, value) from None
            if number < 0:
                raise RevenueError(prop, value)
            kept[prop] = int(number) if number.is_integer() and abs(number) < 2**53 else number
    for prop in ("currency", "plan"):
        value = properties.get(prop)
        if isinstance(value, str) and value.strip():
            kept[prop] = value.strip()[:MAX_LABEL_CHARS]
    if "currency" in kept:
        kept["currency"] = kept["currency"].upper()
    return kept


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)


def money_json(event: UsageEvent) -> str:
    """`money_fields` of the event's properties as canonical JSON (`{}` when it has none)."""
    return _canonical(money_fields(event.properties))


def customer_traits(event: UsageEvent, spec: TrackingSpec) -> tuple[tuple[str, str], ...]:
    """(pseudo trait, JSON) pairs a track event records about the customer: a conversion's revenue fields
    (and, when it gives an mrr, the subscription's mrr, plan and currency), or a cancellation's; none for
    every other event. Each pseudo trait is newest-wins on its own. Raises `RevenueError` for a bad amount."""
    if event.name in spec.conversions:
        money = money_fields(event.properties)
        if "mrr" not in money:
            return ((CONVERSION_TRAIT, _canonical(money)),)
        subscription: dict[str, Any] = {k: money[k] for k in ("mrr", "plan", "currency") if k in money}
        return (CONVERSION_TRAIT, _canonical(money)), (SUBSCRIPTION_TRAIT, _canonical(subscription))
    if event.name in spec.cancellations:
        return ((CANCELLATION_TRAIT, money_json(event)),)
    return ()


def counter_names(event: UsageEvent, spec: TrackingSpec) -> list[str]:
    """The counters one track event increments: its name, plus each matching property filter."""
    names = [event.name] if event.name else []
    for f in spec.filters_for(event.name or ""):
        if f.matches(event.properties):
            names.append(f.key)
    return names


def gauge_readings(event: UsageEvent, spec: TrackingSpec) -> list[tuple[str, float]]:
    """(gauge key, value) pairs an event carries; raises `GaugeError` for a present, non-numeric value."""
    readings = []
    for g in spec.gauges_for(event.name or ""):
        if g.property in event.properties:
            readings.append((g.key, gauge_value(event.properties[g.property], g.property)))
    return readings


def trait_json(value: Any) -> str | None:
    """Canonical JSON of a trait value, or None when it is too large to keep."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return text if len(text) <= MAX_TRAIT_JSON else None


def newer(a: tuple[int, str], b: tuple[int, str] | None) -> bool:
    """Last-writer-wins by event time; equal times resolve by the larger JSON, so every order agrees."""
    return b is None or a > b


@dataclass
class AccountUsage:
    """Everything a PQL definition can read about one account (or one user, for `unit: user`)."""

    account_id: str
    user_id: str | None = None
    lifetime: dict[str, int] = field(default_factory=dict)
    daily: dict[str, dict[int, int]] = field(default_factory=dict)  # name → epoch day → count
    active_users: dict[int, set[bytes]] = field(default_factory=dict)  # epoch day → user fingerprints
    gauges: dict[str, tuple[int, float]] = field(default_factory=dict)  # key → (ms, value)
    traits: dict[str, tuple[int, str]] = field(default_factory=dict)  # account trait → (ms, JSON)
    users: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)  # user → trait → (ms, JSON)
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    converted_at_ms: int | None = None
    conversion: tuple[int, str] | None = None  # the latest conversion event: (ms, money_json)
    cancellation: tuple[int, str] | None = None  # the latest cancellation event: (ms, money_json)
    subscription: tuple[int, str] | None = None  # the latest conversion with an mrr: (ms, subscription_of)

    # ---- reading -------------------------------------------------------------------------------

    def count(self, name: str) -> int:
        """Lifetime count of an event (or a filtered counter key)."""
        return self.lifetime.get(name, 0)

    def count_between(self, name: str, start_day: int, end_day: int) -> int:
        """Events on days [start_day, end_day] (inclusive, UTC epoch days)."""
        days = self.daily.get(name)
        if not days:
            return 0
        return sum(n for d, n in days.items() if start_day <= d <= end_day)

    def count_last(self, name: str, days: int, now_ms: int) -> int:
        """Events in the last `days` days, today included."""
        today = day_of(now_ms)
        return self.count_between(name, today - days + 1, today)

    def active_users_between(self, start_day: int, end_day: int) -> int:
        seen: set[bytes] = set()
        for d, users in self.active_users.items():
            if start_day <= d <= end_day:
                seen |= users
        return len(seen)

    def active_users_last(self, days: int, now_ms: int) -> int:
        today = day_of(now_ms)
        return self.active_users_between(today - days + 1, today)

    def gauge(self, key: str) -> float | None:
        reading = self.gauges.get(key)
        return reading[1] if reading else None

    def trait(self, key: str) -> Any:
        """An account trait's latest value (from `group` calls; `identify` for a user-alone account)."""
        entry = self.traits.get(key)
        return json.loads(entry[1]) if entry else None

    def user_traits(self, user_id: str) -> dict[str, Any]:
        return {k: json.loads(v) for k, (_, v) in self.users.get(user_id, {}).items() if k != SEEN}

    def user_trait(self, user_id: str, key: str) -> Any:
        """One trait of a user (`user_traits(user_id).get(key)` without decoding the others)."""
        entry = self.users.get(user_id, {}).get(key) if key != SEEN else None
        return json.loads(entry[1]) if entry else None

    def user_last_seen_ms(self, user_id: str) -> int | None:
        entry = self.users.get(user_id, {}).get(SEEN)
        return entry[0] if entry else None

    @property
    def converted(self) -> bool:
        return self.converted_at_ms is not None

    @property
    def last_conversion(self) -> tuple[int, dict[str, Any]] | None:
        """(ms, revenue fields) of the latest conversion event; an item written before revenue was kept
        knows only the first conversion's time, with no fields."""
        if self.conversion is not None:
            return self.conversion[0], json.loads(self.conversion[1])
        if self.converted_at_ms is not None:
            return self.converted_at_ms, {}
        return None

    @property
    def last_subscription(self) -> dict[str, Any]:
        """mrr, plan and currency of the latest conversion that gave an mrr ({} when none did)."""
        return json.loads(self.subscription[1]) if self.subscription is not None else {}

    @property
    def last_cancellation(self) -> tuple[int, dict[str, Any]] | None:
        """(ms, fields) of the latest `Subscription Cancelled`."""
        return (self.cancellation[0], json.loads(self.cancellation[1])) if self.cancellation is not None else None

    def split_customer_traits(self) -> None:
        """Move the customer pseudo traits out of `traits` (decoding an item, where they are stored as traits)."""
        for trait, attribute in PSEUDO_ATTRIBUTES.items():
            entry = self.traits.pop(trait, None)
            if entry is not None:
                setattr(self, attribute, entry)

    # ---- folding events (backtest path; ingest writes the same state through usage_item) ---------

    def apply(self, event: UsageEvent, spec: TrackingSpec) -> None:
        """Fold one valid, already-deduplicated event in. Raises `GaugeError` like ingest would reject it."""
        readings = gauge_readings(event, spec) if event.kind == "track" else []
        customer = customer_traits(event, spec) if event.kind == "track" else ()
        ms = event.ms
        self.first_seen_ms = ms if self.first_seen_ms is None else min(self.first_seen_ms, ms)
        self.last_seen_ms = ms if self.last_seen_ms is None else max(self.last_seen_ms, ms)
        day = day_of(ms)
        users = self.active_users.setdefault(day, set())
        if len(users) < MAX_USERS_PER_DAY:
            users.add(fingerprint(event.user_id))
        self._set_user_trait(event.user_id, SEEN, seen_stamp(ms), "null")
        if event.kind == "track":
            for name in counter_names(event, spec):
                self.lifetime[name] = self.lifetime.get(name, 0) + 1
                per_day = self.daily.setdefault(name, {})
                per_day[day] = per_day.get(day, 0) + 1
            for key, value in readings:
                if newer((ms, repr(value)), _gauge_order(self.gauges.get(key))):
                    self.gauges[key] = (ms, value)
            if event.name in spec.conversions:
                self.converted_at_ms = ms if self.converted_at_ms is None else min(self.converted_at_ms, ms)
            for trait, money in customer:
                attribute = PSEUDO_ATTRIBUTES[trait]
                if newer((ms, money), getattr(self, attribute)):
                    setattr(self, attribute, (ms, money))
        elif event.kind == "group" or (event.kind == "identify" and self.account_id.startswith("user:")):
            for key, value in event.traits.items():
                if key in PSEUDO_TRAITS:
                    continue
                encoded = trait_json(value)
                if encoded is not None and newer((ms, encoded), self.traits.get(key)):
                    self.traits[key] = (ms, encoded)
        if event.kind == "identify":
            for key, value in event.traits.items():
                encoded = trait_json(value) if key in spec.user_traits else None
                if encoded is not None:
                    self._set_user_trait(event.user_id, key, ms, encoded)

    def _set_user_trait(self, user_id: str, key: str, ms: int, encoded: str) -> None:
        traits = self.users.setdefault(user_id, {})
        if newer((ms, encoded), traits.get(key)):
            traits[key] = (ms, encoded)

    def prune(self, now_ms: int, spec: TrackingSpec) -> None:
        """Apply the retention window and caps, exactly as compaction does on the stored item."""
        today = day_of(now_ms)
        oldest = today - spec.retention_days + 1
        for name in list(self.daily):
            kept = {d: n for d, n in self.daily[name].items() if d >= oldest}
            if kept:
                self.daily[name] = kept
            else:
                del self.daily[name]
        oldest_users = today - spec.active_user_days + 1
        for d in [d for d in self.active_users if d < oldest_users]:
            del self.active_users[d]
        self.lifetime, self.daily = cap_names(self.lifetime, self.daily, spec)
        self.users = cap_users(self.users)


def _gauge_order(reading: tuple[int, float] | None) -> tuple[int, str] | None:
    return (reading[0], repr(reading[1])) if reading else None


OTHER = "(other)"


def cap_names(
    lifetime: dict[str, int], daily: dict[str, dict[int, int]], spec: TrackingSpec
) -> tuple[dict[str, int], dict[str, dict[int, int]]]:
    """Keep at most MAX_EVENT_NAMES names: the rest (least counted first, never a name the definition
    uses) are summed into the lifetime counter "(other)" and their daily buckets dropped."""
    if len(lifetime) <= MAX_EVENT_NAMES:
        return lifetime, daily
    ranked = sorted(lifetime, key=lambda n: (n not in spec.protected_names and n != OTHER, -lifetime[n], n))
    keep = set(ranked[: MAX_EVENT_NAMES - 1]) | {OTHER}
    capped = {n: c for n, c in lifetime.items() if n in keep}
    capped[OTHER] = capped.get(OTHER, 0) + sum(c for n, c in lifetime.items() if n not in keep)
    return capped, {n: d for n, d in daily.items() if n in keep}


def cap_users(users: dict[str, dict[str, tuple[int, str]]]) -> dict[str, dict[str, tuple[int, str]]]:
    """Keep the MAX_USERS_KEPT most recently seen users (ties by id, so every order agrees)."""
    if len(users) <= MAX_USERS_KEPT:
        return users
    ranked = sorted(users, key=lambda u: (users[u].get(SEEN, (0, ""))[0], u), reverse=True)
    return {u: users[u] for u in ranked[:MAX_USERS_KEPT]}
