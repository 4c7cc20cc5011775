"""Compaction: what the hot usage item has gathered moves to the cold item, decided by one conditional put.

Every batch's write to the hot item is billed on the item's whole size, so compaction runs only when it pays,
decided from the item a batch's write returned (ReturnValues=ALL_NEW, no extra read):

* the item is past FOLD_AT_BYTES (900 B: one more write would cost 2 WRU): its oldest hours that ended more
  than `PENDING_WINDOW_HOURS` ago (1 by default) are folded until it is under FOLD_DOWN_TO_BYTES (200 B). A sparse
  account's item can so hold days of events and be compacted every few days; a busy one about hourly;
* past BUSY_BYTES (16 KB) every completed hour, past SIZE_SOFT_LIMIT (200 KB) the current hour too;
* a pending slot is *late*: its hour was folded already (a copy, or an event that arrived after its hour);
* the item still has the layout before the cold item (`lc`/`dc`/`t<hour>`): it is migrated.

A compaction of the hot item at version `cver` = v writes, in order:

1. **the decision**: the cold item of version v + 1, put in the slot of its parity (`USAGE#C0` / `USAGE#C1`),
   conditional on that slot not holding version v + 1 already. The cold item of version v, which the hot item
   and every reader still name, is in the other slot and untouched. The new cold item carries the **intent**:
   the exact requests that complete this compaction, compressed;
2. **the intent**: one archive item per event day folded (a set union of the fingerprints it folded), then
   the hot item's update, conditional on `cver` = v: it DELETEs exactly the elements folded (never a whole
   attribute: a concurrent batch's additions stay), sets `cver` = v + 1 and the fold watermark `fw`.

Late slots are checked against their day's archive first (one consistent Query per late day, only then; items
of versions after the hot item's are a decided compaction's not yet completed, and are not read): a
fingerprint already there was counted, and is dropped.

Nothing before the decision changes anything, so a compaction that fails or dies before it is simply gone.
Once decided, it is completed by whoever gets there: itself, or the next compaction of that account, whose
own decision then fails on the slot and which sends the intent it finds there instead (identical requests:
unions, and a hot update that applies once). Until then the reader sees version v, whole. Where a
transaction bills every item twice, this costs the cold item's put once (1 WRU per KB) and the hot item's
update once. A compaction too big to carry its intent in a 400 KB item (MAX_INTENT_ITEM_BYTES) is one
TransactWriteItems of the same writes instead. See docs/ingest.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pqlflow.ingest.cold import ARCHIVE_KIND, ColdUsage, archive_key, cold_key, pack, unpack
from pqlflow.ingest.item import (
    MAX_CLAUSES,
    SIZE_SOFT_LIMIT,
    StoredUsage,
    _Expression,
    _gauge_order,
    _latest_traits,
    _latest_user_traits,
    _trait_element,
    _user_trait_element,
    _value_size,
    usage_key,
)
from pqlflow.ingest.usage import DAY_MS, HOUR_MS, MAX_USERS_PER_DAY, TrackingSpec, cap_names, cap_users

DEFAULT_PENDING_HOURS = 1
BUSY_BYTES = 16 * 1024  # past this, completed hours fold at once (every write is billed per KB of the item)
FOLD_AT_BYTES = 900  # a hot item past this is compacted: a write of more than 1 KB is billed 2 WRU
FOLD_DOWN_TO_BYTES = 200  # ...folding its oldest hours until it is back under this
MIN_CLUTTER_MOVED = 256  # or, with no hour old enough, moving at least this much of its other elements
MAX_INTENT_ITEM_BYTES = 300 * 1024  # a cold item carrying its intent; DynamoDB's item limit is 400 KB
MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit: the hot item, the cold item and up to 98 archive items
_ARCHIVE_HOURS = MAX_TRANSACTION_ITEMS - 2  # hours folded per round: at most that many event days
_ARCHIVE_GRACE_DAYS = 2  # archive items outlive the retention window by this much before TTL removes them


def fold_to(stored: StoredUsage, now_ms: int, pending_hours: int) -> int:
    """The last event hour a compaction now may fold."""
    current = now_ms // HOUR_MS
    if stored.size > SIZE_SOFT_LIMIT:
        last = current  # under size pressure, the current hour too
    elif stored.size > BUSY_BYTES:
        last = current - 1  # a busy account: every completed hour
    else:
        last = current - pending_hours - 1  # an hour is folded once it ended `pending_hours` ago
    return max(last, stored.fw if stored.fw is not None else last)


def clutter_bytes(stored: StoredUsage) -> int:
    """Bytes of hot elements that only compaction removes (users, gauges, traits, times)."""
    return (sum(8 * len(u) for u in stored.users.values()) + sum(len(e) for g in stored.gauges.values() for e in g)
            + sum(map(len, stored.traits)) + sum(map(len, stored.user_traits))
            + 14 * (len(stored.times) + len(stored.conversions)))


def is_due(stored: StoredUsage, now_ms: int, pending_hours: int = DEFAULT_PENDING_HOURS) -> bool:
    """Whether the item a batch's write returned needs a compaction now. Folding costs a few WRU (the cold
    item's put, the hot item's update, an archive item per day), carrying costs nothing while the item stays
    under 1 KB: so a small item is left alone, however old its hours, unless a late slot awaits its check or
    it still has the layout before the cold item."""
    if stored.legacy_totals or stored.touched or any(stored.is_late(h) for h, _ in stored.pending):
        return True
    last = fold_to(stored, now_ms, pending_hours)
    eligible = any(h <= last for h, _ in stored.pending)
    return stored.size > FOLD_AT_BYTES and (eligible or _cluttered(stored))


def _cluttered(stored: StoredUsage) -> bool:
    """Enough gauge/trait/time/user elements that moving them pays: at least MIN_CLUTTER_MOVED and a quarter
    of the item (a compaction rewrites the whole hot item and the cold item; an item that is
    mostly the current hour's events would otherwise be compacted by every batch, for a few elements each)."""
    clutter = clutter_bytes(stored)
    return clutter >= MIN_CLUTTER_MOVED and clutter * 4 > stored.size


def _hour_bytes(stored: StoredUsage, hour: int) -> int:
    return sum(len(f"p{h}|{n}") + 8 * len(fps) for (h, n), fps in stored.pending.items() if h == hour)


def hours_to_fold(stored: StoredUsage, now_ms: int, pending_hours: int) -> tuple[list[int], bool]:
    """The hours this round folds, oldest first, within one request's limits; and whether that is every hour
    old enough to fold. Late hours always; the others all when the item is big or migrating, else the oldest
    until the item is back under FOLD_DOWN_TO_BYTES (recent hours stay: folding them now would only mean
    folding again sooner)."""
    last = fold_to(stored, now_ms, pending_hours)
    eligible = sorted({h for h, _ in stored.pending if h <= last})
    if stored.size > BUSY_BYTES or stored.legacy_totals or stored.touched:
        wanted = eligible
    else:
        wanted = [h for h in eligible if stored.is_late(h)]
        size = stored.size - clutter_bytes(stored) - sum(_hour_bytes(stored, h) for h in wanted)
        for hour in eligible:
            if size <= FOLD_DOWN_TO_BYTES:
                break
            if not stored.is_late(hour):
                wanted.append(hour)
                size -= _hour_bytes(stored, hour)
        wanted.sort()
    chosen: list[int] = []
    clauses = 0
    for hour in wanted:
        slots = sum(1 for h, _ in stored.pending if h == hour)
        if chosen and (len(chosen) >= _ARCHIVE_HOURS or clauses + slots > MAX_CLAUSES - 20):
            return chosen, False
        chosen.append(hour)
        clauses += slots
    return chosen, chosen == eligible


def late_days(stored: StoredUsage, now_ms: int, pending_hours: int = DEFAULT_PENDING_HOURS) -> list[int]:
    """Event days whose archive this round must read first: those of the late hours it folds (only those)."""
    hours, _ = hours_to_fold(stored, now_ms, pending_hours)
    return sorted({h // 24 for h in hours if stored.is_late(h)})


@dataclass
class CompactionPlan:
    """One compaction round's writes, in order: `cold_put` (the decision: the cold item of the next version,
    conditional on its slot not holding that version yet, carrying `intent`), then the `intent` (the archive
    items of the days folded, and last the hot item's update, conditional on its version). A plan too big to
    carry its intent has `cold_put` None and `transact_items` instead: the same writes in one transaction."""

    cold_put: dict[str, Any] | None
    intent: list[dict[str, Any]]
    transact_items: list[dict[str, Any]]
    after: StoredUsage  # the hot item as this compaction leaves it (without concurrent additions)
    folded_events: int = 0
    late_duplicates: int = 0  # late copies the archive recognized
    hours: list[int] = field(default_factory=list)


def plan(table: str, stored: StoredUsage, cold: ColdUsage | None, archives: dict[int, set[bytes]],
         spec: TrackingSpec, now_ms: int, pending_hours: int = DEFAULT_PENDING_HOURS) -> CompactionPlan:
    """The writes of one compaction round. `cold` is the cold item at the hot item's version (None
    before the first compaction of this layout); `archives` the fingerprints archived for each late day."""
    merged = stored.with_cold(cold)
    hours, complete = hours_to_fold(stored, now_ms, pending_hours)
    new_fw = fold_to(stored, now_ms, pending_hours) if complete else max([stored.fw or -1, *hours])
    if stored.fw is not None:
        new_fw = max(new_fw, stored.fw)
    hot = _Expression()
    lifetime, daily = dict(merged.lifetime), {n: dict(d) for n, d in merged.daily.items()}
    folded = duplicates = 0
    copies: dict[int, set[bytes]] = {}  # per event day, late copies its archive knew: not archived again
    slot_values: list[tuple[int, str]] = []  # (event day, placeholder of the fingerprints the hot update deletes)
    remaining = dict(stored.pending)
    expires = (now_ms // 1000) + (spec.retention_days + _ARCHIVE_GRACE_DAYS) * 86_400
    for hour in hours:
        seen = archives.get(hour // 24, set()) if stored.is_late(hour) else set()
        new_fps: set[bytes] = set()
        for (h, name), fps in stored.pending.items():
            if h != hour:
                continue
            fresh = fps - seen
            duplicates += len(fps) - len(fresh)
            if fps & seen:
                copies.setdefault(hour // 24, set()).update(fps & seen)
            new_fps |= fresh
            if fresh:
                lifetime[name] = lifetime.get(name, 0) + len(fresh)
                per_day = daily.setdefault(name, {})
                per_day[hour // 24] = per_day.get(hour // 24, 0) + len(fresh)
            placeholder = hot.value({"BS": sorted(fps)})
            hot.delete.append(f"{hot.name(f'p{hour}|{name}')} {placeholder}")
            slot_values.append((hour // 24, placeholder))
            del remaining[(h, name)]
        folded += len(new_fps)
    today = now_ms // DAY_MS
    oldest_day = today - spec.retention_days + 1
    daily = {n: kept for n, days in daily.items() if (kept := {d: c for d, c in days.items() if d >= oldest_day})}
    lifetime, daily = cap_names(lifetime, daily, spec)
    new_cold = ColdUsage(version=stored.cver + 1, lifetime=lifetime, daily=daily,
                         users=_kept_users(merged.users, today - spec.active_user_days + 1),
                         gauges={k: max(v, key=_gauge_order) for k, v in merged.gauges.items() if v},
                         traits=[_trait_element(ms, k, enc) for k, (ms, enc) in _latest_traits(merged.traits).items()],
                         user_traits=_kept_user_traits(merged.user_traits),
                         times=sorted({min(merged.times), max(merged.times)}) if merged.times else [],
                         conversions=[min(merged.conversions)] if merged.conversions else [])
    # Everything else the hot item holds is now in the cold item: delete exactly those elements.
    for day, users in stored.users.items():
        hot.delete.append(f"{hot.name(f'u{day}')} {hot.value({'BS': sorted(users)})}")
    for key, elements in stored.gauges.items():
        hot.delete.append(f"{hot.name(f'g|{key}')} {hot.value({'SS': sorted(elements)})}")
    lww: dict[str, tuple[str, list[str]]] = {
        "ta": ("SS", sorted(stored.traits)), "tu": ("SS", sorted(stored.user_traits)),
        "ts": ("NS", sorted(map(str, stored.times))), "cv": ("NS", sorted(map(str, stored.conversions)))}
    for attr, (tag, values) in lww.items():
        if values:
            hot.delete.append(f"{hot.name(attr)} {hot.value({tag: values})}")
    if stored.legacy_totals:
        hot.remove.extend([hot.name("lc"), hot.name("dc")])
    hot.remove.extend(hot.name(f"t{hour}") for hour in stored.touched)
    hot.set.append(f"{hot.name('cver')} = {hot.value({'N': str(stored.cver + 1)})}")
    hot.set.append(f"{hot.name('fw')} = {hot.value({'N': str(new_fw)})}")
    cver = hot.name("cver")
    condition = f"{cver} = {hot.value({'N': str(stored.cver)})}" if stored.cver else f"attribute_not_exists({cver})"
    update = hot.request(table, usage_key(stored.account_id, stored.user_id), ConditionExpression=condition)
    update.pop("ReturnValues", None)
    after = replace(stored, pending=remaining, touched={}, lifetime={}, daily={}, cver=stored.cver + 1, users={},
                    gauges={}, traits=set(), user_traits=set(), times=set(), conversions=set(), fw=new_fw,
                    legacy_totals=False, size=_pending_size(remaining))
    # The intent names each fingerprint once: the archive items are the hot update's folded slots by day
    document = {"hot": update, "slots": slot_values, "expires": expires, "version": stored.cver + 1,
                "copies": [[day, {"BS": sorted(fps)}] for day, fps in sorted(copies.items())],
                "subject": [stored.account_id, stored.user_id]}
    intent = completion(document)
    new_cold.intent = pack(document)
    cold_item = new_cold.item(stored.account_id, stored.user_id)
    slot: dict[str, Any] = {"TableName": table, "Item": cold_item,
            "ConditionExpression": "attribute_not_exists(#v) OR #v < :v", "ExpressionAttributeNames": {"#v": "v"},
            "ExpressionAttributeValues": {":v": {"N": str(new_cold.version)}}}
    if sum(len(k) + _value_size(v) for k, v in cold_item.items()) <= MAX_INTENT_ITEM_BYTES:
        return CompactionPlan(slot, intent, [], after, folded, duplicates, hours)
    new_cold.intent = None  # too big to carry its own intent: one transaction instead (every item billed twice)
    slot["Item"] = new_cold.item(stored.account_id, stored.user_id)
    transact = [{"Update": update}, {"Put": slot}, *({"Update": u} for u in intent[:-1])]
    return CompactionPlan(None, [], transact, after, folded, duplicates, hours)


def completion(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The requests that complete a decided compaction, from its intent (`pack`ed in its cold item): one
    archive item per event day folded (the fingerprints its hot update deletes from that day's slots, but the
    late copies the archive knew), then the hot update, conditional on the version it compacted."""
    hot = document["hot"]
    values = hot["ExpressionAttributeValues"]
    copies = {int(day): set(fps["BS"]) for day, fps in document["copies"]}
    by_day: dict[int, set[bytes]] = {}
    for day, placeholder in document["slots"]:
        by_day.setdefault(int(day), set()).update(set(values[placeholder]["BS"]) - copies.get(int(day), set()))
    account_id, user_id = document["subject"]
    return [*(_archive_update(hot["TableName"], account_id, user_id, day, int(document["version"]), fps,
                              int(document["expires"])) for day, fps in sorted(by_day.items()) if fps), hot]


def intent_requests(blob: bytes) -> list[dict[str, Any]]:
    """The requests of an intent found in a cold item (see `completion`)."""
    return completion(unpack(blob))


def _archive_update(table: str, account_id: str, user_id: str | None, day: int, version: int, fps: Iterable[bytes],
                    expires: int) -> dict[str, Any]:
    """The union of these fingerprints into the archive item of compaction `version` for one event day (a set
    union: completing an intent twice writes nothing new)."""
    return {"TableName": table, "Key": archive_key(account_id, user_id, day, version),
            "UpdateExpression": "ADD #f :f SET #k = :k, #e = :e",
            "ExpressionAttributeNames": {"#f": "f", "#k": "kind", "#e": "expires_at"},
            "ExpressionAttributeValues": {":f": {"BS": sorted(fps)}, ":k": {"S": ARCHIVE_KIND},
                                          ":e": {"N": str(expires)}}}


def _kept_users(users: dict[int, set[bytes]], oldest_day: int) -> dict[int, set[bytes]]:
    return {d: set(sorted(u)[:MAX_USERS_PER_DAY]) for d, u in users.items() if d >= oldest_day and u}


def _kept_user_traits(elements: set[str]) -> list[str]:
    latest = _latest_user_traits(elements)
    kept = cap_users(_users_of(latest))
    return [_user_trait_element(ms, u, k, enc) for (u, k), (ms, enc) in latest.items() if u in kept]


def _users_of(latest: dict[tuple[str, str], tuple[int, str]]) -> dict[str, dict[str, tuple[int, str]]]:
    users: dict[str, dict[str, tuple[int, str]]] = {}
    for (user, key), entry in latest.items():
        users.setdefault(user, {})[key] = entry
    return users


def _pending_size(pending: dict[tuple[int, str], set[bytes]]) -> int:
    return sum(len(f"p{h}|{n}") + 8 * len(fps) for (h, n), fps in pending.items())


__all__ = ["CompactionPlan", "cold_key", "is_due", "late_days", "plan"]
