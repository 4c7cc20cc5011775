"""The definition `pqlflow discover` proposes: its best expressible signals as one `any:` rule, in YAML.

Signals are taken in rank order and kept while they raise the F1 of "any of them holds" on the learn
cohorts (at most `MAX_CONDITIONS`), so the held-out cohorts stay unseen until the backtest. The file has
the standard exclusions and touch rules (those of the bundled default definition) and a 30-day
re-qualification cooldown, like every example; a condition that could hold on signing up or starting a
trial alone (active users, say: three people signing up) is guarded by real use of the product
(`all: [condition, the most common tracked event ≥ 1]`), and the result is checked with the project's own
loader: it must validate with no trial-start warning.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pqlflow.analysis.discover_signals import Ranked, Rows
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.evaluation import fires_on_trial_alone
from pqlflow.qualify.language import TRIAL_EVENTS, Definition
from pqlflow.qualify.store import DEFAULT_PATH

MAX_CONDITIONS = 4
MIN_GAIN = 0.005  # the least F1 gain that earns a condition its place


def _f1(hits: int, flagged: int, positives: int) -> float:
    return 2 * hits / (flagged + positives) if flagged + positives else 0.0


def _name(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:48] or "signal"
    name, n = base, 2
    while name in taken or name == "score":
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def choose(ranked: list[Ranked], rows: Rows) -> list[Ranked]:
    """The expressible signals to combine: in rank order, each kept while it raises the learn F1."""
    positives = sum(1 for i, y in enumerate(rows.label) if y and not rows.test[i])
    eligible = [r for r in ranked if r.candidate.signal is not None and not r.candidate.note
                and r.lift_low is not None and r.lift_low > 1][:12]
    chosen: list[Ranked] = []
    flagged: set[int] = set()
    current = 0.0
    for r in eligible:
        union = flagged | r.rows
        hits = sum(1 for i in union if rows.label[i])
        score = _f1(hits, len(union), positives)
        if score >= current + MIN_GAIN:
            chosen.append(r)
            flagged, current = union, score
            if len(chosen) == MAX_CONDITIONS:
                break
    return chosen


def _guard_event(rows: Rows) -> str | None:
    """The tracked event most learn snapshots have (not a trial event): the guard's "real use"."""
    best, most = None, 0
    for key, col in rows.values.items():
        if not key.startswith("count:") or not key.endswith(":lifetime") or "|" in key:
            continue
        event = key[len("count:"):-len(":lifetime")]
        if event in TRIAL_EVENTS:
            continue
        if len(col) > most or (len(col) == most and best is not None and event < best):
            best, most = event, len(col)
    return best


def _standard() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    return {"exclusions": data["exclusions"], "touch": data["touch"]}


def build(chosen: list[Ranked], rows: Rows, window_days: float, name: str = "discovered") -> str:
    """The proposal's YAML text."""
    taken: set[str] = set()
    signals: dict[str, Any] = {}
    rules: list[Any] = []
    for r in chosen:
        c = r.candidate
        assert c.signal is not None
        if c.family in ("trait", "trait_value"):
            rules.append({"trait": c.signal["trait"], c.op: r.threshold})
            continue
        signal = dict(c.signal)
        if c.family == "ratio":
            assert c.gauge is not None
            of = _name(c.label.split(" ÷ ")[0], taken)
            signals[of] = dict(c.gauge)
            signal = {"ratio": {**c.signal["ratio"], "of": of}}
        sname = _name(c.label, taken)
        signals[sname] = {**signal, "label": c.label.replace("“", "").replace("”", "")}
        rules.append({"signal": sname, "gte": r.threshold})
    guard = _guard_event(rows)
    guard_name: str | None = None
    for i, rule in enumerate(rules):
        probe = {"name": "probe", "version": 1, "signals": signals, "qualify": rule}
        if fires_on_trial_alone(_validated(probe)) and guard is not None:
            if guard_name is None:
                guard_name = _name(f"{guard} ever", taken)
                signals[guard_name] = {"count": guard, "label": f"{guard} events"}
            rules[i] = {"all": [rule, {"signal": guard_name, "gte": 1}]}
    qualify: Any = rules[0] if len(rules) == 1 else {"any": rules}
    body = {
        "name": name,
        "version": 1,
        "description": f"Proposed by pqlflow discover: the signals that predicted converting within "
        f"{window_days:g} days on the learn cohorts.",
        "signals": signals,
        "qualify": qualify,
        "requalify": {"cooldown_days": 30},
        **_standard(),
    }
    head = (
        "# Proposed by `pqlflow discover`: thresholds chosen on the learn cohorts, scored on the held-out ones.\n"
        "# A hypothesis to refine, not a verdict: check it with `pqlflow backtest`, then publish it.\n"
        "# Exclusions and touch rules are the standard ones (qualify/defaults/definition.yaml);\n"
        "# a condition that signing up or starting a trial could meet alone is guarded by real use.\n"
    )
    text = head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None)
    parse_definition(text, "proposed.yaml")  # the project's own loader: a proposal is always valid
    return text


def _validated(data: dict[str, Any]) -> Definition:
    return Definition.model_validate(data)


def propose(ranked: list[Ranked], rows: Rows, window_days: float) -> tuple[list[Ranked], str]:
    """(the chosen signals, the YAML text); no signal → ([], "")."""
    chosen = choose(ranked, rows)
    if not chosen:
        return [], ""
    return chosen, build(chosen, rows, window_days)
