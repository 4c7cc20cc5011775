"""The hot usage item in DynamoDB: one idempotent UpdateItem per account per batch, and its decoding.

Exactly-once without a read: every change a batch makes is a *set union* (DynamoDB `ADD` on a set),
which is idempotent and commutative. An event is recorded as its 8-byte messageId fingerprint in the
set of its (event hour, counter name) slot; a count is the size of those sets plus the cold item's total.
Redelivered, reordered or re-batched events therefore leave the item exactly as one clean delivery
would, and a crash between any two writes is repaired by redelivery. Last-writer-wins values
(gauges, traits) are sets of "<event ms>|<value>" elements whose maximum wins; first/last seen and
conversion time are number sets whose min/max win.

Every write is billed on the whole item, so it holds only what arrived since the last compaction
(`pqlflow.ingest.compaction`), which moves the rest to the cold item (`pqlflow.ingest.cold`). A slot of an
hour at or before the fold watermark `fw` is *late* (a copy, or an event that arrived after its hour was
folded): it is not counted until compaction has checked it against the archive. See docs/ingest.md.

Attributes (all names short; item size is money):
  pk "A#<account>"  sk "USAGE" | "USAGE#U#<user>"   kind "usage"   aid, uid
  p<hour>|<name>  BS  fingerprints of events counted under <name> in that event hour (pending)
  cver            N   compaction version (the cold item's `v`);  fw  N  fold watermark (an event hour)
  u<day>          BS  fingerprints of users active that day
  g|<key>         SS  "<ms13>|<repr(value)>" gauge readings
  ta              SS  "<ms13>|<json [trait, value-json]>"        account traits
  tu              SS  "<ms13>|<json [user, trait, value-json]>"  user traits ($seen = last seen, to the day)
  ts              NS  event times (min = first seen, max = last seen);  cv  NS  conversion times
The layout before the cold item also had (read, and removed by the next compaction):
  lc  M  name → lifetime count folded so far;  dc  M  name → {epoch day → count};  t<hour>  N  last touch"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any

from pqlflow.contracts.usage_events import UsageEvent
from pqlflow.ingest.cold import ColdUsage, StaleCold
from pqlflow.ingest.usage import (
    DAY_MS,
    HOUR_MS,
    MAX_USERS_PER_DAY,
    PSEUDO_ATTRIBUTES,
    PSEUDO_TRAITS,
    SEEN,
    AccountUsage,
    TrackingSpec,
    counter_names,
    customer_traits,
    fingerprint,
    gauge_readings,
    newer,
    seen_stamp,
    trait_json,
)

KIND = "usage"
MAX_CLAUSES = 80  # set clauses per UpdateItem; a batch spanning more slots is split (each part idempotent)
SIZE_SOFT_LIMIT = 200_000  # bytes: compaction folds even the current hour's fingerprints above this
SIZE_TARGET = 120_000
# Superseded gauge/trait/time elements tolerated before compaction tidies them. Writes are billed per KB
# of item size, so tidying pays off once it saves a few KB on every later write.
REDUNDANT_BYTES_LIMIT = 4096


def usage_key(account_id: str, user_id: str | None = None) -> dict[str, dict[str, str]]:
    sk = "USAGE" if user_id is None else f"USAGE#U#{user_id}"
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": sk}}


def _stamp(ms: int) -> str:
    return f"{ms:013d}|"


def _trait_element(ms: int, key: str, encoded: str) -> str:
    """"<ms13>|[key, value-json]": the same text as json.dumps([key, encoded]), built without its overhead."""
    return f"{ms:013d}|[{_quote(key)}, {_quote(encoded)}]"


def _user_trait_element(ms: int, user: str, key: str, encoded: str) -> str:
    return f"{ms:013d}|[{_quote(user)}, {_quote(key)}, {_quote(encoded)}]"


@dataclass
class SubjectDelta:
    """What one batch changes for one subject (an account, or an account's user for `unit: user`)."""

    account_id: str
    user_id: str | None = None
    slots: dict[tuple[int, str], set[bytes]] = field(default_factory=dict)
    users: dict[int, set[bytes]] = field(default_factory=dict)
    gauges: dict[str, tuple[int, float]] = field(default_factory=dict)
    traits: dict[str, tuple[int, str]] = field(default_factory=dict)
    user_traits: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    min_ms: int | None = None
    max_ms: int | None = None
    converted_ms: int | None = None

    def add(self, event: UsageEvent, spec: TrackingSpec, fp: bytes | None = None,
            user_fp: bytes | None = None) -> None:
        """Fold one valid event in (`fp`/`user_fp`: its fingerprints, when the caller has them).

        Raises `GaugeError`, before changing anything, for a bad gauge value.
        """
        kind = event.kind
        readings = gauge_readings(event, spec) if kind == "track" and spec.gauges else []
        customer = customer_traits(event, spec) if kind == "track" else ()
        ms = event.ms
        if self.min_ms is None or ms < self.min_ms:
            self.min_ms = ms
        if self.max_ms is None or ms > self.max_ms:
            self.max_ms = ms
        day_users = self.users.get(ms // DAY_MS)
        if day_users is None:
            day_users = self.users[ms // DAY_MS] = set()
        if len(day_users) < MAX_USERS_PER_DAY:
            day_users.add(user_fp or fingerprint(event.user_id))
        seen = self.user_traits.get((event.user_id, SEEN))
        stamp = seen_stamp(ms)
        if seen is None or stamp > seen[0]:
            self.user_traits[(event.user_id, SEEN)] = (stamp, "null")
        if kind == "track":
            if TYPE_CHECKING:
                assert event.name is not None  # parse_message gives every track event a name
            fp = fp or fingerprint(event.message_id)
            hour = ms // HOUR_MS
            slots = self.slots
            names = counter_names(event, spec) if spec.filters else (event.name,)
            for name in names:
                slot = slots.get((hour, name))
                if slot is None:
                    slots[(hour, name)] = {fp}
                else:
                    slot.add(fp)
            for key, value in readings:
                current = self.gauges.get(key)
                if current is None or (ms, repr(value)) > (current[0], repr(current[1])):
                    self.gauges[key] = (ms, value)
            if event.name in spec.conversions:
                self.converted_ms = ms if self.converted_ms is None else min(self.converted_ms, ms)
            for trait, money in customer:
                if newer((ms, money), self.traits.get(trait)):
                    self.traits[trait] = (ms, money)
        elif kind == "group" or (kind == "identify" and event.account_id.startswith("user:")):
            for key, value in event.traits.items():
                if key in PSEUDO_TRAITS:
                    continue
                encoded = trait_json(value)
                if encoded is not None and newer((ms, encoded), self.traits.get(key)):
                    self.traits[key] = (ms, encoded)
        if kind == "identify":
            for key, value in event.traits.items():
                encoded = trait_json(value) if key in spec.user_traits else None
                if encoded is not None:
                    self._user_trait(event.user_id, key, ms, encoded)

    def _user_trait(self, user_id: str, key: str, ms: int, encoded: str) -> None:
        if newer((ms, encoded), self.user_traits.get((user_id, key))):
            self.user_traits[(user_id, key)] = (ms, encoded)


class _Expression:
    """Builds one UpdateItem's expression with placeholders; every clause is a set union or a SET."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.set: list[str] = []
        self.add: list[str] = []
        self.delete: list[str] = []
        self.remove: list[str] = []

    def name(self, attr: str) -> str:
        placeholder = f"#a{len(self.names)}"
        self.names[placeholder] = attr
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = value
        return placeholder

    @property
    def clauses(self) -> int:
        return len(self.set) + len(self.add) + len(self.delete) + len(self.remove)

    def union(self, verb: str, attr: str, value: Any) -> None:
        """One SET or ADD clause (the happy path only ever sets or adds)."""
        n = len(self.names)
        self.names[f"#a{n}"] = attr
        m = len(self.values)
        self.values[f":v{m}"] = value
        if verb == "SET":
            self.set.append(f"#a{n} = :v{m}")
        else:
            self.add.append(f"#a{n} :v{m}")

    def render(self) -> str:
        parts = []
        for verb, items in (("SET", self.set), ("ADD", self.add), ("DELETE", self.delete), ("REMOVE", self.remove)):
            if items:
                parts.append(f"{verb} " + ", ".join(items))
        return " ".join(parts)

    def request(self, table: str, key: dict[str, Any], **extra: Any) -> dict[str, Any]:
        request = {"TableName": table, "Key": key, "UpdateExpression": self.render(),
                   "ExpressionAttributeNames": self.names, **extra}
        if self.values:
            request["ExpressionAttributeValues"] = self.values
        return request


def _set_clauses(delta: SubjectDelta, now_ms: int, active_user_days: int) -> Iterable[tuple[str, str, Any]]:
    """(verb, attribute, value) for every change of a delta; all idempotent (set unions and constants).

    Active users of a day older than the window they are kept for are not written at all: compaction would
    only remove them again (a backfill would pay a write for nothing)."""
    for (hour, name), fps in delta.slots.items():
        yield "ADD", f"p{hour}|{name}", {"BS": list(fps)}
    oldest_user_day = now_ms // DAY_MS - active_user_days + 1
    for day, users in delta.users.items():
        if day >= oldest_user_day:
            yield "ADD", f"u{day}", {"BS": list(users)}
    for key, (ms, value) in sorted(delta.gauges.items()):
        yield "ADD", f"g|{key}", {"SS": [_stamp(ms) + repr(value)]}
    if delta.traits:
        yield "ADD", "ta", {"SS": [_trait_element(ms, k, enc) for k, (ms, enc) in delta.traits.items()]}
    if delta.user_traits:
        yield "ADD", "tu", {"SS": [_user_trait_element(ms, u, k, enc)
                                   for (u, k), (ms, enc) in delta.user_traits.items()]}
    if delta.min_ms is not None and delta.max_ms is not None:
        yield "ADD", "ts", {"NS": sorted({str(delta.min_ms), str(delta.max_ms)})}
    if delta.converted_ms is not None:
        yield "ADD", "cv", {"NS": [str(delta.converted_ms)]}


def update_requests(table: str, delta: SubjectDelta, now_ms: int, active_user_days: int = 35) -> list[dict[str, Any]]:
    """UpdateItem requests (usually exactly one) that apply a delta; the last one returns ALL_NEW."""
    key = usage_key(delta.account_id, delta.user_id)
    requests: list[dict[str, Any]] = []
    expr = _identity(delta)
    clauses = 0
    for verb, attr, value in _set_clauses(delta, now_ms, active_user_days):
        if clauses >= MAX_CLAUSES:
            requests.append(expr.request(table, key))
            expr, clauses = _identity(delta), 0
        expr.union(verb, attr, value)
        clauses += 1
    requests.append(expr.request(table, key, ReturnValues="ALL_NEW"))
    return requests


def _identity(delta: SubjectDelta) -> _Expression:
    expr = _Expression()
    expr.set.append(f"{expr.name('kind')} = {expr.value({'S': KIND})}")
    expr.set.append(f"{expr.name('aid')} = {expr.value({'S': delta.account_id})}")
    if delta.user_id is not None:
        expr.set.append(f"{expr.name('uid')} = {expr.value({'S': delta.user_id})}")
    return expr


# ---- decoding ----------------------------------------------------------------------------------


def _binary(value: bytes | str) -> bytes:
    """Binary values are bytes from boto3 and base64 text in stream events delivered to Lambda."""
    return value if isinstance(value, bytes | bytearray) else base64.b64decode(value)


def plain(value: dict[str, Any]) -> Any:
    """A low-level DynamoDB attribute value ({"S": ...}, {"M": ...}) as a plain Python value."""
    (tag, inner), = value.items()
    if tag == "S":
        return inner
    if tag == "N":
        return int(inner) if inner.lstrip("-").isdigit() else float(inner)
    if tag == "BS":
        return {_binary(b) for b in inner}
    if tag == "SS":
        return set(inner)
    if tag == "NS":
        return {int(n) if n.lstrip("-").isdigit() else float(n) for n in inner}
    if tag == "M":
        return {k: plain(v) for k, v in inner.items()}
    if tag == "L":
        return [plain(v) for v in inner]
    if tag == "B":
        return _binary(inner)
    if tag == "BOOL":
        return inner
    if tag == "NULL":
        return None
    raise ValueError(f"unknown DynamoDB type {tag}")


@dataclass
class StoredUsage:
    """The usage item as stored, parsed: pending sets and folded totals kept apart for compaction."""

    account_id: str
    user_id: str | None
    pending: dict[tuple[int, str], set[bytes]]
    touched: dict[int, int]
    lifetime: dict[str, int]
    daily: dict[str, dict[int, int]]
    cver: int
    users: dict[int, set[bytes]]
    gauges: dict[str, set[str]]
    traits: set[str]
    user_traits: set[str]
    times: set[int]
    conversions: set[int]
    size: int
    fw: int | None = None  # fold watermark: the last event hour compaction folded into the cold item
    legacy_totals: bool = False  # `lc`/`dc` on the hot item: the layout before the cold item (read, migrated)

    @classmethod
    def parse(cls, item: dict[str, dict[str, Any]]) -> StoredUsage:
        stored = cls(account_id=item["aid"]["S"] if "aid" in item else item["pk"]["S"][2:],
                     user_id=item["uid"]["S"] if "uid" in item else None,
                     pending={}, touched={}, lifetime={}, daily={}, cver=0, users={}, gauges={},
                     traits=set(), user_traits=set(), times=set(), conversions=set(), size=0)
        size = 0
        for attr, value in item.items():
            size += len(attr) + _value_size(value)
            first = attr[0]
            if first == "p" and "|" in attr:
                hour, name = attr[1:].split("|", 1)
                stored.pending[(int(hour), name)] = {_binary(b) for b in value["BS"]}
            elif first == "t" and attr[1:].isdigit():
                stored.touched[int(attr[1:])] = int(value["N"])
            elif first == "u" and attr[1:].isdigit():
                stored.users[int(attr[1:])] = {_binary(b) for b in value["BS"]}
            elif attr.startswith("g|"):
                stored.gauges[attr[2:]] = set(value["SS"])
            elif attr == "lc":
                stored.lifetime = {k: int(v["N"]) for k, v in value["M"].items()}
                stored.legacy_totals = True
            elif attr == "dc":
                stored.daily = {k: {int(d): int(n["N"]) for d, n in v["M"].items()} for k, v in value["M"].items()}
                stored.legacy_totals = True
            elif attr == "cver":
                stored.cver = int(value["N"])
            elif attr == "fw":
                stored.fw = int(value["N"])
            elif attr == "ta":
                stored.traits = set(value["SS"])
            elif attr == "tu":
                stored.user_traits = set(value["SS"])
            elif attr == "ts":
                stored.times = {int(n) for n in value["NS"]}
            elif attr == "cv":
                stored.conversions = {int(n) for n in value["NS"]}
        stored.size = size
        return stored

    @property
    def needs_cold(self) -> bool:
        """True once a compaction of this layout has run: the folded part is in the cold item."""
        return self.fw is not None

    def is_late(self, hour: int) -> bool:
        """A pending slot of an hour already folded: a copy, or an event arriving after its hour was folded.
        It is not counted until compaction has checked it against that hour's archive."""
        return self.fw is not None and hour <= self.fw

    def with_cold(self, cold: ColdUsage | None) -> StoredUsage:
        """This hot image with the cold item of its compaction version folded in (as one logical item)."""
        if not self.needs_cold:
            return self
        if cold is None or cold.version != self.cver:
            raise StaleCold(self.cver, cold.version if cold else None)
        users = {d: set(u) for d, u in cold.users.items()}
        for day, fps in self.users.items():
            users.setdefault(day, set()).update(fps)
        gauges = {k: set(v) for k, v in self.gauges.items()}
        for key, element in cold.gauges.items():
            gauges.setdefault(key, set()).add(element)
        return replace(self, lifetime=dict(cold.lifetime), daily={n: dict(d) for n, d in cold.daily.items()},
                       users=users, gauges=gauges, traits=self.traits | set(cold.traits),
                       user_traits=self.user_traits | set(cold.user_traits), times=self.times | set(cold.times),
                       conversions=self.conversions | set(cold.conversions))

    def to_usage(self, cold: ColdUsage | None = None) -> AccountUsage:
        """The logical state: folded totals plus every pending slot not awaiting its late check."""
        merged = self.with_cold(cold)
        usage = AccountUsage(self.account_id, self.user_id)
        lifetime = dict(merged.lifetime)
        daily = {name: dict(days) for name, days in merged.daily.items()}
        for (hour, name), fps in merged.pending.items():
            if merged.is_late(hour):
                continue
            lifetime[name] = lifetime.get(name, 0) + len(fps)
            per_day = daily.setdefault(name, {})
            day = hour // 24
            per_day[day] = per_day.get(day, 0) + len(fps)
        usage.lifetime, usage.daily = lifetime, daily
        usage.active_users = {day: set(users) for day, users in merged.users.items()}
        for key, elements in merged.gauges.items():
            best = max(elements, key=_gauge_order)
            usage.gauges[key] = (int(best[:13]), float(best[14:]))
        for key, (ms, enc) in _latest_traits(merged.traits).items():
            usage.traits[key] = (ms, enc)
        usage.split_customer_traits()
        for (user, key), (ms, enc) in _latest_user_traits(merged.user_traits).items():
            usage.users.setdefault(user, {})[key] = (ms, enc)
        if merged.times:
            usage.first_seen_ms, usage.last_seen_ms = min(merged.times), max(merged.times)
        if merged.conversions:
            usage.converted_at_ms = min(merged.conversions)
        return usage


def _gauge_order(element: str) -> tuple[int, str]:
    return int(element[:13]), element[14:]


def _latest_traits(elements: Iterable[str]) -> dict[str, tuple[int, str]]:
    latest: dict[str, tuple[int, str]] = {}
    for element in elements:
        key, enc = json.loads(element[14:])
        candidate = (int(element[:13]), enc)
        if newer(candidate, latest.get(key)):
            latest[key] = candidate
    return latest


def _latest_user_traits(elements: Iterable[str]) -> dict[tuple[str, str], tuple[int, str]]:
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for element in elements:
        user, key, enc = json.loads(element[14:])
        candidate = (int(element[:13]), enc)
        if newer(candidate, latest.get((user, key))):
            latest[(user, key)] = candidate
    return latest


def _value_size(value: dict[str, Any]) -> int:
    (tag, inner), = value.items()
    if tag in ("S", "N"):
        return len(inner)
    if tag == "BS":
        return sum(len(_binary(b)) if not isinstance(b, bytes | bytearray) else len(b) for b in inner)
    if tag == "B":
        return len(inner) if isinstance(inner, bytes | bytearray) else len(_binary(inner))
    if tag in ("SS", "NS"):
        return sum(len(x) for x in inner)
    if tag == "M":
        return 3 + sum(len(k) + 1 + _value_size(v) for k, v in inner.items())
    if tag == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    return 1


def decode_image(image: dict[str, dict[str, Any]], cold: ColdUsage | None = None) -> AccountUsage:
    """The AccountUsage of a usage item (a GetItem/UpdateItem result or a stream record's NewImage) and, once
    it has been compacted, the cold item of the same compaction version (`StaleCold` otherwise)."""
    return StoredUsage.parse(image).to_usage(cold)


def encode_usage(usage: AccountUsage, now_ms: int) -> dict[str, dict[str, Any]]:
    """A fully compacted usage item for an AccountUsage (tests and tools; ingest never writes this way)."""
    key = usage_key(usage.account_id, usage.user_id)
    item: dict[str, dict[str, Any]] = {**key, "kind": {"S": KIND}, "aid": {"S": usage.account_id}}
    if usage.user_id is not None:
        item["uid"] = {"S": usage.user_id}
    item["lc"] = {"M": {n: {"N": str(c)} for n, c in usage.lifetime.items()}}
    item["dc"] = {"M": {n: {"M": {str(d): {"N": str(c)} for d, c in days.items()}}
                        for n, days in usage.daily.items()}}
    for day, users in usage.active_users.items():
        if users:
            item[f"u{day}"] = {"BS": sorted(users)}
    for key_, (ms, value) in usage.gauges.items():
        item[f"g|{key_}"] = {"SS": [_stamp(ms) + repr(value)]}
    traits = dict(usage.traits)
    for pseudo, attribute in PSEUDO_ATTRIBUTES.items():
        entry = getattr(usage, attribute)
        if entry is not None:
            traits[pseudo] = entry
    if traits:
        item["ta"] = {"SS": [_trait_element(ms, k, enc) for k, (ms, enc) in traits.items()]}
    user_elements = [_user_trait_element(ms, u, k, enc)
                     for u, traits in usage.users.items() for k, (ms, enc) in traits.items()]
    if user_elements:
        item["tu"] = {"SS": user_elements}
    if usage.first_seen_ms is not None and usage.last_seen_ms is not None:
        item["ts"] = {"NS": sorted({str(usage.first_seen_ms), str(usage.last_seen_ms)})}
    if usage.converted_at_ms is not None:
        item["cv"] = {"NS": [str(usage.converted_at_ms)]}
    return item
