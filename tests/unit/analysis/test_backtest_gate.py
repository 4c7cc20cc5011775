"""The backtest's shortcuts change nothing: same transitions as folding every event and asking
`qualification.needs_decision` / `decide` after each one, and the gate agrees with `evaluate`."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest
from pqlflow.analysis.backtest import decode_history, run_definition
from pqlflow.analysis.gate import Gate
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.ingest.usage import DAY_MS, AccountUsage, TrackingSpec
from pqlflow.qualify.definition import load_definition, parse_definition
from pqlflow.qualify.evaluation import PqlState, decide, evaluate, exclusion, needs_decision
from pqlflow.qualify.language import Definition

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
    # Every signal type and operator the examples leave out, for the compiled gate: windowed counts without
    # decay, first-days active users, gauges and both kinds of ratio, velocity and days_to of counts and of
    # users, traits in points rules, numeric traits, in / not_in / ne / exists / lte / lt, `not`, a repeated
    # condition, a score condition in the qualify rule, points without cap, without decay and below zero.
    "signal-zoo": """
name: zoo
version: 1
signals:
  recent_signins: {count: Signed In, last_days: 5}
  paid_uses: {count: Feature Used, where: {tier: paid}, last_days: 10}
  messages: {count: Message Sent}
  early_team: {active_users: {first_days: 3}}
  contacts: {gauge: {event: Contacts Updated, property: total}}
  contact_use: {ratio: {of: contacts, limit_trait: contacts_limit}}
  message_share: {ratio: {of: messages, limit: 500}}
  message_speed: {velocity: {count: Message Sent, days: 3}}
  paid_speed: {velocity: {count: Feature Used, where: {tier: paid}, days: 2}}
  team_speed: {velocity: {active_users: true, days: 2}}
  days_to_ten: {days_to: {count: Signed In, reach: 10}}
  days_to_team: {days_to: {active_users: true, reach: 2}}
  plan: {trait: plan}
qualify:
  all:
    - any: [{signal: recent_signins, gte: 3}, {signal: paid_uses, gt: 2}, {signal: recent_signins, gte: 3}]
    - not: {signal: contact_use, gt: 0.95}
    - {signal: message_share, lt: 10}
    - any: [{signal: days_to_ten, lte: 20}, {trait: employees, lt: 5000}, {signal: plan, in: [free, trial]}]
    - {signal: score, gte: 5}
points:
  threshold: 8
  margin: 3
  half_life_days: 4
  rules:
    - {signal: messages, each: 0.05}
    - {signal: paid_uses, each: 1, cap: 6, decay: false}
    - {signal: recent_signins, each: -2, cap: 3}
    - {signal: contacts, each: 0.001, cap: 4}
    - {signal: team_speed, each: 1}
    - when: {signal: early_team, gte: 2}
      points: 2
    - when: {any: [{trait: industry, ne: Software}, {signal: plan, not_in: [pro]}]}
      points: 1
    - when: {not: {trait: owner, exists: true}}
      points: -1
    - when: {signal: days_to_team, lte: 3}
      points: 1.5
    - when: {signal: message_speed, gte: 1.2}
      points: 2
    - when: {signal: paid_speed, gt: 1}
      points: 1
""",
    "per-user": """
name: per-user
version: 1
unit: user
signals:
  sign_ins: {count: Signed In, last_days: 7}
  uploads: {count: File Uploaded}
  role: {trait: role, scope: user}
  team_7d: {active_users: {last_days: 7}}
qualify:
  any:
    - {signal: role, eq: admin}
    - {signal: sign_ins, gte: 4}
points:
  threshold: 3
  half_life_days: 7
  rules:
    - {signal: uploads, each: 0.5, cap: 5}
    - {signal: sign_ins, each: 0.25}
    - when: {all: [{signal: role, in: [admin, owner]}, {signal: team_7d, gte: 2}]}
      points: 1
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
    """The live path, one event per batch: fold everything, decide whenever needs_decision says so, up to the
    subject's conversion (a backtest follows PQLs until they convert; a customer's churn and win-back are the
    live path's, tested in tests/integration/qualify/test_qualify_customers.py, and measured by worth)."""
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
        if not needs_decision(defn, old, usage) or (key in states and states[key].converted_reported):
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


