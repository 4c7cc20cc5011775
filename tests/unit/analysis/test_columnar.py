"""The columnar (DuckDB) engine answers exactly as the reference engine does — same PQLs at the same events,
same reasons and touch, same metrics, sweeps, customer worth and data-quality counts — on every example
definition in its subset, and hands every history it cannot answer exactly to the reference."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pqlflow import cli
from pqlflow.analysis.backtest import BacktestResult, run_backtest
from pqlflow.analysis.columnar import run_backtest_columnar, run_backtest_engine, unsupported
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.definition import load_definition, parse_definition
from pqlflow.qualify.language import Definition

from tests.unit.analysis.test_backtest_formats import write_messages_json_strings, write_messages_structs

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "events" / "demo" / "history.jsonl"
EXAMPLES = sorted((REPO / "examples" / "definitions").glob("*.yaml"))
SLACK = REPO / "examples" / "definitions" / "slack-messages.yaml"
SCORING = REPO / "examples" / "definitions" / "scoring.yaml"
NOW = 1_893_456_000.0  # 2030-01-01: every history here is in the past, none past the retention window

# Variants of the subset the examples do not cover: gt, no touch rule, internal-domain and paying exclusions
# that start before the account qualifies, and a low threshold that most accounts reach.
EXTRA = {
    "low-gt": """
name: low-gt
version: 1
signals:
  invites: {count: Invite Sent}
qualify: {signal: invites, gt: 2}
exclusions:
  converted: true
  internal_domains: [example.com]
""",
    "paying-first": """
name: paying-first
version: 2
signals:
  signins: {count: Signed In, label: sign-ins}
qualify: {signal: signins, gte: 5, reason: "{value} sign-ins"}
requalify: {cooldown_days: 0}
exclusions:
  converted: true
  paying: {plan: [trial]}
touch:
  high: {trait: seats, gte: 5}
""",
}


def supported_examples() -> list[tuple[str, Definition]]:
    found = [(p.name, load_definition(p)) for p in EXAMPLES]
    found += [(name, parse_definition(text, name)) for name, text in EXTRA.items()]
    return [(name, d) for name, d in found if unsupported(d) is None]


SUPPORTED = supported_examples()


def comparable(result: BacktestResult) -> dict[str, Any]:
    """What a user reads in the output, less what depends on the engine: timings and the work counters."""
    data = result.to_dict()
    data.pop("speed")
    data.pop("engine")
    for d in data["definitions"]:
        d.pop("work")
    return data


def both(paths: list[Path], defn: Definition, name: str) -> tuple[BacktestResult, BacktestResult]:
    reference = run_backtest(paths, [(defn, name)], now_s=NOW)
    columnar = run_backtest_engine(paths, [(defn, name)], engine="auto", now_s=NOW)
    return reference, columnar


def sample(tmp_path: Path, seed: int, **config: Any) -> Path:
    path = tmp_path / f"sample{seed}.jsonl"
    cfg = SampleConfig(seed=seed, accounts=40, days=30, start=date(2026, 9, 1), **config)
    with path.open("w") as out:
        Sample(cfg).write(out)
    return path


def pqls(result: BacktestResult) -> dict[str, tuple[int | None, str | None, list[tuple[str, str, str]]]]:
    return {
        s.account_id: (s.qualified_at_ms, s.touch, s.reasons)
        for s in result.runs[0].subjects
        if s.qualified_at_ms is not None
    }


def test_the_subset_covers_slack_messages() -> None:
    assert "slack-messages.yaml" in [name for name, _ in SUPPORTED]
    assert unsupported(load_definition(SCORING)) == "points (only a qualify rule of one lifetime count)"


@pytest.mark.parametrize("name, defn", SUPPORTED, ids=[n for n, _ in SUPPORTED])
def test_same_answers_as_the_reference_on_the_demo(name: str, defn: Definition) -> None:
    reference, columnar = both([DEMO], defn, name)
    assert columnar.engine == "columnar" and columnar.fallback is None
    assert pqls(columnar) == pqls(reference)
    assert comparable(columnar) == comparable(reference)


@pytest.mark.parametrize("name, defn", SUPPORTED, ids=[n for n, _ in SUPPORTED])
def test_same_answers_on_a_redelivered_shuffled_sample(tmp_path: Path, name: str, defn: Definition) -> None:
    # Given a `pqlflow sample` history with redelivered (duplicate) lines, out of order
    path = sample(tmp_path, seed=3, duplicates=0.03, shuffle_window=40)
    reference, columnar = both([path], defn, name)
    assert columnar.engine == "columnar", columnar.fallback
    assert reference.history.duplicates > 0 and columnar.history.duplicates == reference.history.duplicates
    assert comparable(columnar) == comparable(reference)
    assert pqls(columnar) == pqls(reference)


LOW = """
name: low
version: 1
signals:
  messages: {count: Message Sent}
