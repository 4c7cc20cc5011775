"""The definition language: examples load, every kind of error names its line and key, warnings, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from pqlflow.cli import main
from pqlflow.ingest.usage import FilterSpec, GaugeSpec
from pqlflow.qualify.definition import load_definition, parse_definition
from pqlflow.qualify.language import DefinitionError
from pqlflow.qualify.store import bundled_default

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "definitions").glob("*.yaml"))

HEAD = "name: t\nversion: 1\n"


def error_of(text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(text, "t.yaml")
    return caught.value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_and_raises_no_warning(path: Path) -> None:
    defn = load_definition(path)
    assert defn.warnings == []
    assert defn.exclusions.paying == {"plan": ["pro", "business", "enterprise"]}


def test_the_nine_examples_of_the_seeds_are_there_with_a_readme() -> None:
    assert len(EXAMPLES) == 9
    readme = (ROOT / "examples" / "definitions" / "README.md").read_text()
    assert all(p.name in readme for p in EXAMPLES)


def test_the_bundled_default_is_valid() -> None:
    assert bundled_default().points is not None


# ---- each kind of error: its message, line and key ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + "signals:\n  m: {count: Message Sent}\nqualify:\n  all:\n    - signal: m\n      gte: abc\n",
            "t.yaml:8: qualify.all[0].gte: expected a number, got 'abc'",
        ),
        (
            HEAD + "signals:\n  m: {count: Message Sent, lats_days: 7}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:4: signals.m.lats_days: unknown key",
        ),
        (
            "version: 1\nsignals:\n  m: {count: A}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:1: name: missing required key",
        ),
        (
            HEAD + "unit: team\nsignals:\n  m: {count: A}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:3: unit: expected 'account' or 'user', got 'team'",
        ),
        (
            HEAD
            + "signals:\n  m: {count: A}\nqualify:\n  any:\n"
            + "    - {signal: m, gte: 1}\n    - {signal: mm, gte: 2}\n",
            "t.yaml:8: qualify.any[1].signal: unknown signal 'mm' (signals: m)",
        ),
        (
            HEAD + "signals:\n  m: {label: x}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:4: signals.m: a signal needs exactly one of: count, active_users, gauge, ratio, "
            "velocity, days_to, trait",
        ),
        (
            HEAD + "signals:\n  m: {count: A}\nqualify: {signal: m, gte: 1, lt: 5}\n",
            "t.yaml:5: qualify: a condition needs exactly one operator of gte, gt, lte, lt, eq, ne, in, "
            "not_in, exists (got gte, lt)",
        ),
        (
            HEAD + "signals:\n  m: {count: A}\nqualify: {signal: m, gte: 1, reason: '{value} of {max}'}\n",
            "t.yaml:5: qualify.reason: unknown placeholder {max}",
        ),
        (
            HEAD + "signals:\n  m: {count: A}\n  m: {count: B}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:5: signals.m: duplicate key",
        ),
        (HEAD + "signals:\n  m: {count: A}\nqualify: [unclosed\n", "t.yaml:6: not valid YAML"),
        (
            HEAD + "signals:\n  m: {count: A}\n",
            "t.yaml:1: a definition needs `qualify` (rules), `points` (a points model), or both",
        ),
        (
            HEAD + "signals:\n  m: {count: A}\npoints:\n  threshold: 10\n  rules:\n    - {signal: m}\n",
            "t.yaml:8: points.rules[0]: `signal` needs `each` (points per unit)",
        ),
        (
            HEAD
            + "signals:\n  c: {gauge: {event: E, property: p}}\n  r: {ratio: {of: c}}\n"
            + "qualify: {signal: r, gte: 1}\n",
            "t.yaml:5: signals.r.ratio: give exactly one of limit_trait (an account trait) or limit (a constant)",
        ),
        (
            HEAD + "signals:\n  m: {count: A, last_days: 0}\nqualify: {signal: m, gte: 1}\n",
            "t.yaml:4: signals.m.last_days: must be greater than or equal to 1, got 0",
        ),
        ("", "t.yaml:1: the file is empty"),
    ],
    ids=[
        "type",
        "unknown-key",
        "missing",
        "enum",
        "unknown-signal",
        "no-signal-type",
        "two-operators",
        "placeholder",
        "duplicate",
        "yaml-syntax",
        "nothing-qualifies",
        "points-shape",
        "ratio-limit",
        "range",
        "empty",
    ],
)
def test_each_kind_of_error_names_file_line_and_key(text: str, expected: str) -> None:
    assert str(error_of(text)).startswith(expected)


def test_all_errors_of_a_file_are_reported_in_line_order() -> None:
    error = error_of(HEAD + "signals:\n  m: {count: A, bogus: 1}\nqualify: {signal: m, gte: x}\n")
    assert [(e.line, e.key) for e in error.all] == [(4, "signals.m.bogus"), (5, "qualify.gte")]


def test_yaml_one_point_one_surprises_stay_strings() -> None:
    defn = parse_definition(HEAD + "signals:\n  p: {trait: plan}\nqualify: {signal: p, eq: no}\n")
    assert defn.qualify.eq == "no"  # type: ignore[union-attr]


# ---- warnings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qualify",
    [
        "signals:\n  s: {count: Signed Up}\nqualify: {signal: s, gte: 1}\n",
        "signals:\n  t: {count: Trial Started, last_days: 7}\nqualify: {signal: t, gte: 1}\n",
        "signals:\n  team: {active_users: {last_days: 7}}\nqualify: {signal: team, gte: 3}\n",
        "signals:\n  any: {count: Signed Up}\npoints:\n  threshold: 10\n  rules: [{signal: any, each: 10}]\n",
    ],
    ids=["signed-up", "trial-started", "users-who-only-signed-up", "points"],
)
def test_a_definition_that_can_fire_on_a_trial_start_alone_gets_a_warning(qualify: str) -> None:
    defn = parse_definition(HEAD + qualify, "t.yaml")
    assert len(defn.warnings) == 1
    assert "t.yaml:" in defn.warnings[0] and "a trial is not a PQL" in defn.warnings[0]


def test_a_trial_start_among_real_usage_is_fine() -> None:
    defn = parse_definition(
        HEAD + "signals:\n  t: {count: Trial Started}\n  m: {count: Message Sent}\n"
        "qualify:\n  all: [{signal: t, gte: 1}, {signal: m, gte: 100}]\n"
    )
    assert defn.warnings == []


# ---- what ingest must keep ----------------------------------------------------------------------------


def test_tracking_spec_asks_ingest_for_the_gauges_filters_and_names_the_definition_reads() -> None:
    crm = load_definition(ROOT / "examples/definitions/crm-contact-limit.yaml").tracking_spec()
    assert crm.gauges == (GaugeSpec("Contacts Updated", "total"),)
    hubspot = load_definition(ROOT / "examples/definitions/hubspot-freemium.yaml").tracking_spec()
    assert hubspot.filters == (FilterSpec("Feature Used", "tier", ("paid",)),)
    assert "Feature Used[tier=paid]" in hubspot.protected_names
    assert load_definition(ROOT / "examples/definitions/logins.yaml").tracking_spec().unit == "user"


# ---- the command line ----------------------------------------------------------------------------------


def test_validate_prints_ok_for_good_files_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["definition", "validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok: ") == 9
    # counts agree in number: slack-messages has one signal, scoring several
    assert "slack-messages.yaml: ok: " in out and "(account; 1 signal; rules)" in out and "1 signals" not in out


def test_validate_prints_every_error_with_its_line_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "signals:\n  m: {count: A, bogus: 1}\nqualify: {signal: m, gte: x}\n")
    assert main(["definition", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:4: signals.m.bogus: unknown key" in err
    assert f"error: {bad}:5: qualify.gte: expected a number, got 'x'" in err


def test_validate_shows_warnings_and_strict_fails_on_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = tmp_path / "trial.yaml"
    trial.write_text(HEAD + "signals:\n  s: {count: Trial Started}\nqualify: {signal: s, gte: 1}\n")
    assert main(["definition", "validate", str(trial)]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["definition", "validate", "--strict", str(trial)]) == 2


def test_validate_of_a_missing_file_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["definition", "validate", "nope.yaml"]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_explain_shows_signals_rules_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.jsonl"
    state.write_text(
        '{"type":"group","messageId":"g","timestamp":"2026-11-01T10:00:00Z","userId":"u1","groupId":"acme",'
        '"traits":{"contacts_limit":10000,"employees":250}}\n'
        '{"type":"track","messageId":"m","timestamp":"2026-11-01T10:01:00Z","userId":"u1",'
        '"event":"Contacts Updated","properties":{"total":8000},"context":{"groupId":"acme"}}\n'
    )
    code = main(
        [
            "definition",
            "explain",
            str(ROOT / "examples/definitions/crm-contact-limit.yaml"),
            "--state",
            str(state),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "contact_use = 0.8" in out
    assert "✔ contact_use = 0.8 ≥ 0.8" in out
    assert "result: QUALIFIED · touch high" in out
    assert "because: 80% of your 10,000-contact tier used [limit]" in out


def test_explain_names_the_bad_line_of_a_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.jsonl"
    state.write_text(
        '{"type":"track","messageId":"m","timestamp":"2026-11-01T10:01:00Z","userId":"u1",'
        '"event":"A"}\n{"type":"track"\n'
    )
    assert main(["definition", "explain", str(EXAMPLES[0]), "--state", str(state)]) == 2
    assert f"{state}:2: not valid JSON" in capsys.readouterr().err


def test_explain_reads_a_usage_item_in_dynamodb_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pqlflow.ingest.item import encode_usage
    from pqlflow.ingest.usage import AccountUsage

    usage = AccountUsage(
        "acme",
        lifetime={"Message Sent": 2000},
        daily={"Message Sent": {20000: 2000}},
        first_seen_ms=20000 * 86_400_000,
        last_seen_ms=20000 * 86_400_000 + 5,
    )
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"Item": encode_usage(usage, 0)}))
    code = main(["definition", "explain", str(ROOT / "examples/definitions/slack-messages.yaml"), "--state", str(item)])
    out = capsys.readouterr().out
    assert code == 0 and "because: 2,000 messages sent — the free plan's limit [limit]" in out
