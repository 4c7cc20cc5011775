"""Backtest PQL definitions against an exported usage history, in memory: how well they predict upgrades.

The history is JSON Lines of Segment messages (or EventBridge events whose `detail` is the message), plain or
gzip, or Parquet rows spelled as those lines (`pqlflow.analysis.history_files`). Every
line is validated exactly as `usage_events.parse_body` validates an SQS body (a fast path for the common
shape, the reference parser for everything else), deduplicated by `messageId` (the first copy in file
order wins), sorted by event time (stable: ties keep file order), and folded per subject with
`AccountUsage.apply` — the aggregation the live ingest writes — and evaluated with
`pqlflow.qualify.evaluation.decide`, the code the qualify function runs. Nothing touches AWS.

Speed comes from three honest shortcuts, each tested against the slow path:
- decoding: a fast validator accepts only messages it can prove `parse_body` accepts, and produces the
  same `UsageEvent`; anything else goes through `parse_body` itself (tests/unit/analysis/test_backtest_decode.py);
- folding: an event whose name, traits and user cannot change any signal the definition reads only marks
  the subject active; it is not folded (it could only change counters the definition never reads);
- evaluation: `decide` runs only after an event that changed something the definition reads, at the first
  event of each new day when the definition has time windows (windows slide by whole days), and at the
  first event after a re-qualification cooldown ends.

`run_backtest` returns a `BacktestResult`; `pqlflow.analysis.report` renders it as text, JSON or one HTML page.
A history larger than memory is run one partition of accounts at a time by `pqlflow.analysis.partitions`,
with `read_records` and `arrange` (the two halves of `decode_history`) and `run_definition` from here.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import math
import operator
import statistics
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pqlflow.analysis.gate import Gate, SignalRow, SweepTarget, rule_conditions
from pqlflow.analysis.history_files import expand, messages
from pqlflow.analysis.worth import customer_worth, money_of_records
from pqlflow.contracts.usage_events import (
    MAX_FUTURE_SECONDS,
    MAX_IDENTIFIER_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    PAGE_EVENT,
    SCREEN_EVENT,
    Rejection,
    UsageEvent,
    account_for,
    parse_body,
)
from pqlflow.ingest.usage import (
    MAX_USERS_PER_DAY,
    SEEN,
    AccountUsage,
    GaugeError,
    TrackingSpec,
    fingerprint,
    trait_json,
)
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.evaluation import (
    PqlState,
    decide,
    exclusion,
)
from pqlflow.qualify.language import (
    ActiveUsersSignal,
    CountSignal,
    DaysToSignal,
    Definition,
    GaugeSignal,
    RatioSignal,
    VelocitySignal,
)

if TYPE_CHECKING:  # msgspec is a dependency: the type checker reads it as installed
    import msgspec as _msgspec
else:
    try:  # msgspec decodes straight into typed structs in C; the stdlib fallback gives the same answers, slower
        import msgspec as _msgspec
    except ImportError:  # pragma: no cover - depends on the environment
        _msgspec = None

JSON_DECODER = "msgspec" if _msgspec is not None else "json"
HISTORY_RETENTION_DAYS = 36_500  # an export is history on purpose: no retention window in a backtest
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


# ---- decoding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a valid usage event: where it is and why (the quarantine reason live would give)."""

    file: str
    line: int
    reason: str
    message_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class History:
    """A decoded, deduplicated history: what every definition in a run is evaluated on.

    `groups` holds each account's records (compact tuples, see `RECORD`) sorted by event time, ties in
    file order; subjects never interact, so this is all the engine needs. `records` and `events` give the
    whole history in time order.
    """

    groups: dict[str, list[tuple[Any, ...]]]
    files: list[tuple[str, int]]  # (path, first global line index)
    lines: int = 0  # non-blank lines read
    duplicates: int = 0
    bad: list[BadLine] = field(default_factory=list)
    decode_seconds: float = 0.0  # reading + validating + deduplicating + sorting
    sort_cpu_seconds: float = 0.0  # of which deduplicating, sorting and the per-account columns (CPU time)
    count: int = 0  # distinct valid events
    start_ms: int | None = None
    end_ms: int | None = None
    names: dict[str, list[str | None]] = field(default_factory=dict)  # per group: each record's event name
    days: dict[str, array[int]] = field(default_factory=dict)  # per group: each record's UTC epoch day
    users: dict[str, list[str]] = field(default_factory=dict)  # per group: each record's user id

    @property
    def records(self) -> list[tuple[Any, ...]]:
        return sorted((r for g in self.groups.values() for r in g), key=itemgetter(0, 1))

    @property
    def events(self) -> list[UsageEvent]:
        return [to_event(r) for r in self.records]

    def locate(self, index: int) -> tuple[str, int]:
        """(file, 1-based line) of a global line index."""
        starts = [start for _, start in self.files]
        i = bisect.bisect_right(starts, index) - 1
        path, start = self.files[i]
        return path, index - start + 1

    def summary(self) -> dict[str, Any]:
        """The `history` part of a result's JSON: files, counts, the first 100 bad lines and the time span."""
        return {
            "files": [p for p, _ in self.files],
            "lines": self.lines,
            "events": self.count,
            "duplicates": self.duplicates,
            "bad_lines": len(self.bad),
            "bad": [{"file": b.file, "line": b.line, "reason": b.reason} for b in self.bad[:100]],
            "start": _iso(self.start_ms),
            "end": _iso(self.end_ms),
        }


# A decoded event, as a tuple: building a dataclass per line costs more than everything else we do to it.
RECORD = ("ms", "line", "message_id", "kind", "account_id", "user_id", "name", "bag", "timezone")


def to_event(r: tuple[Any, ...]) -> UsageEvent:
    """The `UsageEvent` of a record (`bag` is the properties of a track event, the traits of the others)."""
    ms, _, mid, kind, account, user, name, bag, tz = r
    if kind == "track":
        return UsageEvent(mid, kind, account, user, ms, name, bag, timezone=tz)
    return UsageEvent(mid, kind, account, user, ms, traits=bag, timezone=tz)


def _record(event: UsageEvent, line: int) -> tuple[Any, ...]:
    bag = event.properties if event.kind == "track" else event.traits
    return (
        event.ms,
        line,
        event.message_id,
        event.kind,
        event.account_id,
        event.user_id,
        event.name,
        bag,
        event.timezone,
    )