qualify: {signal: messages, gte: 10}
exclusions:
  converted: true
  paying: {plan: [pro]}
touch:
  high: {trait: employees, gte: 200}
"""


def test_json_lines_gzip_and_parquet_of_one_history_agree(tmp_path: Path) -> None:
    defn = parse_definition(LOW, "low")
    zipped = tmp_path / "demo.jsonl.gz"
    zipped.write_bytes(gzip.compress(DEMO.read_bytes()))
    structs = write_messages_structs(DEMO, tmp_path / "structs" / "part-0.parquet")
    strings = write_messages_json_strings(DEMO, tmp_path / "strings" / "part-0.parquet")
    results = [run_backtest_engine([p], [(defn, "slack")], now_s=NOW) for p in (DEMO, zipped, structs, strings)]
    assert [r.engine for r in results] == ["columnar"] * 4, [r.fallback for r in results]
    texts = []
    for r in results:
        data = comparable(r)
        data["history"].pop("files")
        texts.append(data)
    assert all(t == texts[0] for t in texts[1:])
    assert texts[0]["definitions"][0]["pqls"] > 0


def test_a_definition_outside_the_subset_runs_the_reference() -> None:
    defn = load_definition(SCORING)
    result = run_backtest_engine([DEMO], [(defn, "scoring.yaml")], now_s=NOW)
    assert result.engine == "reference"
    assert result.fallback is not None and "points" in result.fallback
    assert comparable(result) == comparable(run_backtest([DEMO], [(defn, "scoring.yaml")], now_s=NOW))
    with pytest.raises(UsageError, match="scoring.yaml: not supported by the columnar engine: points"):
        run_backtest_columnar([DEMO], [(defn, "scoring.yaml")], now_s=NOW)


def _with(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "h.jsonl"
    path.write_text(DEMO.read_text() + "".join(line + "\n" for line in extra))
    return path


def _line(**fields: Any) -> str:
    message = {"type": "track", "messageId": "x-1", "timestamp": "2026-09-20T10:00:00.000Z", "userId": "usr_x",
               "event": "Message Sent", "context": {"groupId": "acct_x"}} | fields
    return json.dumps(message)


@pytest.mark.parametrize(
    "extra, why",
    [
        (["{not json"], "could not read every line as JSON"),
        ([_line(timestamp="yesterday")], "outside the strict shape"),
        ([_line(messageId=5)], "outside the strict shape"),
        ([_line(properties={"n": float("nan")})], "outside the strict shape"),
        ([_line(messageId="x-\u00e9")], "outside the strict shape"),  # \u00e9: an escape, not plain ASCII
        ([_line(), _line(event="Other")], "repeated with different lines"),
    ],
    ids=["not-json", "bad-time", "number-id", "nan", "escaped-id", "different-duplicate"],
)
def test_a_history_the_fast_path_cannot_prove_falls_back_with_the_same_answer(
    tmp_path: Path, extra: list[str], why: str
) -> None:
    path = _with(tmp_path, *extra)
    defn = load_definition(SLACK)
    reference, result = both([path], defn, "slack")
    assert result.engine == "reference"
    assert result.fallback is not None and why in result.fallback
    assert comparable(result) == comparable(reference)


def test_a_bad_line_is_still_reported_after_the_fallback(tmp_path: Path) -> None:
    path = _with(tmp_path, "{not json", _line(timestamp="yesterday"))
    result = run_backtest_engine([path], [(load_definition(SLACK), "slack")], now_s=NOW)
    assert result.engine == "reference"
    assert [b.line for b in result.history.bad] == [15059, 15060]
    assert result.to_dict()["history"]["bad_lines"] == 2


def _group(mid: str, when: str, traits: dict[str, Any]) -> str:
    return json.dumps({"type": "group", "messageId": mid, "timestamp": when, "userId": "usr_t", "groupId": "acct_t",
                       "traits": traits})


def _account(n_messages: int, *, tie: bool = False, pays_after: bool = False, back_free: bool = False) -> list[str]:
    """An account that sends `n_messages` messages, one a minute from 2026-09-21 10:00."""
    lines = [_group("g-1", "2026-09-21T09:00:00.000Z", {"plan": "free", "employees": 500})]
    for i in range(n_messages):
        lines.append(_line(messageId=f"t-{i}", timestamp=f"2026-09-21T{10 + i // 60:02d}:{i % 60:02d}:00.000Z",
                           userId="usr_t", context={"groupId": "acct_t"}))
    if tie:  # a trait event at the very millisecond of a counted one: only file order says which came first
        lines.append(_group("g-2", "2026-09-21T10:05:00.000Z", {"employees": 5}))
    if pays_after:  # an exclusion that starts after the account qualified: the reference disqualifies it
        lines.append(_group("g-3", "2026-09-22T10:00:00.000Z", {"plan": "pro"}))
    if back_free:  # ... and ends the day after; then one sign-in (not counted) a day, late in the day
        lines.append(_group("g-4", "2026-09-23T10:00:00.000Z", {"plan": "free"}))
        for day in range(23, 30):
            lines.append(_line(messageId=f"s-{day}", timestamp=f"2026-09-{day}T23:00:00.000Z", userId="usr_t",
                               event="Signed In", context={"groupId": "acct_t"}))
    return lines


def test_a_same_millisecond_tie_falls_back(tmp_path: Path) -> None:
    defn = parse_definition(LOW, "low")
    plain = _with(tmp_path, *_account(20))
    reference, result = both([plain], defn, "low")
    assert result.engine == "columnar"
    tenth = int(datetime(2026, 9, 21, 10, 9, tzinfo=UTC).timestamp() * 1000)  # the 10th message
    assert pqls(result)["acct_t"] == (tenth, "high", [("qualify", "usage", "10 messages sent")])
    assert comparable(result) == comparable(reference)
    tie = _with(tmp_path, *_account(20, tie=True))
    reference, result = both([tie], defn, "low")
    assert result.engine == "reference"
    assert result.fallback is not None and "shares its millisecond" in result.fallback
    assert comparable(result) == comparable(reference)


@pytest.mark.parametrize("requalify", ["{}", "{cooldown_days: 3}", "{cooldown_days: 3, again: false}",
                                       "{cooldown_days: 0.5}"])
def test_disqualification_and_requalification_after_a_cooldown(tmp_path: Path, requalify: str) -> None:
    # Given an account that qualifies, starts paying (excluded) the next day, and is back on free the day after
    defn = parse_definition(LOW + f"requalify: {requalify}\n", "low")
    path = _with(tmp_path, *_account(20, pays_after=True, back_free=True))
    reference, result = both([path], defn, "low")
    assert result.engine == "columnar", result.fallback
    ours = next(s for s in result.runs[0].subjects if s.account_id == "acct_t")
    theirs = next(s for s in reference.runs[0].subjects if s.account_id == "acct_t")
    assert ours.disqualifications == theirs.disqualifications == 1
    assert ours.qualifications == theirs.qualifications == (1 if "again: false" in requalify else 2)
    assert sorted(result.runs[0].transitions) == sorted(reference.runs[0].transitions)
    assert comparable(result) == comparable(reference)


def test_cli_says_which_engine_ran(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = "--no-decode-baseline"
    assert cli.main(["backtest", str(DEMO), "--definition", str(SLACK), quiet]) == 0
    assert capsys.readouterr().out.rstrip().endswith("engine: reference")  # the default
    assert cli.main(["backtest", str(DEMO), "--definition", str(SLACK), "--engine", "auto", quiet]) == 0
    assert capsys.readouterr().out.rstrip().endswith("engine: columnar")
    assert cli.main(["backtest", str(DEMO), "--definition", str(SLACK), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == {"name": "reference", "fallback": None}
    assert cli.main(["backtest", str(DEMO), "--definition", str(SCORING), "--engine", "auto", quiet]) == 0
    assert "engine: reference (not columnar: not in the columnar subset" in capsys.readouterr().out
    assert cli.main(["backtest", str(DEMO), "--definition", str(SCORING), "--engine", "columnar"]) == 2
    assert "not supported by the columnar engine: points" in capsys.readouterr().err


def _messages(n: int, member: str) -> list[str]:
    """`n` Message Sent of one account, a minute apart from 2026-09-21 10:00, every other one spelled with
    `member` (raw JSON text, placed just before the counted event's name) inside the object."""
    lines = []
    for i in range(n):
        when = datetime(2026, 9, 21, 10, tzinfo=UTC).timestamp() + 60 * i
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        extra = member if i % 2 else ""
        lines.append(f'{{"type":"track","messageId":"m-{i}","timestamp":"{stamp}","userId":"usr_d",{extra}'
                     f'"event":"Message Sent","context":{{"groupId":"acct_d"}},"properties":{{"n":1}}}}')
    return lines


@pytest.mark.parametrize(
    "member, why",
    [
        ('"event":"Other",', "line 2: the member 'event' twice"),  # the reference takes the last: Message Sent
        ('"context":{"groupId":"acct_other"},', "line 2: the member 'context' twice"),
        ('"properties":{"n":1,"n":2},', "line 2: the member 'properties' twice"),  # the top level, again
    ],
    ids=["event", "context", "properties"],
)
def test_a_member_spelled_twice_falls_back_to_the_reference_and_its_last_value(
    tmp_path: Path, member: str, why: str
) -> None:
    # Given a history where the counted event's name (or the account) is a key given twice in a message:
    # DuckDB's json_extract reads the first, the reference's decoder the last
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(_messages(2100, member)) + "\n")
    defn = load_definition(SLACK)
    # When it is backtested by the default engine, then the reference answers, and the fallback says why
    reference, result = both([path], defn, "slack")
    assert result.engine == "reference" and result.fallback is not None and why in result.fallback
    assert comparable(result) == comparable(reference)
    assert "usr_d" not in result.fallback and "m-1" not in result.fallback  # no line content in the reason


