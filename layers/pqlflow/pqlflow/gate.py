"""The decision gate: `evaluate`'s would_enter / would_stay (and the backtest's per-signal rows and sweep
critical values) for one usage state, without building reasons. The backtest asks it after nearly every
event it folds, so it is compiled once per definition; tests/unit/test_backtest_gate.py holds it to
`qualification.evaluate`."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pqlflow.definition import (
    NUMERIC_OPS,
    OP_SYMBOL,
    AllRule,
    AnyRule,
    Condition,
    CountSignal,
    Definition,
    NotRule,
    walk_rule,
)
from pqlflow.qualification import compare, decayed_count, fmt, number, signal_value
from pqlflow.usage import AccountUsage


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
    """`evaluate`'s would_enter/would_stay, computed with qualification's own signal and comparison
    functions but without building reasons (tests/unit/test_backtest_gate.py proves they agree)."""

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

    def check_counts(self, usage: AccountUsage, excluded: bool) -> tuple[bool, bool, list[bool], list[float]]:
        """`check` for a definition whose conditions are all lifetime counts against numbers (count_keys)."""
        lifetime = usage.lifetime
        if self.one_leaf:  # qualify is one condition: it is the one row and the one sweep target
            value = float(lifetime.get(self.count_keys[0], 0))  # type: ignore[index]
            test, threshold = self.count_tests[0]
            holds = test(value, threshold)
            if excluded:
                return False, False, [holds], [-math.inf]
            return holds, holds, [holds], [value if self.targets[0].op in ("gte", "gt") else -value]
        values = [float(lifetime.get(key, 0)) for key in self.count_keys]  # type: ignore[union-attr]
        ok = [test(v, threshold) for v, (test, threshold) in zip(values, self.count_tests, strict=True)]
        rule_ok = _eval(self.qualify, ok)  # type: ignore[arg-type]
        enter = stay = rule_ok and not excluded
        rows = [ok[i] for i in self.row_leaves]
        crits: list[float] = []
        for t, leaf in zip(self.targets, self.forced, strict=True):
            if excluded:
                crits.append(-math.inf)
                continue
            saved = ok[leaf]
            ok[leaf] = False
            if _eval(self.qualify, ok):  # type: ignore[arg-type]
                crits.append(math.inf)
            else:
                ok[leaf] = True
                if _eval(self.qualify, ok):  # type: ignore[arg-type]
                    crits.append(values[leaf] if t.op in ("gte", "gt") else -values[leaf])
                else:
                    crits.append(-math.inf)
            ok[leaf] = saved
        return enter, stay, rows, crits

    def check(self, usage: AccountUsage, now_ms: int, excluded: bool) -> tuple[bool, bool, list[bool], list[float]]:
        """(would_enter, would_stay, each row holds, each sweep target's critical value).

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