def _identifier(value: Any) -> bool:
    """True when `value` certainly passes events.Identifier (printable ASCII, not blank, ≤ 256 chars).
    False means "not sure": the caller hands the line to the reference parser."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_IDENTIFIER_CHARS
        and value.isascii()
        and value.isprintable()
        and not value.isspace()
    )


_MINUTES = {f":{m:02d}": m * 60_000_000 for m in range(60)}
_SECONDS = {f":{s:02d}": s * 1_000_000 for s in range(60)}
_MILLIS = {f"{m:03d}": m * 1000 for m in range(1000)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE_SECONDS = {m + s: _MINUTES[m] + _SECONDS[s] for m in _MINUTES for s in _SECONDS}  # ":MM:SS" → µs


class FastDecoder:
    """Decode one JSON line into exactly what `parse_body(line, now_s, retention_days)` returns.

    The fast path covers the shapes exports actually have (ASCII identifiers, `YYYY-MM-DDTHH:MM:SS[.f]Z`
    or `±HH:MM` times, objects where objects belong); whenever it is not certain, it calls `parse_body`
    itself. tests/unit/analysis/test_backtest_decode.py holds it to that.
    """

    def __init__(self, now_s: float, retention_days: int = HISTORY_RETENTION_DAYS, keep: frozenset[str] | None = None):
        self.keep = keep  # event names whose properties are kept (None: all); the rest are validated, dropped
        self.now_s = now_s
        self.retention_days = retention_days
        self.lo_s = now_s - retention_days * 86400
        self.hi_s = now_s + MAX_FUTURE_SECONDS
        self._ok: dict[str, str] = {}  # identifiers proven valid → one shared copy (names and ids repeat)
        self._hours: dict[str, int] = {}  # "YYYY-MM-DDTHH" → epoch µs (-1: not that shape)
        self.fast = 0
        self.slow = 0
        self._fast = self._compile_fast()

    def decode(self, raw: bytes) -> UsageEvent | Rejection:
        result = self.record(raw, 0)
        if type(result) is tuple:
            return to_event(result)
        if TYPE_CHECKING:  # `type(...) is` narrows only the branch it holds in
            assert isinstance(result, Rejection)
        return result

    def record(self, raw: bytes, line: int) -> tuple[Any, ...] | Rejection:
        """The record of a line (see `RECORD`), or the Rejection `parse_body` gives it."""
        rec = self._fast(raw, line)
        if rec is not None:
            self.fast += 1
            return rec
        return self.slow_record(raw, line)

    def slow_record(self, raw: bytes, line: int) -> tuple[Any, ...] | Rejection:
        """The reference path: `parse_body` itself."""
        self.slow += 1
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection("", f"line is not valid UTF-8 (byte {exc.start + 1})")
        result = parse_body(body, self.now_s, self.retention_days)
        if type(result) is UsageEvent:
            return _record(result, line)
        if TYPE_CHECKING:
            assert isinstance(result, Rejection)
        return result

    def _ident(self, value: Any) -> str | None:
        """The shared copy of a valid identifier, or None when not certainly valid."""
        if type(value) is not str:
            return None
        known = self._ok.get(value)
        if known is not None:
            return known
        if _identifier(value):
            self._ok[value] = value
            return value
        return None

    def _compile_fast(self) -> Callable[[bytes, int], tuple[Any, ...] | None]:
        """The fast path as a closure: the decoder's tables become cell variables, cheaper to reach per line
        than attributes (this runs once per line of the history). Without msgspec there is no fast path."""
        if _msgspec is None:
            return lambda raw, line: None
        ok: dict[Any, str] = self._ok  # also looked up by names that may be None (never a key)
        hours = self._hours  # small tables: they stay in the CPU cache (a per-minute one would not)
        lo_s, hi_s, keep = self.lo_s, self.hi_s, self.keep
        ident, hour_of, time_of = self._ident, self._hour, self._time
        decode_message, decode_envelope = _MESSAGE.decode, _ENVELOPE.decode
        too_big = MAX_MESSAGE_BYTES // 4

        def fast(raw: bytes, line: int) -> tuple[Any, ...] | None:  # noqa: C901 - one flat pass is the point
            # msgspec checks every type (and the nesting limit, in `_Bag`); what is left is ours, below
            if len(raw) > too_big:
                return None  # parse_body measures the size of these: let it
            try:
                if raw.find(b'"detail-type"') >= 0:  # parse_body's test for envelopes (`find` beats `in` here)
                    doc = decode_envelope(raw)
                    if doc.detail_type_by_name is not _UNSET:
                        return None
                    message = doc.detail
                    if message.type != doc.detail_type:
                        return None
                else:
                    message = decode_message(raw)
            except (_DecodeError, UnicodeDecodeError, RecursionError):  # msgspec nests ~1,000 deep, then raises
                return None
            mid = message.messageId
            if not (0 < len(mid) <= MAX_IDENTIFIER_CHARS and mid.isascii() and mid.isprintable() and not mid.isspace()):
                return None  # _identifier, inlined: every line has a new messageId
            user = message.userId
            if user is not None:
                try:  # subscripting beats .get(); a miss is rare
                    user = ok[user]
                except KeyError:
                    user = ident(user)
                    if user is None:
                        return None
            anon = message.anonymousId
            if anon is not None:
                anon = ok.get(anon) or ident(anon)
                if anon is None:
                    return None
                if user is None:
                    user = anon
            if user is None:
                return None
            ts = message.timestamp
            ms = None
            if len(ts) == 24 and ts[23] == "Z":  # toISOString(): _time's first case, inlined
                try:
                    base = hours[ts[:13]]
                except KeyError:
                    base = hour_of(ts[:13])
                try:
                    if base != -1 and ts[19] == ".":
                        ts_s = (base + _MINUTE_SECONDS[ts[13:19]] + _MILLIS[ts[20:23]]) / 1_000_000
                        if lo_s <= ts_s <= hi_s:
                            ms = int(ts_s * 1000)
                except KeyError:  # not that shape: _time decides
                    pass
            if ms is None:
                ms = time_of(ts)
                if ms is None:
                    return None
            context = message.context
            if context is None:
                group = tz = None
            else:
                group = context.groupId
                if group is not None:
                    try:
                        group = ok[group]
                    except KeyError:
                        group = ident(group)
                        if group is None:
                            return None
                tz = context.timezone
            kind = message.type
            if kind == "track":
                name = message.event
                try:
                    name = ok[name]
                except KeyError:  # None is never a key
                    name = ident(name)
                    if name is None:
                        return None
                bag = message.properties
                if bag is _UNSET:
                    bag = {}
                if keep is not None and name not in keep:
                    bag = _DROPPED
                return (ms, line, mid, "track", group or account_for(user), user, name, bag, tz)
            if kind == "identify":
                bag = message.traits
                if bag is _UNSET:
                    bag = {}
                return (ms, line, mid, "identify", group or account_for(user), user, None, bag, tz)
            if kind == "group":
                group = ident(message.groupId)
                if group is None:
                    return None
                bag = message.traits
                if bag is _UNSET:
                    bag = {}
                return (ms, line, mid, "group", group, user, None, bag, tz)
            # page and screen are tracks of a fixed name; their name and category become properties
            name = PAGE_EVENT if kind == "page" else SCREEN_EVENT
            bag = message.properties
            kept = keep is None or name in keep
            bag = ({} if bag is _UNSET else dict(bag)) if kept else _DROPPED
            for key, v in (("name", message.name), ("category", message.category)):
                if v is not None:
                    if ident(v) is None:
                        return None
                    if kept:
                        bag.setdefault(key, v)
            return (ms, line, mid, "track", group or account_for(user), user, name, bag, tz)

        return fast

    def _time(self, ts: Any) -> int | None:
        """Epoch ms of a `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)` time inside the accepted window,
        computed as `int(datetime.timestamp() * 1000)` is (timestamp() is µs ÷ 10⁶, correctly rounded)."""
        if type(ts) is not str:
            return None
        if len(ts) == 24 and ts[23] == "Z" and ts[19] == ".":  # JavaScript's toISOString(): nearly every export
            base = self._hours.get(ts[:13])
            if base is None:
                base = self._hour(ts[:13])
            minute = _MINUTES.get(ts[13:16])
            sec = _SECONDS.get(ts[16:19])
            frac = _MILLIS.get(ts[20:23])
            if base != -1 and minute is not None and sec is not None and frac is not None:
                ts_s = (base + minute + sec + frac) / 1_000_000
                if ts_s > self.hi_s or ts_s < self.lo_s:
                    return None
                return int(ts_s * 1000)
        if not ts.isascii():
            return None
        n = len(ts)
        if n < 20 or n > 32 or ts[4] != "-" or ts[7] != "-" or ts[10] != "T" or ts[13] != ":" or ts[16] != ":":
            return None
        tail = ts[19:]
        if tail[-1] == "Z":
            zone = 1
        elif n >= 25 and tail[-6] in "+-" and tail[-3] == ":" and tail[-5:-3].isdigit() and tail[-2:].isdigit():
            if int(tail[-5:-3]) > 14 or int(tail[-2:]) > 59:
                return None
            zone = 6
        else:
            return None
        frac_text = tail[:-zone]
        if frac_text and (frac_text[0] != "." or not 2 <= len(frac_text) <= 7 or not frac_text[1:].isdigit()):
            return None
        try:  # the C parser reads only ASCII digits in every other position (and ts is ASCII)
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            return None
        ts_s = parsed.timestamp()
        if ts_s > self.hi_s or ts_s < self.lo_s:
            return None
        return int(ts_s * 1000)

    def _hour(self, prefix: str) -> int:
        """Epoch µs of a valid "YYYY-MM-DDTHH" (UTC), else -1; cached."""
        value = -1
        if (
            prefix.isascii()
            and prefix[4] == "-"
            and prefix[7] == "-"
            and prefix[10] == "T"
            and prefix[:4].isdigit()
            and prefix[5:7].isdigit()
            and prefix[8:10].isdigit()
            and prefix[11:13].isdigit()
        ):
            try:
                parsed = datetime.fromisoformat(prefix + ":00:00+00:00")
            except ValueError:
                parsed = None
            if parsed is not None:
                value = (parsed - _EPOCH) // timedelta(microseconds=1)
        self._hours[prefix] = value
        return value


_DROPPED: dict[str, Any] = {}  # shared, never mutated: properties no gauge or filter of the run reads

if _msgspec is not None:
    _UNSET = _msgspec.UNSET
    _DecodeError: type[Exception] = _msgspec.MsgspecError

    # A JSON value nested at most `depth` levels, as a type: msgspec refuses deeper ones while decoding (in C),
    # which is parse_body's nesting limit on properties and traits without a second pass over the line.
    _Value: Any = str | int | float | bool | None
    for _ in range(MAX_NESTING_DEPTH - 1):
        _Value = str | int | float | bool | None | list[_Value] | dict[str, _Value]
    _Bag = dict[str, _Value]

    class _Context(_msgspec.Struct):
        """The parts of `context` the contract reads; the rest is skipped without being built."""

        groupId: str | None = None
        timezone: str | None = None

    class _Message(_msgspec.Struct, kw_only=True):
        """A Segment message, typed as strictly as the contract or stricter: whatever msgspec refuses,
        parse_body decides."""

        type: Literal["track", "identify", "group", "page", "screen"]
        messageId: str
        timestamp: str
        userId: str | None = None
        anonymousId: str | None = None
        context: _Context | None = None
        event: str | None = None
        groupId: str | None = None
        name: str | None = None
        category: str | None = None
        properties: _Bag | _msgspec.UnsetType = _msgspec.UNSET
        traits: _Bag | _msgspec.UnsetType = _msgspec.UNSET

    class _Envelope(_msgspec.Struct, kw_only=True):
        detail_type: str = _msgspec.field(name="detail-type")
        detail_type_by_name: Any = _msgspec.field(name="detail_type", default=_msgspec.UNSET)
        source: str
        detail: _Message
        id: str | None = None
        time: str | None = None
        account: str | None = None
        region: str | None = None

    _MESSAGE = _msgspec.json.Decoder(_Message)
    _ENVELOPE = _msgspec.json.Decoder(_Envelope)
else:  # pragma: no cover - depends on the environment
    _UNSET = object()
    _DecodeError = ValueError


def _days(records: list[tuple[Any, ...]]) -> array[int]:
    """Each record's UTC epoch day, computed in C."""
    return array("q", map(operator.floordiv, map(_BY_TIME, records), repeat(DAY_MS)))