def states(defn: Definition, events: list, *, ordered: bool, spec: TrackingSpec | None = None):
    """Every intermediate usage state of each subject, with the subject's memo and the time of the event
    just folded: in file order (damaged: out of order), or in time order pruned as the backtest prunes
    (on a subject's first event of a day, once its days exceed the retention), which is what a memo needs."""
    spec = defn.tracking_spec(spec)
    usages: dict[object, AccountUsage] = {}
    memos: dict[object, dict] = {}
    days: dict[object, int] = {}
    for ev in sorted(events, key=lambda e: e.ms) if ordered else events:
        key = (ev.account_id, ev.user_id) if defn.unit == "user" else ev.account_id
        usage = usages.setdefault(key, AccountUsage(ev.account_id, ev.user_id if defn.unit == "user" else None))
        try:
            usage.apply(ev, spec)
        except ValueError:
            continue
        day = ev.ms // DAY_MS
        if ordered and days.get(key) != day:
            days[key] = day
            if day - usage.first_seen_ms // DAY_MS >= spec.retention_days:
                usage.prune(ev.ms, spec)
        yield usage, memos.setdefault(key, {}), ev.ms


PRUNED = TrackingSpec(retention_days=6, active_user_days=4)  # days drop out of 24-day histories


@pytest.mark.parametrize("name, defn", definitions(), ids=[n for n, _ in definitions()])
@pytest.mark.parametrize(
    "ordered, spec", [(False, None), (True, None), (True, PRUNED)], ids=["file-order", "time-order", "pruned"]
)
def test_compiled_gate_is_the_reference_on_every_state(
    tmp_path: Path, name: str, defn: Definition, ordered: bool, spec: TrackingSpec | None
) -> None:
    # Given every intermediate state of a sample history, across day boundaries (and pruning)
    events = decode_history([history(tmp_path, seed=11)]).events
    gate = Gate(defn)
    seen: list[tuple] = []
    for usage, memo, ms in states(defn, events, ordered=ordered, spec=spec):
        for excluded in (False, True):
            # When the compiled gate checks it (with the subject's memo, when events come in time order)
            expected = gate.check_reference(usage, ms, excluded)
            got = gate.check(usage, ms, excluded, memo if ordered else None)
            # Then it returns exactly the reference's tuple: same types, floats bit for bit (repr round-trips)
            assert repr(got) == repr(expected), (name, usage.account_id, ms, excluded)
            if gate.count_keys is not None:
                assert repr(gate.check_counts(usage, excluded)) == repr(expected)
            seen.append(expected)
    assert len(seen) > 1000
    assert len({repr(result) for result in seen}) > 2


def test_a_memo_notices_an_earlier_day_growing(tmp_path: Path) -> None:
    # Given a subject checked with its memo, then folding an event on an earlier day of the same count
    defn = load_definition(Path("examples/definitions/scoring.yaml"))
    gate = Gate(defn)
    events = sorted(decode_history([history(tmp_path, seed=11)]).events, key=lambda e: e.ms)
    ev = next(e for e in events if e.name == "Signed In")
    later = next(
        e for e in events if e.account_id == ev.account_id and e.name == ev.name and e.ms // DAY_MS > ev.ms // DAY_MS
    )
    spec = defn.tracking_spec()
    usage = AccountUsage(ev.account_id)
    usage.apply(ev, spec)
    usage.apply(later, spec)
    memo: dict = {}
    before = gate.check(usage, later.ms, False, memo)
    usage.apply(ev, spec)
    # When it is checked again at the same time
    got = gate.check(usage, later.ms, False, memo)
    # Then the memo's sums are not reused: the answer is the reference's, and it changed
    assert got == gate.check_reference(usage, later.ms, False)
    assert got != before


def test_the_compiled_check_holds_no_text_of_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a definition whose names, events, traits and values look like Python code
    hostile = "__import__('os').system('x')"
    defn = parse_definition(
        f"""
name: "{hostile}"
version: 1
signals:
  "{hostile}": {{count: "{hostile}", last_days: 3}}
  "t) or (1": {{trait: "{hostile}"}}
qualify:
  any:
    - {{signal: "{hostile}", gte: 2}}
    - {{signal: "t) or (1", in: ["{hostile}", "x'y"]}}
points:
  threshold: 1
  rules:
    - {{signal: "{hostile}", each: 1, cap: 3}}
""",
        "hostile",
    )
    sources: list[str] = []
    real_compile = compile

    def spy(source, *args, **kwargs):
        sources.append(source)
        return real_compile(source, *args, **kwargs)

    monkeypatch.setattr("builtins.compile", spy)
    # When its gate is compiled
    gate = Gate(defn)
    # Then the generated source names only its own variables: every string of the definition is bound as an
    # object, never written into code, and the compiled check still answers as the reference does
    assert len(sources) == 1 and sources[0].startswith("def check(")
    assert "import" not in sources[0] and "'" not in sources[0] and '"' not in sources[0]
    usage = AccountUsage("acct_1")
    assert gate.check(usage, 0, False) == gate.check_reference(usage, 0, False)
