"""The decision gate: `evaluate`'s would_enter / would_stay (and the backtest's per-signal rows and sweep
critical values) for one usage state, without building reasons. The backtest asks it after nearly every
event it folds, so it is compiled once per definition; tests/unit/analysis/test_backtest_gate.py holds it to
`qualification.evaluate`."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from pqlflow.ingest.usage import DAY_MS, AccountUsage
from pqlflow.qualify.evaluation import _plain, compare, decayed_count, fmt, number, signal_value
from pqlflow.qualify.language import (
    NUMERIC_OPS,
    OP_SYMBOL,
    ActiveUsersSignal,
    AllRule,
    AnyRule,
    Condition,
    CountSignal,
    Definition,
    GaugeSignal,
    NotRule,
    RatioSignal,
    TraitSignal,
    walk_rule,
)


def rule_conditions(rule: Any) -> list[Condition]:
    return [c for c, _ in walk_rule(rule, ())] if rule is not None else []


_ALL, _ANY, _NOT, _LEAF = 0, 1, 2, 3
Leaf = tuple[str, str, Any]  # (signal name, op, threshold)


def _compile(rule: Any, leaves: list[Leaf], ids: dict[int, int]) -> tuple[int, Any]:
    """A rule tree as nested (tag, argument) tuples over numbered leaves: cheap to evaluate many times."""
    if isinstance(rule, AllRule):
        return (_ALL, tuple(_compile(r, leaves, ids) for r in rule.all))
    if isinstance(rule, AnyRule):
        return (_ANY, tuple(_compile(r, leaves, ids) for r in rule.any))
    if isinstance(rule, NotRule):
        return (_NOT, _compile(rule.not_, leaves, ids))
    ids[id(rule)] = len(leaves)
    leaves.append((rule.signal_name, rule.op, rule.threshold))
    return (_LEAF, len(leaves) - 1)


def _eval(node: tuple[int, Any], ok: list[bool]) -> bool:
    tag, arg = node
    if tag == _LEAF:
        return ok[arg]
    if tag == _ALL:
        return all(_eval(child, ok) for child in arg)
    if tag == _ANY:
        return any(_eval(child, ok) for child in arg)
    return not _eval(arg, ok)


@dataclass(frozen=True)
class SignalRow:
    """A row of the per-signal table: one condition of the definition, at its threshold."""

    label: str  # e.g. "messages ≥ 2,000"
    signal: str
    op: str
    threshold: Any
    source: str  # qualify | points | touch


@dataclass(frozen=True)
class SweepTarget:
    """A threshold the sweep varies: a numeric qualify condition, or the points threshold."""

    label: str
    signal: str
    op: str  # gte | gt | lte | lt
    current: float
    condition_id: int | None  # id() of the Condition; None for the points threshold


_NUMERIC_FN: dict[str, Callable[[float, Any], bool]] = {
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
}


class Gate:
    """`evaluate`'s would_enter/would_stay without building reasons: `check_reference` with qualification's
    own signal and comparison functions, `check` with a function compiled for the definition that returns
    exactly the same (tests/unit/analysis/test_backtest_gate.py proves they agree)."""

    def __init__(self, defn: Definition):
        self.defn = defn
        self.rows: list[SignalRow] = []
        seen: set[tuple[str, str, str]] = set()

        def add(cond: Condition, source: str) -> None:
            key = (cond.signal_name, cond.op, repr(cond.threshold))
            if key not in seen:
                seen.add(key)
                shown = ", ".join(map(fmt, cond.threshold)) if isinstance(cond.threshold, list) else fmt(cond.threshold)
                self.rows.append(
                    SignalRow(
                        f"{cond.signal_name} {OP_SYMBOL[cond.op]} {shown}",
                        cond.signal_name,
                        cond.op,
                        cond.threshold,
                        source,
                    )
                )

        for cond in rule_conditions(defn.qualify):
            add(cond, "qualify")
        if defn.points is not None:
            for rule in defn.points.rules:
                for cond in rule_conditions(rule.when):
                    add(cond, "points")
                if rule.signal is not None:
                    key = (rule.signal, "gt", "0")
                    if key not in seen:
                        seen.add(key)
                        self.rows.append(SignalRow(f"{rule.signal} > 0", rule.signal, "gt", 0, "points"))
        self.targets: list[SweepTarget] = []
        for cond in rule_conditions(defn.qualify):
            if cond.op in NUMERIC_OPS and cond.signal != "score":
                self.targets.append(
                    SweepTarget(
                        f"{cond.signal_name} {OP_SYMBOL[cond.op]}",
                        cond.signal_name,
                        cond.op,
                        float(cond.threshold),
                        id(cond),
                    )
                )
        if defn.points is not None:
            self.targets.append(
                SweepTarget("score ≥ (points threshold)", "score", "gte", float(defn.points.threshold), None)
            )
        self.when_leaves: list[Leaf] = []
        self.leaves: list[Leaf] = []
        when_ids: dict[int, int] = {}
        ids: dict[int, int] = {}
        self.whens = [
            (_compile(rule.when, self.when_leaves, when_ids) if rule.when is not None else None, rule)
            for rule in (defn.points.rules if defn.points is not None else [])
        ]
        self.qualify = _compile(defn.qualify, self.leaves, ids) if defn.qualify is not None else None
        self.forced = [ids[t.condition_id] if t.condition_id is not None else -1 for t in self.targets]
        self.row_leaves = []
        for row in self.rows:
            self.row_leaves.append(len(self.leaves))
            self.leaves.append((row.signal, row.op, row.threshold))
        # Lifetime counts against numeric thresholds only (no points): `compare` is then float(count) <op>
        # threshold, and `check_counts` computes exactly that without signal_value/compare per leaf.
        self.count_keys: list[str] | None = None
        if defn.points is None and self.qualify is not None:
            keys: list[str] = []
            for name, op, threshold in self.leaves:
                signal = defn.signals.get(name)
                if (
                    not isinstance(signal, CountSignal)
                    or signal.last_days
                    or op not in _NUMERIC_FN
                    or type(threshold) not in (int, float)
                ):
                    break
                keys.append(signal.key)
            else:
                self.count_keys = keys
                self.count_tests = [(_NUMERIC_FN[op], threshold) for _, op, threshold in self.leaves]
        self.one_leaf = (
            self.count_keys is not None
            and self.qualify == (_LEAF, 0)
            and len(self.rows) == 1
            and self.row_leaves == [1]
            and self.leaves[1] == self.leaves[0]
            and self.forced == [0]
        )
        self._compiled = _compile_check(self)

    def check_counts(self, usage: AccountUsage, excluded: bool) -> tuple[bool, bool, list[bool], list[float]]:
        """`check` for a definition whose conditions are all lifetime counts against numbers (count_keys)."""
        lifetime = usage.lifetime
        if TYPE_CHECKING:  # only called for a gate with count_keys, which implies a qualify rule
            assert self.count_keys is not None and self.qualify is not None
        if self.one_leaf:  # qualify is one condition: it is the one row and the one sweep target
            value = float(lifetime.get(self.count_keys[0], 0))
            test, threshold = self.count_tests[0]
            holds = test(value, threshold)
            if excluded:
                return False, False, [holds], [-math.inf]
            return holds, holds, [holds], [value if self.targets[0].op in ("gte", "gt") else -value]
        values = [float(lifetime.get(key, 0)) for key in self.count_keys]
        ok = [test(v, threshold) for v, (test, threshold) in zip(values, self.count_tests, strict=True)]
        rule_ok = _eval(self.qualify, ok)
        enter = stay = rule_ok and not excluded
        rows = [ok[i] for i in self.row_leaves]
        crits: list[float] = []
        for t, leaf in zip(self.targets, self.forced, strict=True):
            if excluded:
                crits.append(-math.inf)
                continue
            saved = ok[leaf]
            ok[leaf] = False
            if _eval(self.qualify, ok):
                crits.append(math.inf)
            else:
                ok[leaf] = True
                if _eval(self.qualify, ok):
                    crits.append(values[leaf] if t.op in ("gte", "gt") else -values[leaf])
                else:
                    crits.append(-math.inf)
            ok[leaf] = saved
        return enter, stay, rows, crits

    def check_reference(
        self, usage: AccountUsage, now_ms: int, excluded: bool
    ) -> tuple[bool, bool, list[bool], list[float]]:
        """`check` computed with qualification's generic signal and comparison functions: the reference the
        compiled `check` is held to (tests/unit/analysis/test_backtest_gate.py), and what `check` runs for the
        definitions `_compile_check` leaves alone.

        A target's critical value is the largest threshold (smallest, for lte/lt, negated) at which the
        enter condition would hold now, with everything else unchanged: +inf when it holds at any
        threshold, -inf when at none.
        """
        defn = self.defn
        cache: dict[str, Any] = {}
        score = None
        points_enter = True
        if defn.points is not None:
            pm = defn.points
            ok_when = [
                compare(op, signal_value(defn, name, usage, now_ms, cache), threshold)
                for name, op, threshold in self.when_leaves
            ]
            score = 0.0
            for tree, rule in self.whens:
                if tree is not None:
                    if _eval(tree, ok_when) and rule.points:
                        score += float(rule.points)
                    continue
                name = rule.signal or ""
                units = number(signal_value(defn, name, usage, now_ms, cache)) or 0.0
                signal = defn.signals[name]
                if pm.half_life_days and rule.decay and isinstance(signal, CountSignal):
                    units = decayed_count(usage, signal, now_ms, pm.half_life_days)
                pts = units * float(rule.each or 0)
                if rule.cap is not None:
                    pts = max(-rule.cap, min(rule.cap, pts))
                score += round(pts, 4)
            score = round(score, 2)
            cache["score"] = score
            points_enter = score >= pm.threshold
        ok = [
            compare(op, signal_value(defn, name, usage, now_ms, cache), threshold)
            for name, op, threshold in self.leaves
        ]
        rule_ok = _eval(self.qualify, ok) if self.qualify is not None else True
        enter = stay = rule_ok and not excluded
        if defn.points is not None:
            assert score is not None
            enter = enter and points_enter
            stay = stay and score >= defn.points.threshold - defn.points.margin
        rows = [ok[i] for i in self.row_leaves]
        crits: list[float] = []
        for t, leaf in zip(self.targets, self.forced, strict=True):
            if excluded:
                crits.append(-math.inf)
            elif leaf == -1:
                crits.append(score if rule_ok and score is not None else -math.inf)
            elif not points_enter:
                crits.append(-math.inf)
            else:
                assert self.qualify is not None
                saved = ok[leaf]
                ok[leaf] = False
                if _eval(self.qualify, ok):
                    crits.append(math.inf)
                else:
                    ok[leaf] = True
                    if _eval(self.qualify, ok):
                        numeric = number(signal_value(defn, t.signal, usage, now_ms, cache))
                        crits.append(-math.inf if numeric is None else (numeric if t.op in ("gte", "gt") else -numeric))
                    else:
                        crits.append(-math.inf)
                ok[leaf] = saved
        return enter, stay, rows, crits

    def check(
        self, usage: AccountUsage, now_ms: int, excluded: bool, memo: Memo | None = None
    ) -> tuple[bool, bool, list[bool], list[float]]:
        """(would_enter, would_stay, each row holds, each sweep target's critical value), exactly as
        `check_reference` computes them, by the function `_compile_check` made for this definition.

        `memo` (optional) is a dict the caller keeps for one subject, starting empty, when it folds that
        subject's events in time order with `AccountUsage.apply` (or the same increments) and prunes, if
        at all, before the first check of a day: the backtest's fold. Counts over days then add up only
        the newest day again while today stays the same (`_days_count`), and the users active before
        today are gathered once a day (`_active_users_last`).
        """
        if self._compiled is None:
            return self.check_reference(usage, now_ms, excluded)
        return self._compiled(usage, now_ms, excluded, memo)


# ---- the compiled check ---------------------------------------------------------------------------

Memo = dict[int, tuple[Any, ...]]  # a signal's number → what its reader kept about one usage state
Reader = Callable[[AccountUsage, int, int, Memo | None], Any]  # (usage, now_ms, today, memo) → value
_MAX_CACHED = 4096  # trait texts / values remembered per cache before it starts over
_SYMBOL = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


class _Weights(dict[int, float]):
    """A decayed day's weight by its whole-day age: `decayed_count`'s own `0.5 ** (age / half_life)`,
    computed once per age, so every weight (and every sum of them) is the same float."""

    def __init__(self, half_life: float):
        super().__init__()
        self.half_life = half_life

    def __missing__(self, age: int) -> float:
        weight = self[age] = 0.5 ** (age / self.half_life)
        return weight


def _days_count(key: str, last_days: int | None, weights: _Weights | None, at: int) -> Reader:
    """(count, decayed count) of a count signal read from its days: `usage.count_last` over the last
    `last_days` days (else the lifetime `usage.count`), and with `weights`, `decayed_count` (else 0.0).

    The days are visited in `decayed_count`'s order, the newest (last in the dict) last: float sums
    depend on the order. With a memo, the sums over the earlier days are kept at `at` with what proves
    them unchanged. A subject's days dict only gains days (at its end) and counts until `prune` replaces
    it, and each daily count grows with the lifetime count; so the same dict with as many days at the
    same `today` has the same days in the same order, the same lifetime count means nothing changed
    (the results are reused), and the same lifetime count outside the newest day means no earlier day
    grew (only the newest day is added again).
    """

    def read(usage: AccountUsage, now_ms: int, today: int, memo: Memo | None) -> tuple[int, float]:
        lifetime = usage.lifetime.get(key, 0)
        days = usage.daily.get(key)
        if not days:
            if last_days:
                return 0, 0.0
            return lifetime, lifetime * weights[90] if weights is not None and lifetime > 0 else 0.0
        held = memo.get(at) if memo is not None else None
        if held is not None and held[0] is days and held[1] == today and held[2] == len(days):
            if held[3] == lifetime:
                return held[10], held[11]
            last = held[4]
            if held[5] != lifetime - days[last]:
                held = None
        else:
            held = None
        oldest = today - last_days + 1 if last_days else -math.inf
        if held is not None:
            earlier = held[6:10]
        else:
            last = next(reversed(days))
            count = kept = 0
            total = 0.0
            for d, n in islice(days.items(), len(days) - 1):
                kept += n
                if oldest <= d <= today:
                    count += n
                    if weights is not None:
                        total += n * weights[today - d]
            earlier = (count, total, kept, None if last_days else min(days))
        count, total, kept, first = earlier
        n = days[last]
        if oldest <= last <= today:
            count += n
            if weights is not None:
                total += n * weights[today - last]
        if not last_days:
            count = lifetime
            older = lifetime - kept - n
            if weights is not None and older > 0:
                total += older * weights[today - first + 1]
        if memo is not None:
            memo[at] = (days, today, len(days), lifetime, last, lifetime - n, *earlier, count, total)
        return count, total

    return read


def _active_users_last(last_days: int, at: int) -> Reader:
    """Distinct users active on the last `last_days` days, today included. With a memo (events folded
    in time order: the days before today no longer change while today stays the same), the users of the
    earlier days are gathered once a day and kept at `at`, with today's users and their count."""

    def read(usage: AccountUsage, now_ms: int, today: int, memo: Memo | None) -> int:
        active = usage.active_users
        current = active.get(today)
        size = len(current) if current else 0
        held = memo.get(at) if memo is not None else None
        if held is not None and held[0] == today and held[1] is active:
            if held[2] is current and held[3] == size:
                return held[5]
            earlier = held[4]
        else:
            earlier = set().union(*filter(None, map(active.get, range(today - last_days + 1, today))))
        count = len(earlier) + len(current - earlier) if current else len(earlier)
        if memo is not None:
            memo[at] = (today, active, current, size, earlier, count)
        return count

    return read


def _active_users_first(first_days: int | None) -> Reader:
    """Distinct users active on the first `first_days` days from first seen."""

    def read(usage: AccountUsage, now_ms: int, today: int, memo: Memo | None) -> int:
        if usage.first_seen_ms is None:
            return 0
        first = usage.first_seen_ms // DAY_MS
        return len(set().union(*filter(None, map(usage.active_users.get, range(first, first + (first_days or 1))))))

    return read


def _account_trait(trait: str, decoded: dict[str, Any]) -> Reader:
    """An account trait's value as `qualification._trait` gives it, decoded once per distinct JSON text."""

    def read(usage: AccountUsage, now_ms: int, today: int, memo: Memo | None) -> Any:
        entry = usage.traits.get(trait)
        if entry is None:
            return None
        text = entry[1]
        try:
            return decoded[text]
        except KeyError:
            value = _plain(json.loads(text))
            if len(decoded) >= _MAX_CACHED:
                decoded.clear()
            decoded[text] = value
            return value

    return read


def _generic(defn: Definition, name: str) -> Reader:
    """Any other signal (ratio, velocity, days_to, a user's trait), through `signal_value` itself."""

    def read(usage: AccountUsage, now_ms: int, today: int, memo: Memo | None) -> Any:
        return signal_value(defn, name, usage, now_ms, {})

    return read


def _cached_test(op: str, threshold: Any) -> Callable[[Any], bool]:
    """`compare(op, value, threshold)` remembered per (type, value): trait values repeat across
    accounts, and compare's answer depends on nothing else."""
    results: dict[tuple[type, Any], bool] = {}

    def test(value: Any) -> bool:
        key = (value.__class__, value)
        try:
            return results[key]
        except KeyError:
            if len(results) >= _MAX_CACHED:
                results.clear()
            held = results[key] = compare(op, value, threshold)
            return held

    return test


def _critical_up(value: Any) -> float:
    """A gte/gt target's critical value when its condition decides the rule: the signal's number."""
    numeric = number(value)
    return -math.inf if numeric is None else numeric


def _critical_down(value: Any) -> float:
    """A lte/lt target's critical value when its condition decides the rule: the number, negated."""
    numeric = number(value)
    return -math.inf if numeric is None else -numeric


def _expr(node: tuple[int, Any], names: list[str]) -> str:
    """A compiled rule tree as a Python expression over one name per leaf (`_eval`, inlined)."""
    tag, arg = node
    if tag == _LEAF:
        return names[arg]
    if tag == _NOT:
        return f"(not {_expr(arg, names)})"
    return "(" + (" and " if tag == _ALL else " or ").join(_expr(child, names) for child in arg) + ")"


class _Source:
    """The lines of one generated function, and the objects it uses: bound by name in its globals, never
    written into the source, so each threshold, cap and reader is the very object the definition gives."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "DAY_MS": DAY_MS,
            "compare": compare,
            "number": number,
            "inf": math.inf,
            "neg_inf": -math.inf,
        }

    def name(self, value: Any) -> str:
        name = f"k{len(self.names)}"
        self.names[name] = value
        return name

    def line(self, text: str) -> None:
        self.lines.append("    " + text)


def _compile_check(gate: Gate) -> Callable[[AccountUsage, int, bool, Memo | None], Any] | None:
    """`check_reference` for one definition as straight-line Python: each signal read once by a reader
    made for its type and key, each distinct condition tested once (counts against numbers as
    `float(count) <op> threshold`, which is what `compare` does with them), the points rules and rule
    trees inlined, and capped points rounded only when not at the cap (the cap's rounding is known).
    Generated source (the way `dataclasses` writes `__init__`) because the backtest calls it after
    nearly every event it folds, and a call per condition, rule and node costs more than the reading.

    None for a definition whose reference check reads a signal it does not define (a `score` condition
    outside the qualify rule or without points, a points rule on an unknown signal): `check` then runs
    the reference, which fails the same way.
    """
    defn = gate.defn
    pm = defn.points
    rules = pm.rules if pm is not None else []
    if any(name == "score" for name, _, _ in gate.when_leaves) or any(
        rule.signal is not None and rule.signal not in defn.signals for rule in rules
    ):
        return None
    if pm is None and any(name == "score" for name, _, _ in gate.leaves):
        return None
    weights = _Weights(pm.half_life_days) if pm is not None and pm.half_life_days else None
    decays = {
        rule.signal
        for rule in rules
        if rule.signal is not None
        and weights is not None
        and rule.decay
        and isinstance(defn.signals[rule.signal], CountSignal)
    }
    src = _Source()
    line = src.line
    line("today = now_ms // DAY_MS")
    value: dict[str, str] = {}  # signal name → variable holding its value
    decayed: dict[str, str] = {}  # signal name → variable holding its decayed count
    counted: set[str] = set()  # signals whose values are ints
    traits: set[str] = set()
    decoded: dict[str, Any] = {}
    used = [name for name, _, _ in (*gate.when_leaves, *gate.leaves) if name != "score"]
    used += [rule.signal for rule in rules if rule.signal is not None]
    reads: list[str] = []  # a ratio's signal is read before the ratio
    for name in used:
        signal = defn.signals.get(name)
        if isinstance(signal, RatioSignal) and signal.ratio.of in defn.signals:
            reads.append(signal.ratio.of)
        reads.append(name)
    for i, name in enumerate(dict.fromkeys(reads)):
        var = value[name] = f"v{i}"
        signal = defn.signals.get(name)
        reader: Reader | None = None
        if isinstance(signal, CountSignal):
            counted.add(name)
            if name in decays or signal.last_days:
                read = src.name(_days_count(signal.key, signal.last_days, weights if name in decays else None, i))
                if name in decays:
                    decayed[name] = f"d{i}"
                line(f"{var}, {decayed.get(name, '_')} = {read}(usage, now_ms, today, memo)")
            else:
                line(f"{var} = usage.lifetime.get({src.name(signal.key)}, 0)")
        elif isinstance(signal, ActiveUsersSignal):
            counted.add(name)
            window = signal.active_users
            if window.last_days:
                reader = _active_users_last(window.last_days, i)
            else:
                reader = _active_users_first(window.first_days)
        elif isinstance(signal, GaugeSignal):
            line(f"{var} = usage.gauges.get({src.name(signal.spec.key)})")
            line(f"{var} = {var}[1] if {var} else None")
        elif isinstance(signal, RatioSignal) and signal.ratio.of in defn.signals:
            ratio = signal.ratio
            if ratio.limit is not None:
                line(f"limit = {src.name(ratio.limit)}")
            else:
                limit = src.name(_account_trait(ratio.limit_trait or "", decoded))
                line(f"limit = number({limit}(usage, now_ms, today, memo))")
            line(f"{var} = number({value[ratio.of]})")
            line(f"{var} = round({var} / limit, 6) if {var} is not None and limit else None")
        elif signal is None and name.startswith("trait."):
            traits.add(name)
            reader = _account_trait(name[len("trait.") :], decoded)
        elif isinstance(signal, TraitSignal):
            traits.add(name)
            reader = _account_trait(signal.trait, decoded) if signal.scope == "account" else _generic(defn, name)
        else:
            reader = _generic(defn, name)
        if reader is not None:
            line(f"{var} = {src.name(reader)}(usage, now_ms, today, memo)")

    tested: dict[tuple[str, str, str], str] = {}  # distinct condition → variable holding whether it holds

    def test(leaf: Leaf) -> str:
        name, op, threshold = leaf
        key = (name, op, repr(threshold))
        if key not in tested:
            var = tested[key] = f"t{len(tested)}"
            if name == "score":
                line(f"{var} = compare({src.name(op)}, score, {src.name(threshold)})")
            elif name in counted and op in _SYMBOL:
                line(f"{var} = float({value[name]}) {_SYMBOL[op]} {src.name(threshold)}")
            elif name in traits:
                line(f"{var} = {src.name(_cached_test(op, threshold))}({value[name]})")
            else:
                line(f"{var} = compare({src.name(op)}, {value[name]}, {src.name(threshold)})")
        return tested[key]

    when_names = [test(leaf) for leaf in gate.when_leaves]
    for leaf in gate.leaves:
        if leaf[0] != "score":
            test(leaf)
    if pm is not None:
        line("score = 0.0")
        for tree, rule in gate.whens:
            if tree is not None:
                points = src.name(float(rule.points or 0))
                line(f"if {_expr(tree, when_names)} and {points}:")
                line(f"    score += {points}")
                continue
            name = rule.signal or ""
            units = decayed.get(name, f"(number({value[name]}) or 0.0)")
            line(f"pts = {units} * {src.name(float(rule.each or 0))}")
            cap = rule.cap
            if cap is None:
                line("score += round(pts, 4)")
            else:
                top, bottom = src.name(cap), src.name(-cap)
                line(
                    f"score += {src.name(round(cap, 4))} if not pts < {top} else "
                    f"{src.name(round(-cap, 4))} if not pts > {bottom} else round(pts, 4)"
                )
        line("score = round(score, 2)")
        line(f"points_enter = score >= {src.name(pm.threshold)}")
    names = [test(leaf) for leaf in gate.leaves]
    qualify_names = names[: len(names) - len(gate.row_leaves)]
    line(f"rule_ok = {_expr(gate.qualify, qualify_names) if gate.qualify is not None else True}")
    line("enter = stay = rule_ok and not excluded")
    if pm is not None:
        line("enter = enter and points_enter")
        line(f"stay = stay and score >= {src.name(pm.threshold - pm.margin)}")
    line(f"rows = [{', '.join(names[i] for i in gate.row_leaves)}]")
    line("if excluded:")
    line(f"    return enter, stay, rows, [{', '.join('neg_inf' for _ in gate.targets)}]")
    crits: list[str] = []
    for target, forced in zip(gate.targets, gate.forced, strict=True):
        if forced == -1:
            crits.append("(score if rule_ok else neg_inf)")
            continue
        assert gate.qualify is not None
        without = _expr(gate.qualify, [*qualify_names[:forced], "False", *qualify_names[forced + 1 :]])
        within = _expr(gate.qualify, [*qualify_names[:forced], "True", *qualify_names[forced + 1 :]])
        critical = src.name(_critical_up if target.op in ("gte", "gt") else _critical_down)
        crit = f"(inf if {without} else {critical}({value[target.signal]}) if {within} else neg_inf)"
        crits.append(f"(neg_inf if not points_enter else {crit})" if pm is not None else crit)
    line(f"return enter, stay, rows, [{', '.join(crits)}]")
    source = "def check(usage, now_ms, excluded, memo):\n" + "\n".join(src.lines) + "\n"
    namespace = dict(src.names)
    exec(compile(source, f"<gate check: {defn.name}>", "exec"), namespace)  # noqa: S102 - source built above
    return namespace["check"]