_BY_TIME = itemgetter(0)


def decode_history(
    paths: Sequence[str | Path],
    *,
    now_s: float | None = None,
    retention_days: int = HISTORY_RETENTION_DAYS,
    keep_properties: frozenset[str] | None = None,
) -> History:
    """Read, validate, deduplicate and time-sort the events of a history's files.

    `paths` are JSON Lines files (plain or gzip), Parquet files, directories of them or globs
    (`history_files.expand`); a Parquet row is validated as the JSON line of the same message would be.

    Deduplication is by messageId within an account, as ingest's is (each account's usage item remembers
    the messageIds it counted): the first copy in file order wins.

    A missing or unreadable file is a `UsageError`; a bad line (or row) is recorded in `History.bad` and skipped;
    a blank line is ignored. With `keep_properties`, only those events keep their properties (the ones
    the definitions' gauges and filters read: `properties_read`); all are still validated.
    """
    started = time.perf_counter()
    decoder = FastDecoder(clock.now() if now_s is None else now_s, retention_days, keep_properties)
    groups: dict[str, list[tuple[Any, ...]]] = {}
    gc_was = gc.isenabled()
    gc.disable()  # millions of small dicts: the cyclic GC would rescan them again and again
    try:
        read = read_records(paths, decoder, groups, _new_group)
        sorting = time.process_time()
        history = arrange(groups, read)
    finally:
        if gc_was:
            # The records are acyclic: reference counting frees them. Frozen (gc.freeze), the collector never
            # scans these millions of objects again, starting with the collection that re-enabling it would
            # set off at the next allocation (~0.3 s per million events). The cost: cyclic garbage that
            # exists right now is not collected until gc.unfreeze().
            gc.freeze()
            gc.enable()
    history.decode_seconds = time.perf_counter() - started
    history.sort_cpu_seconds = time.process_time() - sorting
    return history


@dataclass
class Reading:
    """What reading a history's files found, besides the valid records: the files with the global index of
    their first line, the bad lines (in file order), and the count of lines and blank lines."""

    files: list[tuple[str, int]]
    bad: list[BadLine]
    index: int  # lines (and rows) read, blank ones included
    blank: int


def _new_group(account: str) -> list[tuple[Any, ...]]:
    return []


CHUNK_LINES = 65_536  # lines read between two calls of `read_records`'s `after_chunk`


