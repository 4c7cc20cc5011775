"""The cold half of an account's usage state, and the fingerprint archive that makes late copies count once.

The hot usage item (`pqlflow.ingest.item`) is written by every batch, and every write is billed on its
whole size; so it holds only what arrived since the last compaction. Everything compaction has folded lives
in two kinds of item that no happy-path write touches:

* the **cold item** (`sk` `USAGE#C<v % 2>`, or `USAGE#C<v % 2>#U#<user>` for `unit: user`): lifetime and
  daily counts, active users per day, and the winning gauge / trait / time elements, as one zlib-compressed
  JSON document in the binary attribute `b`, with the compaction version `v` it belongs to (the hot item's
  `cver`). Two slots, by the version's parity: a compaction puts version v + 1 beside version v, which the
  hot item names until the compaction's intent (`i`: the writes that complete it) has run. Qualification
  reads it (one eventually consistent GetItem, 0.5 RRU up to 4 KB). Before the slots the cold item was one
  item, `USAGE#C`: it is still read when the slot has nothing as new, until the account's next compaction;
* **archive items** (`sk` `USAGE#F#<event day>#<subject>#<compaction version>`): the fingerprints of the
  events one compaction folded for one event day (binary set `f`), expiring with the retention window
  (`expires_at`, the table's TTL), written only by a decided compaction's intent. Each compaction writes
  its own small items (one per event day it folds),
  so none grows with the day. A copy of an event whose hour was already folded is checked against its day's
  archive (one consistent Query of the day's items) by the compaction that folds it, and only then: so it
  counts once at any lateness within retention.

Sort keys cannot collide with a hot item's: `USAGE#C…` and `USAGE#F…` are never `USAGE` or `USAGE#U#…`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

COLD_KIND = "usage-cold"
ARCHIVE_KIND = "usage-fp"


def cold_key(account_id: str, user_id: str | None = None, version: int | None = None) -> dict[str, dict[str, str]]:
    """The key of the cold item of compaction `version`: one of two slots (`USAGE#C0`, `USAGE#C1`) by its
    parity, so a compaction writes the next version beside the one the hot item still names. `None`: the
    single cold item of the layout before the slots (`USAGE#C`), read until the account's next compaction."""
    slot = "" if version is None else str(version % 2)
    sk = f"USAGE#C{slot}" if user_id is None else f"USAGE#C{slot}#U#{user_id}"
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": sk}}


def archive_scope(user_id: str | None) -> str:
    """Fixed-width part of an archive key for the subject: `A` (the account) or a hash of the user id, so that
    one subject's key prefix can never be a prefix of another's, whatever the user ids hold."""
    return "A" if user_id is None else hashlib.blake2b(user_id.encode(), digest_size=8).hexdigest()


def archive_prefix(account_id: str, user_id: str | None, day: int) -> tuple[str, str]:
    """(pk, sk prefix) of every archive item of one subject's event day."""
    return f"A#{account_id}", f"USAGE#F#{day:06d}#{archive_scope(user_id)}#"


def archive_key(account_id: str, user_id: str | None, day: int, version: int) -> dict[str, dict[str, str]]:
    """The archive item compaction `version` writes for one event day: only the fingerprints it folded."""
    pk, prefix = archive_prefix(account_id, user_id, day)
    return {"pk": {"S": pk}, "sk": {"S": f"{prefix}{version:010d}"}}


