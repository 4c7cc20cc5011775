"""The backtest's shortcuts change nothing: same transitions as folding every event and asking
`qualification.needs_decision` / `decide` after each one, and the gate agrees with `evaluate`."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest
from pqlflow.backtest import decode_history, run_definition
from pqlflow.definition import Definition, load_definition, parse_definition
from pqlflow.gate import Gate
from pqlflow.qualification import PqlState, decide, evaluate, exclusion, needs_decision
from pqlflow.sample import Sample, SampleConfig
from pqlflow.usage import AccountUsage

EXAMPLES = sorted(Path("examples/definitions").glob("*.yaml"))
EXTRA = {
    "windows-and-not": """
name: windows
version: 1
signals:
  recent: {count: Message Sent, last_days: 3}
  team: {active_users: {last_days: 7}}
  files: {count: File Uploaded, where: {file_type: document}}
  storage: {gauge: {event: Storage Updated, property: used_bytes}}
  share: {ratio: {of: storage, limit_trait: storage_quota_bytes}}
qualify:
  all:
    - any: [{signal: recent, gte: 20}, {signal: files, gte: 5}]
    - not: {signal: team, lt: 2}
    - {signal: share, lte: 0.9}
requalify: {cooldown_days: 2}
exclusions: {paying: {plan: [trial]}}
""",
    "points-with-rules": """
name: mixed
version: 3
signals:
  sign_ins: {count: Signed In, last_days: 7}
  invites: {count: Invite Sent}
  speed: {velocity: {count: Message Sent, days: 3}}
qualify: {signal: invites, gte: 1}
points:
  threshold: 12
  margin: 4
  half_life_days: 5
  rules:
    - {signal: sign_ins, each: 1, cap: 10}
    - when: {signal: speed, gte: 1.5}
      points: 5
requalify: {again: true}
""",
}


def history(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"h{seed}.jsonl"
    config = SampleConfig(
        seed=seed, accounts=12, days=24, start=date(2026, 9, 1), duplicates=0.02, shuffle_window=30
    )
    with path.open("w") as out:
        Sample(config).write(out)
    return path


def naive(defn: Definition, events: list) -> list[tuple[str, str, int]]:
    """The live path, one event per batch: fold everything, decide whenever needs_decision says so."""
    spec = defn.tracking_spec()
    usages: dict[object, AccountUsage] = {}
    states: dict[object, PqlState] = {}
    out = []
    for ev in events:
        key = (ev.account_id, ev.user_id) if defn.unit == "user" else ev.account_id
        usage = usages.get(key)
        old = copy.deepcopy(usage) if usage is not None else None
        if usage is None:
            usage = usages[key] = AccountUsage(ev.account_id, ev.user_id if defn.unit == "user" else None)
        try:
            usage.apply(ev, spec)
        except ValueError:
            if old is None:
                del usages[key]
            continue
        if not needs_decision(defn, old, usage):
            continue
        transition = decide(defn, usage, states.get(key), usage.last_seen_ms)
        if transition is not None:
            states[key] = transition.new_state
            out.append((transition.kind, str(key), transition.at_ms))
    return out


def fast(defn: Definition, path: Path) -> list[tuple[str, str, int]]:
    h = decode_history([path])
    run = run_definition(h, defn)
    # Transitions are recorded without their subject: rebuild (kind, subject, at) from the outcomes.
    out = []
    for s in run.subjects:
        key = str((s.account_id, s.user_id)) if defn.unit == "user" else s.account_id
        out += [("qualified", key, s.qualified_at_ms)] if s.qualified_at_ms is not None else []
        out += [("converted", key, s.converted_at_ms)] if s.converted_at_ms is not None else []
    return out


def definitions() -> list[tuple[str, Definition]]:
    found = [(p.stem, load_definition(p)) for p in EXAMPLES]
    return found + [(name, parse_definition(text, name)) for name, text in EXTRA.items()]


@pytest.mark.parametrize("name, defn", definitions(), ids=[n for n, _ in definitions()])
def test_backtest_makes_the_same_decisions_as_the_live_path(
    tmp_path: Path, name: str, defn: Definition
) -> None:
    # Given a damaged sample history (duplicates, out of order) and a definition
    path = history(tmp_path, seed=7)
    events = decode_history([path]).events
    # When the backtest runs with its shortcuts, and the live path runs event by event
    reference = naive(defn, events)
    first_q: dict[str, int] = {}
    counts = {"qualified": 0, "disqualified": 0, "converted": 0}
    for kind, key, at in reference:
        counts[kind] += 1
        if kind == "qualified":
            first_q.setdefault(key, at)
    run = run_definition(decode_history([path]), defn)
    # Then every subject qualifies (first) at the same moment, and every transition count agrees
    got = {
        str((s.account_id, s.user_id)) if defn.unit == "user" else s.account_id: s.qualified_at_ms
        for s in run.subjects
        if s.qualified_at_ms is not None
    }
    assert got == first_q
    kinds = [k for k, _ in run.transitions]
    assert {k: kinds.count(k) for k in counts} == counts
    conv = {k: at for kind, k, at in reference if kind == "converted"}
    assert {
        s.account_id if defn.unit != "user" else str((s.account_id, s.user_id)): s.converted_at_ms
        for s in run.subjects
        if s.converted_at_ms is not None
    } == conv


@pytest.mark.parametrize("name, defn", definitions(), ids=[n for n, _ in definitions()])
def test_gate_agrees_with_evaluate(tmp_path: Path, name: str, defn: Definition) -> None:
    # Given every intermediate usage state of a sample history
    events = decode_history([history(tmp_path, seed=11)]).events
    spec = defn.tracking_spec()
    gate = Gate(defn)
    usages: dict[object, AccountUsage] = {}
    checked = 0
    for i, ev in enumerate(events):
        key = (ev.account_id, ev.user_id) if defn.unit == "user" else ev.account_id
        usage = usages.setdefault(
            key, AccountUsage(ev.account_id, ev.user_id if defn.unit == "user" else None)
        )
        try:
            usage.apply(ev, spec)
        except ValueError:
            continue
        if i % 3:
            continue
        # When the gate and evaluate look at it, with and without hysteresis
        enter, stay, _, _ = gate.check(usage, ev.ms, exclusion(defn, usage) is not None)
        full = evaluate(defn, usage, ev.ms, explain=False)
        # Then they agree on entering and staying qualified
        assert (enter, stay) == (full.would_enter, full.would_stay), (name, ev)
        checked += 1
    assert checked > 100