def read_records(
    paths: Sequence[str | Path],
    decoder: FastDecoder,
    groups: dict[str, list[tuple[Any, ...]]],
    new_group: Callable[[str], list[tuple[Any, ...]]],
    after_chunk: Callable[[], object] | None = None,
) -> Reading:
    """Validate every line of the files into records, appended in file order to `groups[account]` (a list
    that `new_group(account)` gives the first time an account is seen: the in-memory history gives each
    account its own, a partitioned run the buffer of the account's partition). `after_chunk` is called
    every `CHUNK_LINES` lines and at the end of each file."""
    files: list[tuple[str, int]] = []
    bad: list[BadLine] = []
    index = 0
    blank = 0
    fast = decoder._fast
    slow = decoder.slow_record
    result: tuple[Any, ...] | Rejection | None
    for path in expand(paths):
        files.append((str(path), index))
        lines = messages(path)
        while chunk := list(islice(lines, CHUNK_LINES)):
            for raw in chunk:
                result = fast(raw, index)
                if result is None:
                    result = slow(raw, index)
                index += 1
                if type(result) is tuple:
                    group = groups.get(result[4])
                    if group is None:
                        group = groups[result[4]] = new_group(result[4])
                    group.append(result)
                elif not raw.strip():
                    blank += 1
                else:
                    if TYPE_CHECKING:
                        assert isinstance(result, Rejection)
                    bad.append(BadLine(str(path), index - files[-1][1], str(result), result.message_id))
            if after_chunk is not None:
                after_chunk()
    return Reading(files, bad, index, blank)


def arrange(groups: dict[str, list[tuple[Any, ...]]], read: Reading) -> History:
    """The History of accounts' records in file order: each account deduplicated by messageId (the first
    copy wins), sorted by event time (stable: ties keep file order), with its per-record columns."""
    names: dict[str, list[str | None]] = {}
    days: dict[str, array[int]] = {}
    users: dict[str, list[str]] = {}
    duplicates = 0
    count = 0
    start = end = None
    by_time = itemgetter(0)
    name_of, user_of = itemgetter(6), itemgetter(5)
    for account, group in groups.items():
        if len({r[2] for r in group}) != len(group):  # a messageId twice in this account: keep the first
            seen: set[str] = set()
            remember: Callable[[str], object] = seen.add  # its None result is only a step of the `or`
            kept = [r for r in group if not (r[2] in seen or remember(r[2]))]
            duplicates += len(group) - len(kept)
            group[:] = kept
        group.sort(key=by_time)  # stable: equal times keep file order
        names[account] = list(map(name_of, group))  # while the group is in the CPU cache
        days[account] = _days(group)
        users[account] = list(map(user_of, group))
        count += len(group)
        if start is None or group[0][0] < start:
            start = group[0][0]
        if end is None or group[-1][0] > end:
            end = group[-1][0]
    return History(
        groups,
        read.files,
        lines=read.index - read.blank,
        duplicates=duplicates,
        bad=read.bad,
        count=count,
        start_ms=start,
        end_ms=end,
        names=names,
        days=days,
        users=users,
    )


def no_valid_event(history: History) -> str | None:
    """Why a history holds no valid event at all (None when it holds one): nothing to backtest on."""
    if history.count:
        return None
    files = ", ".join(path for path, _ in history.files)
    if not history.bad:
        return f"{files}: no event at all (only blank lines, or no rows)"
    first = history.bad[0]
    return (
        f"{files}: no valid event: {len(history.bad)} bad line{'s' * (len(history.bad) != 1)} and not one event "
        f"(is it JSON Lines, gzip JSON Lines or Parquet of Segment messages?); the first: {first}"
    )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off for the block, and back on after it if it was on: a block that makes millions of
    acyclic records (reference counting frees them) would have the collector rescan them again and again."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was:
            gc.enable()


def decode_only(paths: Sequence[str | Path]) -> tuple[int, float, float]:
    """The bare-decoding baseline: read the files and JSON-decode every line, nothing else.
    Returns (lines, wall seconds, CPU seconds)."""
    started = time.perf_counter()
    cpu = time.process_time()
    loads = _msgspec.json.Decoder().decode if _msgspec is not None else json.loads
    n = 0
    with gc_paused():
        for path in expand(paths):
            for raw in messages(path):
                if raw.strip():
                    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
                        loads(raw)
                    n += 1
    return n, time.perf_counter() - started, time.process_time() - cpu