@dataclass
class ColdUsage:
    """What compaction has folded, at compaction version `version`. Elements are the hot item's own text
    (`"<ms13>|<repr>"` gauges, trait elements, event times), so merging is a set union."""

    version: int = 0
    lifetime: dict[str, int] = field(default_factory=dict)
    daily: dict[str, dict[int, int]] = field(default_factory=dict)
    users: dict[int, set[bytes]] = field(default_factory=dict)
    gauges: dict[str, str] = field(default_factory=dict)  # gauge key → winning element
    traits: list[str] = field(default_factory=list)
    user_traits: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # [first seen, last seen]
    conversions: list[int] = field(default_factory=list)  # [first conversion]
    intent: bytes | None = None  # the writes that complete the compaction that put this item (`Intent`)

    def document(self) -> bytes:
        """The compressed document stored in `b`: daily series dense from their first day; user
        fingerprints listed once and referenced by index from each day."""
        order = sorted({u for users in self.users.values() for u in users})
        index = {u: i for i, u in enumerate(order)}
        daily = {}
        for name, days in self.daily.items():
            if days:
                first, last = min(days), max(days)
                daily[name] = [first, [days.get(d, 0) for d in range(first, last + 1)]]
        doc = {"lc": self.lifetime, "dc": daily,
               "ul": base64.b64encode(b"".join(order)).decode() if order else "",
               "ud": {str(d): sorted(index[u] for u in users) for d, users in self.users.items() if users},
               "g": self.gauges, "ta": sorted(self.traits), "tu": sorted(self.user_traits),
               "ts": sorted(self.times), "cv": sorted(self.conversions)}
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        return zlib.compress(text.encode(), 9)

    @classmethod
    def from_document(cls, version: int, blob: bytes) -> ColdUsage:
        doc = json.loads(zlib.decompress(blob))
        raw = base64.b64decode(doc.get("ul", ""))
        order = [raw[i : i + 8] for i in range(0, len(raw), 8)]
        daily = {name: {first + i: n for i, n in enumerate(counts) if n}
                 for name, (first, counts) in doc.get("dc", {}).items()}
        return cls(version=version, lifetime={k: int(v) for k, v in doc.get("lc", {}).items()},
                   daily={k: v for k, v in daily.items() if v},
                   users={int(d): {order[i] for i in idx} for d, idx in doc.get("ud", {}).items()},
                   gauges=dict(doc.get("g", {})), traits=list(doc.get("ta", [])),
                   user_traits=list(doc.get("tu", [])), times=list(doc.get("ts", [])),
                   conversions=list(doc.get("cv", [])))

    def item(self, account_id: str, user_id: str | None) -> dict[str, dict[str, Any]]:
        item: dict[str, dict[str, Any]] = {**cold_key(account_id, user_id, self.version), "kind": {"S": COLD_KIND},
                                           "v": {"N": str(self.version)}, "b": {"B": self.document()}}
        if self.intent is not None:
            item["i"] = {"B": self.intent}
        return item

    @classmethod
    def parse(cls, item: dict[str, dict[str, Any]] | None) -> ColdUsage | None:
        if not item or "b" not in item:
            return None
        blob = item["b"]["B"]
        if not isinstance(blob, bytes | bytearray):
            blob = base64.b64decode(blob)
        cold = cls.from_document(int(item["v"]["N"]), bytes(blob))
        if "i" in item:
            intent = item["i"]["B"]
            cold.intent = bytes(intent) if isinstance(intent, bytes | bytearray) else base64.b64decode(intent)
        return cold


def newer_cold(slot: ColdUsage | None, legacy: ColdUsage | None) -> ColdUsage | None:
    """Of a slot's cold item and the single cold item of the layout before the slots, the newer."""
    if slot is None or (legacy is not None and legacy.version > slot.version):
        return legacy
    return slot


def pack(document: dict[str, Any]) -> bytes:
    """A document holding DynamoDB JSON (an UpdateItem's parameters), compressed, binary values in base64: how
    an intent is stored, so that any later compaction can send exactly the same requests."""
    return zlib.compress(json.dumps(_walk(document, _to_text), separators=(",", ":")).encode(), 9)


def unpack(blob: bytes) -> dict[str, Any]:
    document: dict[str, Any] = _walk(json.loads(zlib.decompress(blob)), _to_bytes)
    return document


def _to_text(value: Any) -> Any:
    return base64.b64encode(value).decode()


def _to_bytes(value: Any) -> Any:
    return base64.b64decode(value)


def _walk(node: Any, convert: Any) -> Any:
    """Apply `convert` to every binary value (`{"B": ...}`, `{"BS": [...]}`) of DynamoDB JSON."""
    if isinstance(node, list):
        return [_walk(n, convert) for n in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and "B" in node:
        return {"B": convert(node["B"])}
    if len(node) == 1 and "BS" in node:
        return {"BS": [convert(b) for b in node["BS"]]}
    return {k: _walk(v, convert) for k, v in node.items()}


class StaleCold(Exception):
    """A hot image and a cold item of different compaction versions: they cannot be combined."""

    def __init__(self, hot_version: int, cold_version: int | None):
        self.hot_version, self.cold_version = hot_version, cold_version
        super().__init__(f"usage image at compaction version {hot_version}, cold item at {cold_version}")


def archive_fingerprints(item: dict[str, dict[str, Any]] | None) -> set[bytes]:
    if not item or "f" not in item:
        return set()
    return {bytes(b) if isinstance(b, bytes | bytearray) else base64.b64decode(b) for b in item["f"]["BS"]}