def test_a_key_twice_inside_properties_is_the_reference_decoders_business(tmp_path: Path) -> None:
    # Given the same history with a key twice inside the properties (which the count rule does not read)
    path = tmp_path / "dup-props.jsonl"
    path.write_text("\n".join(line.replace('{"n":1}', '{"n":1,"n":2}') for line in _messages(2100, "")) + "\n")
    reference, result = both([path], load_definition(SLACK), "slack")
    # Then the columnar engine still answers, and as the reference does: the account qualifies
    assert result.engine == "columnar"
    assert comparable(result) == comparable(reference) and pqls(result).keys() == {"acct_d"}


def test_a_parquet_context_string_with_a_key_twice_falls_back(tmp_path: Path) -> None:
    # Given a Parquet history (one row per message, context as a JSON string) whose context names the
    # account twice: the first a decoy, the last the account the reference reads
    import duckdb

    path = tmp_path / "dup.parquet"
    rows = []
    for i, line in enumerate(_messages(2100, "")):
        message = json.loads(line)
        context = '{"groupId":"acct_decoy","groupId":"acct_d"}' if i % 2 else json.dumps(message["context"])
        rows.append((message["type"], message["messageId"], message["timestamp"], message["userId"],
                     message["event"], context))
    con = duckdb.connect()
    con.execute("CREATE TABLE m (type VARCHAR, messageId VARCHAR, timestamp VARCHAR, userId VARCHAR, "
                "event VARCHAR, context VARCHAR)")
    con.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.execute(f"COPY m TO '{path}' (FORMAT parquet)")
    con.close()
    reference, result = both([path], load_definition(SLACK), "slack")
    # Then the reference answers, and its answer counts all 2,100 messages for the one account
    assert result.engine == "reference"
    assert result.fallback == "1050 line(s) outside the strict shape the fast path checks"
    assert comparable(result) == comparable(reference) and pqls(result).keys() == {"acct_d"}