# ---- what a definition reads --------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    """What can change a definition's decisions: the event names it counts, and whether it reads
    distinct active users. Traits (identify/group) and conversions always matter."""

    names: frozenset[str]
    active_users: bool
    time_dependent: bool  # rolling windows, velocity, decay or a cooldown: re-decide on each new day


def referenced_signals(defn: Definition) -> list[str]:
    """Signals the decision reads (qualify, points, touch), with the signals a ratio reads, in order."""
    names: list[str] = []
    conds = rule_conditions(defn.qualify) + rule_conditions(defn.touch.high)
    if defn.points is not None:
        for rule in defn.points.rules:
            conds += rule_conditions(rule.when)
            if rule.signal is not None:
                names.append(rule.signal)
    names += [c.signal for c in conds if c.signal is not None and c.signal != "score"]
    out: list[str] = []
    while names:
        name = names.pop(0)
        if name in out or name not in defn.signals:
            continue
        out.append(name)
        signal = defn.signals[name]
        if isinstance(signal, RatioSignal):
            names.append(signal.ratio.of)
    return out


def reads_of(defn: Definition, spec: TrackingSpec) -> Reads:
    names: set[str] = set(spec.conversions)
    active = False
    timed = defn.requalify.cooldown_days > 0 or (defn.points is not None and defn.points.half_life_days is not None)
    for name in referenced_signals(defn):
        signal = defn.signals[name]
        if isinstance(signal, CountSignal):
            names.add(signal.count)
            timed = timed or signal.last_days is not None
        elif isinstance(signal, ActiveUsersSignal):
            active = True
            timed = timed or signal.active_users.last_days is not None
        elif isinstance(signal, GaugeSignal):
            names.add(signal.gauge.event)
        elif isinstance(signal, VelocitySignal | DaysToSignal):
            of = signal.velocity if isinstance(signal, VelocitySignal) else signal.days_to
            if of.count:
                names.add(of.count)
            else:
                active = True
            timed = True
    return Reads(frozenset(names), active, timed)


def properties_read(definitions: Iterable[Definition]) -> frozenset[str]:
    """Event names whose properties a fold of these definitions reads (their gauges and filters), and the
    conversions and cancellations whose revenue the customer-worth table reads."""
    names: set[str] = set()
    for defn in definitions:
        spec = defn.tracking_spec()
        names |= {g.event for g in spec.gauges} | {f.event for f in spec.filters}
        names |= spec.conversions | spec.cancellations
    return frozenset(names)


# ---- the engine ---------------------------------------------------------------------------------


@dataclass
class SubjectOutcome:
    """What happened to one subject (account, or user for `unit: user`) over the history."""

    account_id: str
    user_id: str | None
    first_ms: int
    last_ms: int
    qualified_at_ms: int | None = None  # first qualification
    qualifications: int = 0
    disqualifications: int = 0
    converted_at_ms: int | None = None
    reasons: list[tuple[str, str, str]] = field(default_factory=list)  # (code, kind, text) at first qualification
    touch: str | None = None
    rows: list[bool] = field(default_factory=list)  # per SignalRow: held at some point before conversion
    records: list[list[tuple[int, float]]] = field(default_factory=list)  # per target: (ms, new max critical)


@dataclass
class DefinitionRun:
    """The raw outcome of one definition over one history, before metrics."""

    name: str
    version: int
    source: str
    unit: str
    rows: list[SignalRow]
    targets: list[SweepTarget]
    subjects: list[SubjectOutcome]
    transitions: list[tuple[str, int]]  # (kind, at_ms) of every transition
    folded: int = 0  # events folded with AccountUsage.apply
    gated: int = 0  # cheap would_enter/would_stay checks
    decided: int = 0  # calls of qualification.decide
    bad: list[BadLine] = field(default_factory=list)  # events ingest would quarantine (bad gauge values)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    worth: dict[str, Any] | None = None  # `pqlflow.analysis.worth.customer_worth`, when the history is in memory


def worth_of(history: History, run: DefinitionRun, defn: Definition) -> dict[str, Any]:
    """PQL-sourced customers against the others over this history (`pqlflow.analysis.worth`): a PQL is an
    account with a subject that qualified, from its first qualification."""
    first_seen, money = money_of_records(history.groups, defn, defn.tracking_spec())
    return customer_worth(first_seen, qualified_accounts(run), money, history.end_ms or 0)


def qualified_accounts(run: DefinitionRun) -> dict[str, int]:
    """Account → its first qualification (of any of its subjects, for `unit: user`)."""
    qualified: dict[str, int] = {}
    for s in run.subjects:
        if s.qualified_at_ms is not None:
            qualified[s.account_id] = min(qualified.get(s.account_id, s.qualified_at_ms), s.qualified_at_ms)
    return qualified


def _exclusion_inputs(defn: Definition) -> Callable[[AccountUsage, str], tuple[Any, ...]]:
    """What `qualification.exclusion` reads that an identify/group event can change: the account traits
    it compares (paying, domain) and, with internal domains, the user's email. Converted and account ids
    are handled apart. Same inputs, same answer: no need to ask again."""
    ex = defn.exclusions
    keys = tuple(dict.fromkeys([*ex.paying, *(ex.domain_traits if ex.internal_domains else [])]))
    emails = bool(ex.internal_domains)

    def inputs(usage: AccountUsage, user: str) -> tuple[Any, ...]:
        traits = usage.traits
        account = tuple(traits[k][1] if k in traits else None for k in keys)
        if not emails:
            return account
        entry = usage.users.get(user, {}).get("email")
        return (*account, entry[1] if entry else None)

    return inputs


_MISSING: Any = object()  # Any: `is _MISSING` does not narrow for the type checker


def _fold_traits(
    usage: AccountUsage,
    rec: tuple[Any, ...],
    spec: TrackingSpec,
    prints: dict[str, bytes],
    encodings: dict[tuple[type, Any], str | None],
) -> None:
    """`AccountUsage.apply` of an identify or group record, without building a UsageEvent and with each
    scalar trait value's JSON computed once per run (`trait_json` of the same str/int/bool/None is the
    same text; floats are not cached: -0.0 == 0.0 but their JSON differs)."""
    ms, kind, user, bag = rec[0], rec[3], rec[5], rec[7]
    if usage.first_seen_ms is None or ms < usage.first_seen_ms:
        usage.first_seen_ms = ms
    if usage.last_seen_ms is None or ms > usage.last_seen_ms:
        usage.last_seen_ms = ms
    day_set = usage.active_users.setdefault(ms // DAY_MS, set())
    if len(day_set) < MAX_USERS_PER_DAY:
        fp = prints.get(user)
        if fp is None:
            fp = prints[user] = fingerprint(user)
        day_set.add(fp)
    user_traits = usage.users.setdefault(user, {})
    seen_at = user_traits.get(SEEN)
    stamp = ms - ms % DAY_MS  # pqlflow.ingest.usage.seen_stamp, inlined on this hot path
    if seen_at is None or (stamp, "null") > seen_at:
        user_traits[SEEN] = (stamp, "null")
    account_traits = kind == "group" or (kind == "identify" and usage.account_id.startswith("user:"))
    if not account_traits and kind != "identify":
        return
    keep = spec.user_traits
    traits = usage.traits
    for key, value in bag.items():
        if not account_traits and key not in keep:
            continue
        t = type(value)
        if t is str or t is int or t is bool or value is None:
            encoded = encodings.get((t, value), _MISSING)
            if encoded is _MISSING:
                encoded = encodings[(t, value)] = trait_json(value)
        else:
            encoded = trait_json(value)
        if encoded is None:
            continue
        entry = (ms, encoded)
        if account_traits:
            old = traits.get(key)
            if old is None or entry > old:
                traits[key] = entry
        if kind == "identify" and key in keep:
            old = user_traits.get(key)
            if old is None or entry > old:
                user_traits[key] = entry


def run_definition(
    history: History, defn: Definition, source: str = "", spec: TrackingSpec | None = None
) -> DefinitionRun:
    """Fold the history per subject and record every transition `decide` makes, as the live path would."""
    started = time.perf_counter()
    spec = defn.tracking_spec(spec)
    reads = reads_of(defn, spec)
    gate = Gate(defn)
    names = reads.names
    active = reads.active_users
    timed = reads.time_dependent
    by_user = defn.unit == "user"
    retention = spec.retention_days
    outs: list[SubjectOutcome] = []
    transitions: list[tuple[str, int]] = []
    run = DefinitionRun(
        defn.name,
        defn.version,
        source,
        defn.unit,
        gate.rows,
        gate.targets,
        outs,
        transitions,
        warnings=list(defn.warnings),
    )
    n_targets = len(gate.targets)
    n_rows = len(gate.rows)
    excluding = _exclusion_inputs(defn)
    again = defn.requalify.again
    cooldown_ms = defn.requalify.cooldown_days * DAY_MS
    folded = gated = decided = 0
    counts_only = gate.count_keys is not None
    conversions = spec.conversions
    # track events AccountUsage.apply only counts (no gauge, no property filter): folded inline below
    # conversions and cancellations are a few per account: they take `usage.apply`, which checks their amounts
    # (a conversion whose mrr live ingest would quarantine is a bad event here too, never a conversion)
    plain = {n for n in names if not spec.gauges_for(n) and not spec.filters_for(n)
             and n not in spec.conversions and n not in spec.cancellations}
    read = (names | {None}).__contains__
    name_of, user_of = itemgetter(6), itemgetter(5)
    prints: dict[str, bytes] = {}  # user id → fingerprint (AccountUsage's day sets)
    encodings: dict[tuple[type, Any], str | None] = {}  # trait value → trait_json
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for account, records in history.groups.items():
            if by_user:
                parts: dict[str, list[tuple[Any, ...]]] = {}
                for rec in records:
                    parts.setdefault(rec[5], []).append(rec)
                subject_lists: Iterable[tuple[str | None, list[tuple[Any, ...]]]] = parts.items()
                names_of = days_of = users_of = None
            else:
                subject_lists = ((None, records),)
                names_of = history.names.get(account)
                days_of = history.days.get(account)
                users_of = history.users.get(account)
            for user_key, events in subject_lists:
                out = SubjectOutcome(
                    account,
                    user_key,
                    events[0][0],
                    events[-1][0],
                    rows=[False] * n_rows,
                    records=[[] for _ in range(n_targets)],
                )
                outs.append(out)
                usage = AccountUsage(account, user_key)
                state = PqlState()
                day = -1
                day_users: set[str] = set()
                enter = stay = excluded = False
                dirty = True
                maxes = [-math.inf] * n_targets
                memo: dict[int, tuple[Any, ...]] = {}
                # With no pruning inside the subject's span, an event the definition does not read, that is
                # not a user's first of the day (when it reads active users) nor the subject's first of a
                # day (when time matters), only moves first/last seen (exact at every check below: first is
                # the subject's first event, last the event being folded): skip it, and take "first event of
                # a new day" from the event before, read or not (when active users are read, a day's first
                # event is its user's first of the day: never skipped).
                skipping = (events[-1][0] - events[0][0]) // DAY_MS < retention - 1
                if skipping:
                    # all found in C, on the columns decode_history keeps (reading the records themselves
                    # would cost a cache miss each): the records read (identify and group records are the
                    # ones without a name), ...
                    column = names_of if names_of is not None else list(map(name_of, events))
                    order: Iterable[int] = list(compress(range(len(events)), map(read, column)))
                    if active or timed:
                        days = days_of if days_of is not None else _days(events)
                        kept = set(order)
                        if active:  # ... each user's first record of each day, ...
                            users = users_of if users_of is not None else list(map(user_of, events))
                            firsts: dict[tuple[str, int], int] = {}
                            deque(map(firsts.setdefault, zip(users, days, strict=True), range(len(events))), maxlen=0)
                            kept.update(firsts.values())
                        if timed:  # ... and the subject's first record of each day
                            starts = {0}
                            starts.update(compress(range(1, len(days)), map(operator.ne, islice(days, 1, None), days)))
                            kept |= starts
                        order = sorted(kept)
                    usage.first_seen_ms = events[0][0]
                else:
                    order = range(len(events))
                for i in order:
                    rec = events[i]
                    ms = rec[0]
                    kind = rec[3]
                    if skipping:
                        new_day = i in starts if timed else not i or events[i - 1][0] // DAY_MS != ms // DAY_MS
                        day = ms // DAY_MS
                    elif ms // DAY_MS != day:
                        new_day = True
                        day = ms // DAY_MS
                    else:
                        new_day = False
                    if new_day:
                        if active:
                            day_users = set()
                        if usage.first_seen_ms is not None and day - usage.first_seen_ms // DAY_MS >= retention:
                            usage.prune(ms, spec)
                            dirty = True  # capping users can change whose emails the exclusions see
                    if kind != "track" or rec[6] in names or active and rec[5] not in day_users:
                        relevant = True
                    else:
                        relevant = False
                    if relevant:
                        if active:
                            day_users.add(rec[5])
                        if kind == "track" and rec[6] in plain:
                            # AccountUsage.apply of a track event with no gauge or filter, inlined
                            user = rec[5]
                            if usage.first_seen_ms is None or ms < usage.first_seen_ms:
                                usage.first_seen_ms = ms
                            if usage.last_seen_ms is None or ms > usage.last_seen_ms:
                                usage.last_seen_ms = ms
                            day_set = usage.active_users.get(day)
                            if day_set is None:
                                day_set = usage.active_users[day] = set()
                            if len(day_set) < MAX_USERS_PER_DAY:
                                fp = prints.get(user)
                                if fp is None:
                                    fp = prints[user] = fingerprint(user)
                                day_set.add(fp)
                            user_traits = usage.users.get(user)
                            if user_traits is None:
                                user_traits = usage.users[user] = {}
                            seen_at = user_traits.get(SEEN)
                            stamp = ms - ms % DAY_MS
                            if seen_at is None or (stamp, "null") > seen_at:
                                user_traits[SEEN] = (stamp, "null")
                            name = rec[6]
                            lifetime = usage.lifetime
                            lifetime[name] = lifetime.get(name, 0) + 1
                            per_day = usage.daily.get(name)
                            if per_day is None:
                                per_day = usage.daily[name] = {}
                            per_day[day] = per_day.get(day, 0) + 1
                            if name in conversions and (usage.converted_at_ms is None or ms < usage.converted_at_ms):
                                usage.converted_at_ms = ms
                            folded += 1
                            before = None
                        else:
                            before = excluding(usage, rec[5]) if kind != "track" else None
                            try:
                                if before is not None:
                                    _fold_traits(usage, rec, spec, prints, encodings)
                                else:
                                    usage.apply(to_event(rec), spec)
                            except GaugeError as exc:
                                path, number = history.locate(rec[1])
                                run.bad.append(BadLine(path, number, f"{exc.field}: {exc}", rec[2]))
                                continue
                            folded += 1
                        if before is not None and excluding(usage, rec[5]) != before:
                            dirty = True  # a trait the exclusions read changed: ask `exclusion` again
                    else:
                        if usage.first_seen_ms is None:
                            usage.first_seen_ms = ms
                        usage.last_seen_ms = ms
                        if not (new_day and timed):
                            continue
                    # ---- decide when the live qualify function would (qualification.needs_decision) and
                    # when `decide` could return a transition at all (it returns None otherwise: exact)
                    if usage.converted_at_ms is not None:
                        must = True
                    else:
                        if dirty:
                            excluded = exclusion(defn, usage) is not None
                            dirty = False
                        gated += 1
                        if counts_only:
                            now_enter, now_stay, rows, crits = gate.check_counts(usage, excluded)
                        else:
                            now_enter, now_stay, rows, crits = gate.check(usage, ms, excluded, memo)
                        must = (now_enter and not enter) or (stay and not now_stay) or (now_enter and new_day)
                        enter, stay = now_enter, now_stay
                        if True in rows:
                            held = out.rows
                            for j, ok in enumerate(rows):
                                if ok:
                                    held[j] = True
                        for j, c in enumerate(crits):
                            if c > maxes[j]:
                                maxes[j] = c
                                out.records[j].append((ms, c))
                        if must:
                            if state.status == "qualified":
                                must = not stay
                            else:
                                blocked = state.status == "disqualified" and not again
                                cooling = state.qualified_at_ms is not None and ms - state.qualified_at_ms < cooldown_ms
                                must = enter and not blocked and not cooling
                    if not must:
                        continue
                    decided += 1
                    transition = decide(defn, usage, state, ms)
                    if transition is None:
                        continue
                    state = transition.new_state
                    transitions.append((transition.kind, transition.at_ms))
                    if transition.kind == "qualified":
                        out.qualifications += 1
                        if out.qualified_at_ms is None:
                            out.qualified_at_ms = transition.at_ms
                            evaluation = transition.evaluation
                            if evaluation is not None:
                                out.touch = evaluation.touch
                                out.reasons = [(r.code, r.kind, r.text) for r in evaluation.reasons]
                    elif transition.kind == "disqualified":
                        out.disqualifications += 1
                    else:
                        out.converted_at_ms = transition.at_ms
                        break  # conversion is final: decide returns None for this subject from now on
    finally:
        if gc_was:
            gc.enable()
    run.folded, run.gated, run.decided = folded, gated, decided
    run.seconds = time.perf_counter() - started
    return run


# ---- metrics ------------------------------------------------------------------------------------

TIME_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 d", 1),
    ("1–3 d", 3),
    ("3–7 d", 7),
    ("1–2 wk", 14),
    ("2–4 wk", 28),
    ("4–8 wk", 56),
    ("8+ wk", math.inf),
)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _week_start(ms: int) -> str:
    day = datetime.fromtimestamp(ms / 1000, UTC).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _confusion(subjects: Iterable[tuple[int | None, int | None]], window_ms: int) -> dict[str, Any]:
    """Precision, recall and lift of "qualified" as a predictor of converting, from (qualified_at,
    converted_at) pairs. A PQL is a hit (tp) when it converted within the window after qualifying. Recall
    and the base rate count every subject that converted at any time in the history, so their denominators
    are the same for every threshold and definition on one history: a PQL converting after its window is a
    miss for both precision (fp) and recall (fn)."""
    tp = late = idle = missed = tn = 0
    for q, c in subjects:
        if q is not None:
            if c is None:
                idle += 1
            elif 0 <= c - q <= window_ms:
                tp += 1
            else:
                late += 1
        elif c is not None:
            missed += 1
        else:
            tn += 1
    n = tp + late + idle + missed + tn
    pqls = tp + late + idle
    converters = tp + late + missed
    precision = _ratio(tp, pqls)
    base = _ratio(converters, n)
    return {
        "subjects": n,
        "pqls": pqls,
        "tp": tp,
        "fp": pqls - tp,
        "fn": converters - tp,
        "tn": tn,
        "precision": precision,
        "recall": _ratio(tp, converters),
        "base_rate": base,
        "lift": precision / base if precision is not None and base else None,
        "pql_conversion_rate": precision,
        "non_pql_conversion_rate": _ratio(missed, missed + tn),
    }


def _nice(x: float) -> float:
    """A round number near x (1, 2, 2.5, 5 × 10^k), for sweep thresholds a person would pick."""
    if x <= 0 or not math.isfinite(x):
        return x
    k = 10 ** math.floor(math.log10(x))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10):
        if x <= m * k * 1.0001:
            value = m * k
            return float(round(value)) if value >= 1 else round(value, 6)
    return x


def _grid(current: float, maxima: list[float], steps: int = 14) -> list[float]:
    finite = sorted(v for v in maxima if math.isfinite(v) and v > 0)
    cands = {current}
    if current > 0:
        cands |= {_nice(current * f) for f in (0.25, 0.5, 0.75, 1.25, 1.5, 2, 3)}
    if finite:
        for q in range(1, 10):
            cands.add(_nice(finite[min(len(finite) - 1, int(len(finite) * q / 10))]))
    if float(current).is_integer() and all(float(v).is_integer() for v in finite):  # counts: whole thresholds
        cands = {float(max(1, math.ceil(v))) for v in cands} | {current}
    values = sorted(v for v in cands if v > 0 or current <= 0)
    if len(values) > steps:  # keep the current threshold and an even spread around it
        keep = {current, values[0], values[-1]}
        stride = len(values) / (steps - 3)
        keep |= {values[int(i * stride)] for i in range(steps - 3)}
        values = sorted(keep)
    return values


def sweep(
    run: DefinitionRun, target_index: int, window_ms: int, thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """PQL volume and conversion at other thresholds of one target, from each subject's record highs."""
    target = run.targets[target_index]
    sign = 1.0 if target.op in ("gte", "gt") else -1.0
    strict = target.op in ("gt", "lt")
    prepared = []
    for s in run.subjects:
        records = s.records[target_index]
        prepared.append(([c for _, c in records], [m for m, _ in records], s.converted_at_ms))
    if thresholds is None:
        maxima = [sign * r[0][-1] for r in prepared if r[0]]
        thresholds = _grid(target.current, maxima)
    points = []
    for t in thresholds:
        internal = sign * t
        pairs = []
        for crits, times, conv in prepared:
            i = bisect.bisect_right(crits, internal) if strict else bisect.bisect_left(crits, internal)
            pairs.append((times[i] if i < len(crits) else None, conv))
        m = _confusion(pairs, window_ms)
        points.append(
            {
                "threshold": t,
                "pqls": m["pqls"],
                "converted": m["tp"],
                "conversion_rate": m["precision"],
                "precision": m["precision"],
                "recall": m["recall"],
                "lift": m["lift"],
                "current": t == target.current,
            }
        )
    return {
        "label": target.label,
        "signal": target.signal,
        "op": target.op,
        "current": target.current,
        "points": points,
    }


