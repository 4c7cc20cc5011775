"""The columnar fast path of `pqlflow backtest`: DuckDB reads, validates and aggregates the history, Python
decides only what cannot change between an account's trait events.

A definition in the subset (`unsupported` says why one is not) is answered from one DuckDB pass over the
history files (JSON Lines, plain or gzip, and Parquet, as `history_files` reads them) instead of decoding
every line in Python. The answer is the reference engine's (`backtest.run_definition`) by construction:

- every line must be in a strict shape that the reference decoder certainly accepts (`STRICT` below: the
  fast decoder's own shape, checked in SQL); one line outside it, a duplicate messageId whose lines differ,
  two of an account's events at the same millisecond where one of them is a trait, conversion or
  cancellation event (the reference breaks such ties by file order), or an account whose events span the
  definition's retention (the reference prunes) and the whole run falls back to the reference engine
  (`Fallback`), which then reports exactly what it always reports (bad lines and all);
- the account's identify and group events and its conversions and cancellations (a few per account) are
  handed to Python as their raw lines and decoded by the reference decoder, folded with
  `AccountUsage.apply`, and the exclusions are asked of `qualify.evaluation.exclusion` after each of them;
- the counted event only increments a lifetime count, so between two trait events the first qualifying
  event is the one that brings the count to the threshold: its time comes from the sorted times DuckDB
  gives; the reasons and the touch are `qualify.evaluation.decide`'s at that moment, on the account's
  traits folded so far and the count at that event;
- an exclusion that starts to hold after the account qualified disqualifies it at that trait event; it
  qualifies again (requalify `again`) at the first event after the cooldown where the rule holds: the
  first day's first event after the cooldown ends, as the reference checks a time-dependent definition.

The subset: `unit: account`, no points, `qualify` one lifetime count (gte/gt a positive number) of an event
with no property filter or gauge, `touch` by traits (or none), any exclusions and requalify settings.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqlflow.analysis import history_files
from pqlflow.analysis.backtest import (
    DAY_MS,
    HISTORY_RETENTION_DAYS,
    BacktestResult,
    DefinitionRun,
    FastDecoder,
    History,
    SubjectOutcome,
    _exclusion_inputs,
    _fold_traits,
    check_window,
    decode_only,
    properties_read,
    qualified_accounts,
    reads_of,
)
from pqlflow.analysis.gate import Gate, rule_conditions
from pqlflow.analysis.history_files import _first_line, _require_duckdb, expand, kind_of, message_sql
from pqlflow.analysis.worth import customer_worth, money_of_records
from pqlflow.contracts.usage_events import (
    MAX_FUTURE_SECONDS,
    MAX_IDENTIFIER_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    PAGE_EVENT,
    SCREEN_EVENT,
)
from pqlflow.ingest.usage import AccountUsage, RevenueError, money_fields
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.evaluation import PqlState, decide, exclusion
from pqlflow.qualify.language import CountSignal, Definition, TraitSignal

ENGINES = ("auto", "reference", "columnar")


class Fallback(Exception):  # noqa: N818 - not an error: the reference engine answers instead
    """This history cannot be answered exactly here: the reference engine must run (the message says why)."""


def available() -> bool:
    return history_files.duckdb is not None


def unsupported(defn: Definition) -> str | None:
    """Why the columnar engine cannot run this definition (None: it can)."""
    if defn.unit != "account":
        return f"unit {defn.unit!r} (only unit: account)"
    if defn.points is not None:
        return "points (only a qualify rule of one lifetime count)"
    gate = Gate(defn)
    conds = rule_conditions(defn.qualify)
    if not gate.one_leaf or len(conds) != 1:
        return "a qualify rule other than one lifetime count against a number"
    cond = conds[0]
    signal = defn.signals.get(cond.signal or "")
    if not isinstance(signal, CountSignal) or signal.last_days is not None:
        return f"qualify signal {cond.signal_name!r} is not a lifetime count"
    if cond.op not in ("gte", "gt") or not (cond.threshold > 0 or (cond.op == "gt" and cond.threshold == 0)):
        return f"qualify {cond.signal_name} {cond.op} {cond.threshold} (only gte/gt a positive number)"
    spec = defn.tracking_spec()
    if signal.key != signal.count or spec.filters_for(signal.count) or spec.gauges_for(signal.count):
        return f"the count of {signal.count!r} has a property filter or a gauge"
    if signal.count in spec.conversions:
        return f"{signal.count!r} is a conversion event"
    for name in spec.conversions:
        if spec.gauges_for(name) or spec.filters_for(name):
            return f"conversion event {name!r} has a gauge or property filter"
    if reads_of(defn, spec).active_users:
        return "an active-users signal"
    for touch in rule_conditions(defn.touch.high):
        name = touch.signal_name
        if touch.trait is None and not isinstance(defn.signals.get(name), TraitSignal):
            return f"touch condition on {touch.signal_name!r} (only traits)"
    return None


# ---- the SQL ------------------------------------------------------------------------------------

_FIELDS = ("type", "messageId", "timestamp", "userId", "anonymousId", "event", "groupId", "context",
           "context.groupId", "context.timezone", "name", "category", "properties", "traits")
# a time as toISOString() (milliseconds) or strftime's %f (microseconds: Parquet timestamps) writes it
_TIME = r'"\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.(\d{3}|\d{6})Z"'


def _x(i: int) -> str:
    """The JSON text of field i (1-based in `_FIELDS`) of the line; NULL when the field is absent."""
    return f"x[{i}]"


def _str(i: int) -> str:
    """The value of a string field whose JSON text has no escape (the only strings the strict shape admits)."""
    return f"substr({_x(i)}, 2, strlen({_x(i)}) - 2)"


def _ident(i: int) -> str:
    """Field i is a JSON string that certainly passes events.Identifier: spelled without escapes (so, in a
    line DuckDB parsed, without control characters or quotes), ASCII (as many bytes as characters), no DEL,
    not only spaces, at most MAX_IDENTIFIER_CHARS characters."""
    x = _x(i)
    return (f"(starts_with({x}, '\"') AND NOT contains({x}, '\\') AND strlen({x}) = length({x}) "
            f"AND strlen({x}) <= {MAX_IDENTIFIER_CHARS + 2} AND NOT contains({x}, chr(127)) "
            f"AND trim({_str(i)}) <> '')")


def _null(i: int) -> str:
    return f"coalesce({_x(i)}, 'null') = 'null'"


def _str_or_null(i: int) -> str:
    return f"({_null(i)} OR starts_with({_x(i)}, '\"'))"


def _kind(*kinds: str) -> str:
    return "x[1] IN (" + ", ".join(f"'\"{k}\"'" for k in kinds) + ")"


_CHAR = r"[ !#-\[\]-~]"  # printable ASCII but the quote and the backslash: a string spelled without escapes
_ID = rf'"[ ]*[!#-\[\]-~]{_CHAR}*"'  # ... and not only spaces: a JSON string events.Identifier certainly accepts
_IDS = (2, 4, 5, 6, 7, 9, 11, 12)  # messageId, userId, anonymousId, event, groupId, context.groupId, name, category

# The strict shape, in SQL over `x` (each field's JSON text, from one parse of the line) and `j` (the line): a
# line in it is a message the reference decoder's fast path accepts (FastDecoder), decoded to the same
# account, user, name and time. Every identifier-like field present is a JSON string spelled without
# escapes, and all of them together are at most MAX_IDENTIFIER_CHARS long (stricter than each one being so).
STRICT = " AND ".join([
    f"strlen(j) <= {MAX_MESSAGE_BYTES // 4}",
    "NOT contains(j, '\"detail-type\"')",
    # DuckDB's parser also takes NaN, Infinity and trailing commas, which the reference refuses
    r"NOT regexp_matches(j, ',[ \t\r\n]*[}\]]|[:\[,][ \t\r\n]*-?[NnIi]')",
    f"strlen(j) - strlen(replace(replace(j, '{{', ''), '[', '')) <= {MAX_NESTING_DEPTH + 1}",
    _kind("track", "identify", "group", "page", "screen"),
    "ids IS NOT NULL",
    f"regexp_full_match(ids, '{_ID}(\\x01{_ID})*')",
    f"strlen(ids) <= {MAX_IDENTIFIER_CHARS}",
    f"starts_with({_x(2)}, '\"')",
    f"(starts_with({_x(4)}, '\"') OR starts_with({_x(5)}, '\"'))",
    f"(NOT {_kind('track')} OR starts_with({_x(6)}, '\"'))",
    f"(NOT {_kind('group')} OR starts_with({_x(7)}, '\"'))",
    f"regexp_full_match({_x(3)}, '{_TIME}') AND ts_s BETWEEN $lo AND $hi",
    f"({_null(8)} OR starts_with({_x(8)}, '{{'))",
    _str_or_null(10),
    f"({_x(13)} IS NULL OR starts_with({_x(13)}, '{{'))",
    f"({_x(14)} IS NULL OR starts_with({_x(14)}, '{{'))",
])
_IDS_SQL = "concat_ws(chr(1), " + ", ".join(f"NULLIF({_x(i)}, 'null')" for i in _IDS) + ")"


def _source(path: Path, index: int, kind: str, con: Any) -> str:
    """SQL for one file's messages as (file, j): a JSON line, or a Parquet row spelled as one (`kind`:
    `history_files.kind_of`)."""
    if kind == "parquet":
        described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
        columns = {row[0]: str(row[1]) for row in described}
        expr = message_sql(path, columns)
        return f"SELECT {index} AS file, {expr} AS j FROM read_parquet({_lit(str(path))})"  # noqa: S608
    compression = "gzip" if kind == "gzip" else "none"
    return (
        f"SELECT {index} AS file, json::VARCHAR AS j FROM read_json_objects({_lit(str(path))}, "  # noqa: S608
        f"format = 'newline_delimited', compression = '{compression}')"
    )


# The members the SQL reads from a message, as `read_json` columns: reading them so, DuckDB refuses an object
# with one of them twice (its json_extract takes the first, the reference's msgspec the last). Properties and
# traits are read as a struct of a member no message has, so that their contents are not copied out (their
# own keys are the reference decoder's business: it decodes every line whose properties or traits count).
_UNIQUE = ("{'type': 'JSON', 'messageId': 'JSON', 'timestamp': 'JSON', 'userId': 'JSON', 'anonymousId': 'JSON', "
           "'event': 'JSON', 'groupId': 'JSON', 'context': 'STRUCT(groupId JSON, timezone JSON)', 'name': 'JSON', "
           "'category': 'JSON', 'properties': 'STRUCT(pqlflow_unread JSON)', "
           "'traits': 'STRUCT(pqlflow_unread JSON)'}")
_UNIQUE_READ = ", ".join(f"count({c})" for c in ("type", "messageId", "timestamp", "userId", "anonymousId", "event",
                                                "groupId", "context", "name", "category", "properties", "traits"))
# ... and in a Parquet row spelled as a line, only a context given as a JSON string can hold a key twice
_CONTEXT_KEYS_UNIQUE = (f"({_x(8)} IS NULL OR NOT starts_with({_x(8)}, '{{') "
                        f"OR list_unique(json_keys({_x(8)})) = len(json_keys({_x(8)})))")


def _unique_keys(con: Any, path: Path, kind: str) -> None:
    """`Fallback` when a message of this JSON Lines file holds a member the SQL reads (or one of its context's)
    twice: DuckDB would read the first, the reference the last (~0.5 s per million lines)."""
    compression = "gzip" if kind == "gzip" else "none"
    try:
        con.execute(f"SELECT {_UNIQUE_READ} FROM read_json({_lit(str(path))}, columns = {_UNIQUE}, "  # noqa: S608
                    f"format = 'newline_delimited', compression = '{compression}')").fetchall()
    except history_files.duckdb.Error as exc:  # named by line and member: DuckDB's message quotes the line
        text = str(exc)
        line, key = re.search(r"in line (\d+)", text), re.search(r'has duplicate key "([^"]{0,64})"', text)
        where = f" line {int(line.group(1)):,}" if line else ""
        if "Malformed JSON" in text:
            what = "DuckDB could not read every line as JSON"
        elif key:
            what = f"the member {key.group(1)!r} twice"
        else:
            what = "a member the SQL reads is not in a message's shape"
        raise Fallback(f"{path}{where}: {what}") from None


def _one(con: Any, sql: str) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = con.execute(sql).fetchone()
    assert row is not None  # an aggregate without GROUP BY gives one row
    return row


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class _Table:
    """The validated events, in DuckDB, with what the history summary needs."""

    con: Any
    files: list[tuple[str, int]]
    lines: int
    count: int
    duplicates: int
    start_ms: int | None
    end_ms: int | None


def load(paths: Sequence[str | Path], now_s: float, keep: Sequence[str], threads: int = 1) -> _Table:
    """Read every file into the table `ev` (account, user_id, mid, type, event, ms, h, j), deduplicated:
    `j`, the line, only for identify and group events and tracks named in `keep` (the rest need only their
    time); `h` its hash. `Fallback` when a line is outside the strict shape or a duplicate differs."""
    files = expand(paths)
    if history_files.duckdb is None:
        _require_duckdb(files[0] if files else Path("."))
    con = history_files.duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    fields = "[" + ", ".join(f"'$.{f}'" for f in _FIELDS) + "]"
    lo = now_s - HISTORY_RETENTION_DAYS * 86400
    hi = now_s + MAX_FUTURE_SECONDS
    kinds = [kind_of(p) for p in files]
    try:
        for p, kind in zip(files, kinds, strict=True):
            if kind != "parquet":
                _unique_keys(con, p, kind)
    except Fallback:
        con.close()
        raise
    strict = STRICT + (" AND " + _CONTEXT_KEYS_UNIQUE if "parquet" in kinds else "")
    try:
        sources = " UNION ALL ".join(
            _source(p, i, kind, con) for i, (p, kind) in enumerate(zip(files, kinds, strict=True)))
        con.execute(f"""
            CREATE TEMP TABLE ev AS
            SELECT file, coalesce({strict}, false) AS ok,
                   CASE WHEN x[1] = '"group"' THEN {_str(7)}
                        ELSE coalesce({_str(9)}, 'user:' || coalesce({_str(4)}, {_str(5)})) END AS account,
                   coalesce({_str(4)}, {_str(5)}) AS user_id, {_str(2)} AS mid,
                   CASE WHEN x[1] IN ('"page"', '"screen"') THEN 'track' ELSE {_str(1)} END AS type,
                   CASE x[1] WHEN '"page"' THEN $page WHEN '"screen"' THEN $screen ELSE {_str(6)} END AS event,
                   trunc(ts_s * 1000.0)::BIGINT AS ms, hash(j) AS h,
                   CASE WHEN x[1] IN ('"identify"', '"group"') OR {_str(6)} IN (SELECT unnest($keep::VARCHAR[]))
                        THEN j END AS j
            FROM (SELECT file, j, x, {_IDS_SQL} AS ids,
                         epoch_us(try_cast({_str(3)} AS TIMESTAMP))::DOUBLE / 1000000.0 AS ts_s
                  FROM (SELECT file, j, json_extract(j, {fields})::VARCHAR[] AS x FROM ({sources})))
        """, {"lo": lo, "hi": hi, "page": PAGE_EVENT, "screen": SCREEN_EVENT, "keep": list(keep)})  # noqa: S608
        per_file = con.execute("SELECT file, count(*), count(*) FILTER (WHERE NOT ok) FROM ev GROUP BY file").fetchall()
    except history_files.duckdb.Error as exc:
        con.close()
        raise Fallback(f"DuckDB could not read every line as JSON ({_first_line(exc)})") from None
    outside = sum(b for _, _, b in per_file)
    if outside:
        con.close()
        raise Fallback(f"{outside} line(s) outside the strict shape the fast path checks")
    counts = {f: n for f, n, _ in per_file}
    index = 0
    spans: list[tuple[str, int]] = []
    for i, p in enumerate(files):
        spans.append((str(p), index))
        index += counts.get(i, 0)
    n, distinct_ids, start, end = _one(con, "SELECT count(*), count(DISTINCT mid), min(ms), max(ms) FROM ev")
    distinct = n
    if distinct_ids != n:  # a messageId twice: deduplicate by (account, messageId), as the reference does
        distinct, differing = _one(
            con,
            "SELECT count(*), count(*) FILTER (WHERE hashes > 1) FROM "
            "(SELECT count(DISTINCT h) AS hashes FROM ev GROUP BY account, mid)",
        )
        if differing:
            con.close()
            raise Fallback(f"{differing} messageId(s) repeated with different lines (the reference keeps the first)")
        con.execute(
            "CREATE TEMP TABLE ev1 AS SELECT * FROM ev QUALIFY row_number() OVER (PARTITION BY account, mid) = 1"
        )
        con.execute("DROP TABLE ev")
        con.execute("ALTER TABLE ev1 RENAME TO ev")
    return _Table(con, spans, index, distinct, n - distinct, start, end)


# ---- one definition -----------------------------------------------------------------------------


def _special_names(defn: Definition) -> list[str]:
    spec = defn.tracking_spec()
    return sorted(spec.conversions | spec.cancellations)


class _Fold:
    """One account's outcome under a one-count definition: the counted events in bulk, the trait events one
    by one, every transition by `qualify.evaluation.decide` (see the module's docstring)."""

    def __init__(self, defn: Definition, counted: str, first_k: int, transitions: list[tuple[str, int]], con: Any):
        self.defn = defn
        self.spec = defn.tracking_spec()
        self.counted = counted
        self.first_k = first_k  # the count at which the rule holds first
        self.transitions = transitions
        self.con = con
        self.excluding = _exclusion_inputs(defn)
        self.prints: dict[str, bytes] = {}
        self.encodings: dict[tuple[type, Any], str | None] = {}
        self.decided = 0
        self.cooldown_ms = defn.requalify.cooldown_days * DAY_MS
        self.again = defn.requalify.again

    def account(self, out: SubjectOutcome, times: list[int], records: list[tuple[Any, ...]], conv: int | None) -> None:
        """Fill `out` (qualifications, reasons, touch, rows, record highs) and the transitions from the
        account's counted times and its decoded records, up to its first conversion `conv`."""
        defn, spec, first_k = self.defn, self.spec, self.first_k
        before = len(times) if conv is None else bisect.bisect_left(times, conv)
        self.usage = usage = AccountUsage(out.account_id, None)
        self.out = out
        self.times = times
        self.state = PqlState()
        self.day_firsts: list[int] | None = None  # the time of each day's first event, fetched when needed
        self.excluded = exclusion(defn, usage) is not None
        self.enter = False  # would_enter at the last check
        self.top = -math.inf  # the highest critical value recorded
        self.done = 0  # counted events checked so far
        self.at = -math.inf  # the time of the last check
        for rec in records:
            if rec[3] == "track" or (conv is not None and rec[0] >= conv):
                continue
            self.counted_run(bisect.bisect_left(times, rec[0], self.done, before), rec[0])
            inputs = self.excluding(usage, rec[5])
            _fold_traits(usage, rec, spec, self.prints, self.encodings)
            if self.excluding(usage, rec[5]) != inputs:
                self.excluded = exclusion(defn, usage) is not None
            self.check(rec[0], self.done, new_day=self.is_day_first(rec[0]))
        self.counted_run(before, math.inf if conv is None else conv)
        out.rows[0] = before >= first_k

    def check(self, at: int, count: int, new_day: bool) -> None:
        """run_definition's check after one event: the record high, and `decide` when it must."""
        self.at = at
        now_enter = count >= self.first_k and not self.excluded
        if not self.excluded and float(count) > self.top:
            self.out.records[0].append((at, float(count)))
            self.top = float(count)
        must = (now_enter and not self.enter) or (self.enter and not now_enter) or (now_enter and new_day)
        self.enter = now_enter
        if not must:
            return
        state = self.state
        if state.status == "qualified":
            if now_enter:
                return
        elif not now_enter or (state.status == "disqualified" and not self.again) or self.cooling(at):
            return
        self.decide(at, count)

    def cooling(self, at: int) -> bool:
        last = self.state.qualified_at_ms
        return last is not None and at - last < self.cooldown_ms

    def counted_run(self, upto: int, until: float) -> None:
        """The counted events up to index `upto` (exclusive) and the checks of each day's first event
        before `until`, under the current exclusion: the count only grows, so the rule starts to hold at
        most once, and a subject held back by a cooldown is asked again at the first day after it."""
        done, times, out = self.done, self.times, self.out
        if self.excluded or upto <= done and self.state.status != "disqualified":
            self.done = upto
            return
        if upto > done:
            lo = max(done + 1, int(self.top) + 1 if self.top > -math.inf else 1)
            if lo <= upto:
                out.records[0].extend(zip(times[lo - 1:upto], map(float, range(lo, upto + 1)), strict=True))
                self.top = float(upto)
        k = max(self.first_k, done + 1)
        if not self.enter and k <= upto:  # the event that makes the rule hold
            self.enter = True
            at = times[k - 1]
            self.at = at
            if self.state.status == "never" or (self.state.status == "disqualified" and self.again
                                             and not self.cooling(at)):
                self.decide(at, k)
        if self.enter and self.state.status == "disqualified" and self.again:
            # held back by the cooldown: a day's first event checks again (the definition is time-dependent)
            firsts = self.firsts()
            i = bisect.bisect_right(firsts, self.at)
            last = self.state.qualified_at_ms
            assert last is not None  # a disqualified subject qualified before
            i = max(i, bisect.bisect_left(firsts, last + self.cooldown_ms))
            if i < len(firsts) and firsts[i] < until:
                at = firsts[i]
                self.at = at
                self.decide(at, bisect.bisect_right(times, at))
        self.done = upto

    def firsts(self) -> list[int]:
        """The time of each UTC day's first event of the account (any event): each is a check when the
        definition is time-dependent. Fetched once, for an account that needs it; an account where another
        event shares a trait event's millisecond falls back (which one is the day's first is file order)."""
        if self.day_firsts is None:
            account = self.out.account_id
            rows = self.con.execute(
                "SELECT min(ms) FROM ev WHERE account = ? GROUP BY ms // ? ORDER BY 1", [account, DAY_MS]
            ).fetchall()
            self.day_firsts = [r[0] for r in rows]
            shared = self.con.execute(
                "SELECT count(*) FROM (SELECT 1 FROM ev WHERE account = ? GROUP BY ms "
                "HAVING count(*) > 1 AND bool_or(j IS NOT NULL))", [account]
            ).fetchone()
            if shared and shared[0]:
                raise Fallback(f"account {account}: another event shares a trait event's millisecond "
                               "(which is the day's first is file order)")
        return self.day_firsts

    def is_day_first(self, at: int) -> bool:
        """Whether the event at `at` (a trait event: no other event of the account shares its millisecond
        among the read ones) is its day's first, when that matters: a subject held back by a cooldown."""
        if self.state.status != "disqualified" or not self.cooldown_ms:
            return False
        firsts = self.firsts()
        i = bisect.bisect_left(firsts, at)
        return i < len(firsts) and firsts[i] == at

    def decide(self, at: int, count: int) -> None:
        """`decide` at `at`, on the traits folded so far and the count then, as run_definition calls it."""
        usage, out = self.usage, self.out
        usage.lifetime[self.counted] = count
        self.decided += 1
        transition = decide(self.defn, usage, self.state, at)
        del usage.lifetime[self.counted]  # the fold itself reads traits only
        if transition is None:
            return
        self.state = transition.new_state
        self.transitions.append((transition.kind, transition.at_ms))
        if transition.kind == "qualified":
            out.qualifications += 1
            if out.qualified_at_ms is None:
                out.qualified_at_ms = transition.at_ms
                if transition.evaluation is not None:
                    out.touch = transition.evaluation.touch
                    out.reasons = [(r.code, r.kind, r.text) for r in transition.evaluation.reasons]
        elif transition.kind == "disqualified":
            out.disqualifications += 1
        else:  # pragma: no cover - a conversion is the caller's, after the last check
            raise Fallback(f"account {out.account_id}: an unexpected {transition.kind} at {at}")


def run_columnar_definition(
    table: _Table, defn: Definition, source: str, decoder: FastDecoder
) -> tuple[DefinitionRun, dict[str, list[tuple[Any, ...]]]]:
    """The reference engine's `DefinitionRun` of one supported definition, from the table; also each
    account's decoded trait, conversion and cancellation records (what the customer-worth table reads)."""
    started = time.perf_counter()
    spec = defn.tracking_spec()
    gate = Gate(defn)
    cond = rule_conditions(defn.qualify)[0]
    signal = defn.signals[cond.signal or ""]
    assert isinstance(signal, CountSignal)
    counted = signal.count
    threshold = float(cond.threshold)
    first_k = max(1, math.ceil(threshold)) if cond.op == "gte" else math.floor(threshold) + 1
    special = _special_names(defn)
    conversions = spec.conversions
    con = table.con
    is_special = "(type <> 'track' OR event IN (SELECT unnest($special::VARCHAR[])))"
    retention = spec.retention_days
    rows = con.execute(
        f"""SELECT account, min(ms), max(ms),
                   list(ms ORDER BY ms) FILTER (WHERE type = 'track' AND event = $counted),
                   list(j ORDER BY ms) FILTER (WHERE {is_special})
            FROM ev GROUP BY account ORDER BY min(ms), account""",  # noqa: S608
        {"special": special, "counted": counted},
    ).fetchall()
    outs: list[SubjectOutcome] = []
    transitions: list[tuple[str, int]] = []
    run = DefinitionRun(defn.name, defn.version, source, defn.unit, gate.rows, gate.targets, outs, transitions,
                        warnings=list(defn.warnings))
    groups: dict[str, list[tuple[Any, ...]]] = {}
    fold = _Fold(defn, counted, first_k, transitions, con)
    for account, first_ms, last_ms, times, lines in rows:
        times = times or []
        records: list[tuple[Any, ...]] = []
        for raw in lines or []:
            rec = decoder.record(raw.encode(), 0)
            if type(rec) is not tuple:
                raise Fallback(f"account {account}: a line the strict shape admitted is refused ({rec})")
            records.append(rec)
        groups[account] = records
        if (last_ms - first_ms) // DAY_MS >= retention - 1:
            raise Fallback(f"account {account}: its events span the definition's {retention}-day retention "
                           "(the reference prunes)")
        for i, rec in enumerate(records):  # the reference orders events of the same millisecond by file position
            at = rec[0]
            j = bisect.bisect_left(times, at)
            if (j < len(times) and times[j] == at) or (i and records[i - 1][0] == at):
                raise Fallback(f"account {account}: a trait, conversion or cancellation event shares its "
                               "millisecond with another of its events")
        for rec in records:
            if rec[3] == "track" and rec[6] in special and _bad_amount(rec[7]):
                raise Fallback(f"account {account}: a conversion or cancellation with an amount live ingest "
                               "refuses (the reference lists it as a bad event)")
        out = SubjectOutcome(account, None, first_ms, last_ms, rows=[False], records=[[]])
        outs.append(out)
        conv = next((r[0] for r in records if r[3] == "track" and r[6] in conversions), None)
        fold.account(out, times, records, conv)
        if conv is not None:
            out.converted_at_ms = conv
            transitions.append(("converted", conv))
    run.decided = fold.decided
    run.folded = sum(len(t or []) for _, _, _, t, _ in rows)
    run.seconds = time.perf_counter() - started
    return run, groups


def _bad_amount(properties: Any) -> bool:
    """Whether `ingest.usage.money_fields` refuses these properties (an mrr or revenue that is not a finite
    number ≥ 0)."""
    try:
        money_fields(properties if isinstance(properties, dict) else {})
    except RevenueError:
        return True
    return False


def run_backtest_columnar(
    paths: Sequence[str | Path],
    definitions: Sequence[tuple[Definition, str]],
    *,
    window_days: float = 30,
    measure_decode: bool = False,
    now_s: float | None = None,
    threads: int = 1,
) -> BacktestResult:
    """`backtest.run_backtest` by the columnar engine: `UsageError` when a definition is outside the subset,
    `Fallback` when the history needs the reference engine."""
    check_window(window_days)
    for defn, source in definitions:
        reason = unsupported(defn)
        if reason is not None:
            raise UsageError(
                f"--engine columnar: {source or defn.name}: not supported by the columnar engine: {reason}"
            )
    if history_files.duckdb is None:
        raise UsageError("--engine columnar needs DuckDB, which is not installed: pip install 'pqlflow[parquet]'")
    bare = decode_only(paths) if measure_decode else None
    started = time.perf_counter()
    cpu = time.process_time()
    now = clock.now() if now_s is None else now_s
    keep = properties_read(d for d, _ in definitions)
    table = load(paths, now, sorted(keep), threads)
    try:
        decoder = FastDecoder(now, HISTORY_RETENTION_DAYS, keep)
        runs = []
        for defn, source in definitions:
            run, groups = run_columnar_definition(table, defn, source, decoder)
            first_seen = {s.account_id: s.first_ms for s in run.subjects}
            _, money = money_of_records(groups, defn, defn.tracking_spec())
            run.worth = customer_worth(first_seen, qualified_accounts(run), money, table.end_ms or 0)
            runs.append(run)
    finally:
        table.con.close()
    history = History({}, table.files, lines=table.lines, duplicates=table.duplicates, count=table.count,
                      start_ms=table.start_ms, end_ms=table.end_ms)
    history.decode_seconds = time.perf_counter() - started - sum(r.seconds for r in runs)
    result = BacktestResult(history, runs, window_days, bare, time.perf_counter() - started,
                            time.process_time() - cpu)
    result.engine = "columnar"
    return result


def run_backtest_engine(
    paths: Sequence[str | Path],
    definitions: Sequence[tuple[Definition, str]],
    *,
    engine: str = "auto",
    partitions: int | None = None,
    window_days: float = 30,
    measure_decode: bool = False,
    now_s: float | None = None,
) -> BacktestResult:
    """The backtest by the engine asked for: `columnar` (a `UsageError` for a definition outside the subset),
    `reference`, or `auto`: columnar when DuckDB is installed, every definition is in the subset and the
    history is held in memory (one partition), else the reference. Whenever the columnar engine cannot
    answer this history exactly (`Fallback`) the reference answers, and the result says why
    (`BacktestResult.fallback`)."""
    from pqlflow.analysis.partitions import choose_partitions, run_backtest_partitioned

    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: must be one of {', '.join(ENGINES)}")
    now = clock.now() if now_s is None else now_s
    why: str | None = None
    if engine != "reference":
        reasons = [f"{source or defn.name}: {r}" for defn, source in definitions if (r := unsupported(defn))]
        n = choose_partitions(paths) if partitions is None else partitions
        if engine == "columnar" or (not reasons and history_files.duckdb is not None and n == 1):
            try:
                return run_backtest_columnar(paths, definitions, window_days=window_days,
                                             measure_decode=measure_decode, now_s=now)
            except Fallback as exc:
                why = str(exc)
        elif reasons:
            why = "not in the columnar subset: " + "; ".join(reasons)
        elif history_files.duckdb is None:
            why = "DuckDB is not installed"
        else:
            why = f"the history is run in {n} partitions"
    result = run_backtest_partitioned(paths, definitions, partitions=partitions, window_days=window_days,
                                      measure_decode=measure_decode, now_s=now)
    result.fallback = why
    return result