@pytest.mark.parametrize("mrr", ["49", -49, float("nan")], ids=["string", "negative", "nan"])
def test_a_conversion_live_ingest_would_quarantine_converts_in_neither_engine(tmp_path: Path, mrr: Any) -> None:
    # Given an account that signs in three times, then sends a Subscription Started whose mrr live ingest
    # refuses (a string, a negative amount, NaN), then signs in again
    defn = parse_definition("""
name: three-sign-ins
version: 1
signals:
  sign_ins: {count: Signed In}
qualify: {signal: sign_ins, gte: 3}
""", "three-sign-ins")
    lines = []
    for i, (event, day) in enumerate([("Signed In", 0), ("Signed In", 0.1), ("Signed In", 0.2),
                                      ("Subscription Started", 10), ("Signed In", 40)]):
        stamp = datetime.fromtimestamp(datetime(2026, 6, 1, 10, tzinfo=UTC).timestamp() + day * 86400, UTC)
        message: dict[str, Any] = {"type": "track", "messageId": f"m{i}", "userId": "u1", "event": event,
                                   "context": {"groupId": "acct_m"},
                                   "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
        if event == "Subscription Started":
            message["properties"] = {"mrr": mrr, "currency": "USD"}
        lines.append(json.dumps(message))
    path = tmp_path / "bad-mrr.jsonl"
    path.write_text("\n".join(lines) + "\n")
    # When both engines backtest it
    reference, result = both([path], defn, "three-sign-ins")
    # Then the account qualifies and never converts, the bad conversion is a bad event, and they agree
    (subject,) = reference.runs[0].subjects
    assert subject.qualified_at_ms is not None and subject.converted_at_ms is None
    assert [b.reason for b in reference.runs[0].bad] != [] and "mrr" in reference.runs[0].bad[0].reason
    assert comparable(result) == comparable(reference)