def metrics(run: DefinitionRun, window_days: float = 30, end_ms: int | None = None) -> dict[str, Any]:
    """Everything the report shows about one definition's run, as plain JSON-able data."""
    window_ms = int(window_days * DAY_MS)
    subjects = run.subjects
    end_ms = end_ms if end_ms is not None else max((s.last_ms for s in subjects), default=0)
    conf = _confusion(((s.qualified_at_ms, s.converted_at_ms) for s in subjects), window_ms)
    pqls = [s for s in subjects if s.qualified_at_ms is not None]
    converted_after = [
        (s.converted_at_ms - s.qualified_at_ms) / DAY_MS
        for s in pqls
        if s.converted_at_ms is not None and s.qualified_at_ms is not None and s.converted_at_ms >= s.qualified_at_ms
    ]
    buckets = []
    lower = 0.0
    for label, upper in TIME_BUCKETS:
        buckets.append({"label": label, "count": sum(1 for d in converted_after if lower <= d < upper)})
        lower = upper
    ttc: dict[str, Any] = {
        "n": len(converted_after),
        "buckets": buckets,
        "median_days": None,
        "p25_days": None,
        "p75_days": None,
        "mean_days": None,
    }
    if converted_after:
        ordered = sorted(converted_after)
        ttc["median_days"] = round(statistics.median(ordered), 2)
        ttc["mean_days"] = round(statistics.fmean(ordered), 2)
        ttc["p25_days"] = round(ordered[int(0.25 * (len(ordered) - 1))], 2)
        ttc["p75_days"] = round(ordered[int(0.75 * (len(ordered) - 1))], 2)
    weeks: dict[str, dict[str, int]] = {}

    def week(ms: int) -> dict[str, int]:
        return weeks.setdefault(
            _week_start(ms),
            {"new_subjects": 0, "pqls": 0, "qualified_events": 0, "converted": 0, "pqls_converted": 0},
        )

    for s in subjects:
        week(s.first_ms)["new_subjects"] += 1
        if s.qualified_at_ms is not None:
            counts = week(s.qualified_at_ms)
            counts["pqls"] += 1
            if s.converted_at_ms is not None and 0 <= s.converted_at_ms - s.qualified_at_ms <= window_ms:
                counts["pqls_converted"] += 1
        if s.converted_at_ms is not None:
            week(s.converted_at_ms)["converted"] += 1
    for kind, at in run.transitions:
        if kind == "qualified":
            week(at)["qualified_events"] += 1
    weekly = [{"week": w, **weeks[w]} for w in sorted(weeks)]
    reasons: dict[str, dict[str, Any]] = {}
    # Each reason's example is the earliest PQL's, so it does not depend on the order of the input files.
    for s in sorted(pqls, key=lambda s: (s.qualified_at_ms, s.account_id, s.user_id or "")):
        for code, kind, text in s.reasons:
            entry = reasons.setdefault(code, {"code": code, "kind": kind, "example": text, "count": 0})
            entry["count"] += 1
    top_reasons = sorted(reasons.values(), key=lambda r: (-r["count"], r["code"]))
    n = len(subjects)
    converted_total = sum(1 for s in subjects if s.converted_at_ms is not None)
    base = _ratio(converted_total, n)
    signal_rows = []
    for j, row in enumerate(run.rows):
        with_ = [s for s in subjects if s.rows[j]]
        w_conv = sum(1 for s in with_ if s.converted_at_ms is not None)
        wo_n = n - len(with_)
        wo_conv = converted_total - w_conv
        rate_with = _ratio(w_conv, len(with_))
        signal_rows.append(
            {
                "label": row.label,
                "signal": row.signal,
                "source": row.source,
                "with": len(with_),
                "with_converted": w_conv,
                "with_rate": rate_with,
                "without": wo_n,
                "without_converted": wo_conv,
                "without_rate": _ratio(wo_conv, wo_n),
                "lift": rate_with / base if rate_with is not None and base else None,
                "coverage": _ratio(len(with_), n),
            }
        )
    censored = sum(
        1
        for s in pqls
        if s.qualified_at_ms is not None and s.qualified_at_ms + window_ms > end_ms and s.converted_at_ms is None
    )
    touch = {
        "high": sum(1 for s in pqls if s.touch == "high"),
        "low": sum(1 for s in pqls if s.touch == "low"),
    }
    return {
        "definition": {"name": run.name, "version": run.version, "source": run.source, "unit": run.unit},
        "window_days": window_days,
        "active": n,
        "converted": converted_total,
        **conf,
        "qualified_events": sum(1 for k, _ in run.transitions if k == "qualified"),
        "disqualified_events": sum(1 for k, _ in run.transitions if k == "disqualified"),
        "censored_pqls": censored,
        "touch": touch,
        "time_to_convert": ttc,
        "weekly": weekly,
        "reasons": top_reasons[:10],
        "signals": signal_rows,
        "sweeps": [sweep(run, i, window_ms) for i in range(len(run.targets))],
        "work": {
            "folded": run.folded,
            "gated": run.gated,
            "decided": run.decided,
            "seconds": round(run.seconds, 3),
        },
        "warnings": run.warnings,
        "bad_events": [str(b) for b in run.bad[:50]],
        "bad_event_count": len(run.bad),
        "worth": run.worth,
    }


def overlap(a: DefinitionRun, b: DefinitionRun, window_days: float = 30) -> dict[str, Any]:
    """Comparison mode: which accounts each definition qualifies, and how those groups convert."""
    window_ms = int(window_days * DAY_MS)

    def by_account(run: DefinitionRun) -> dict[str, SubjectOutcome]:
        out: dict[str, SubjectOutcome] = {}
        for s in run.subjects:
            prev = out.get(s.account_id)
            if prev is None or (
                s.qualified_at_ms is not None
                and (prev.qualified_at_ms is None or s.qualified_at_ms < prev.qualified_at_ms)
            ):
                out[s.account_id] = s
        return out

    sa, sb = by_account(a), by_account(b)
    groups: dict[str, list[bool]] = {"both": [], "only_a": [], "only_b": [], "neither": []}
    for account in sorted(set(sa) | set(sb)):
        x, y = sa.get(account), sb.get(account)
        qa = x is not None and x.qualified_at_ms is not None
        qb = y is not None and y.qualified_at_ms is not None
        subject = x or y
        if TYPE_CHECKING:
            assert subject is not None  # the account is in sa or in sb
        conv = subject.converted_at_ms
        group = "both" if qa and qb else "only_a" if qa else "only_b" if qb else "neither"
        groups[group].append(conv is not None)
    rows = [
        {"group": g, "accounts": len(v), "converted": sum(v), "conversion_rate": _ratio(sum(v), len(v))}
        for g, v in groups.items()
    ]
    earlier = later = same = 0
    for account, x in sa.items():
        y = sb.get(account)
        if x.qualified_at_ms is not None and y is not None and y.qualified_at_ms is not None:
            if x.qualified_at_ms < y.qualified_at_ms:
                earlier += 1
            elif x.qualified_at_ms > y.qualified_at_ms:
                later += 1
            else:
                same += 1
    return {
        "groups": rows,
        "a_earlier": earlier,
        "b_earlier": later,
        "same_time": same,
        "window_days": window_days,
        "window_ms": window_ms,
    }


# ---- one call for the CLI, the bench and tests ----------------------------------------------------


@dataclass
class BacktestResult:
    history: History
    runs: list[DefinitionRun]
    window_days: float
    decode_only: tuple[int, float, float] | None = None  # bare decoding (lines, wall s, CPU s), when measured
    seconds: float = 0.0  # decode + every definition's run, wall clock
    cpu_seconds: float = 0.0  # the same, CPU time of this process (one core: nothing runs in parallel)
    engine: str = "reference"  # which engine answered: reference | columnar (`pqlflow.analysis.columnar`)
    fallback: str | None = None  # why the columnar engine handed the run to the reference, when it did

    @property
    def events_per_second(self) -> float:
        return self.history.lines / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        h = self.history
        data: dict[str, Any] = {
            "source": "backtest",
            "engine": {"name": self.engine, "fallback": self.fallback},
            "history": h.summary(),
            "window_days": self.window_days,
            "speed": {
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "decode_seconds": round(h.decode_seconds, 3),
                "events_per_second": round(self.events_per_second),
                "events_per_cpu_second": round(h.lines / self.cpu_seconds) if self.cpu_seconds else None,
                "json": JSON_DECODER,
            },
            "definitions": [metrics(r, self.window_days, h.end_ms) for r in self.runs],
        }
        if self.decode_only is not None:
            lines, secs, cpu = self.decode_only
            data["speed"]["bare_decode_seconds"] = round(secs, 3)
            data["speed"]["bare_decode_cpu_seconds"] = round(cpu, 3)
            data["speed"]["bare_decode_lines_per_second"] = round(lines / secs) if secs else None
        if len(self.runs) == 2:
            data["comparison"] = overlap(self.runs[0], self.runs[1], self.window_days)
        return data


def check_window(window_days: float) -> None:
    if window_days <= 0 or not math.isfinite(window_days):
        raise UsageError(f"--window {window_days}: must be a positive number of days")


def run_backtest(
    paths: Sequence[str | Path],
    definitions: Sequence[tuple[Definition, str]],
    *,
    window_days: float = 30,
    measure_decode: bool = False,
    now_s: float | None = None,
) -> BacktestResult:
    """Decode the history once, in memory, run each (definition, source) on it, and time it all. For a
    history larger than memory: `pqlflow.analysis.partitions.run_backtest_partitioned`, same answers."""
    check_window(window_days)
    bare = decode_only(paths) if measure_decode else None
    started = time.perf_counter()
    cpu = time.process_time()
    history = decode_history(paths, now_s=now_s, keep_properties=properties_read(d for d, _ in definitions))
    runs = [run_definition(history, defn, source) for defn, source in definitions]
    for run, (defn, _) in zip(runs, definitions, strict=True):
        run.worth = worth_of(history, run, defn)
    return BacktestResult(history, runs, window_days, bare, time.perf_counter() - started, time.process_time() - cpu)
