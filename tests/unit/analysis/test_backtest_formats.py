"""`pqlflow backtest` reads a history as JSON Lines, gzip JSON Lines or Parquet (both shapes) with the same
answers, and a file it cannot read, or a history with no valid event, is an error that names the problem."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pqlflow import cli
from pqlflow.analysis import history_files
from pqlflow.analysis.backtest import BacktestResult, run_backtest
from pqlflow.analysis.history_files import event_of_table
from pqlflow.qualify.definition import load_definition

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "events" / "demo" / "history.jsonl"
EXAMPLES = sorted((REPO / "examples" / "definitions").glob("*.yaml"))
SLACK = REPO / "examples" / "definitions" / "slack-messages.yaml"
NESTED = ("properties", "traits", "context")
TOP = ("type", "event", "name", "messageId", "timestamp", "userId", "anonymousId", "groupId")
NOT_TITLED = "Signed In"  # its table is written without `event_text`: the name comes from the table's


# ---- writing a history as Parquet, with DuckDB (the reader's own library) ----------------------------


def _sql_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return "VARCHAR"
    if kinds <= {int, bool} and bool in kinds:
        assert kinds == {bool}, kinds
        return "BOOLEAN"
    if kinds == {int}:
        return "BIGINT"
    if kinds <= {int, float}:
        return "DOUBLE"
    if kinds == {dict}:
        return _struct([v for v in values if v is not None])
    if kinds == {list}:  # e.g. Order Completed's `products`: a LIST of STRUCTs, as Segment's exports write it
        return _sql_type([item for v in values if v is not None for item in v]) + "[]"
    assert kinds == {str}, kinds
    return "VARCHAR"


def _struct(objects: list[dict[str, Any]]) -> str:
    keys: dict[str, list[Any]] = {}
    for obj in objects:
        for key, value in obj.items():
            keys.setdefault(key, []).append(value)
    return "STRUCT(" + ", ".join(f'"{k}" {_sql_type(v)}' for k, v in keys.items()) + ")"


def _copy(rows: list[dict[str, Any]], columns: dict[str, str], out: Path, scratch: Path) -> Path:
    """Write `rows` (JSON-able dicts) to the Parquet file `out` with these column types."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = "{" + ", ".join(f"'{k}': '{t}'" for k, t in columns.items()) + "}"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"COPY (SELECT * FROM read_json('{scratch}', columns = {spec}, format = 'newline_delimited')) "
        f"TO '{out}' (FORMAT parquet)"
    )
    con.close()
    scratch.unlink()
    return out


def messages_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_messages_json_strings(src: Path, out: Path) -> Path:
    """One row per message; properties, traits and context as JSON strings; every column a string."""
    rows = [
        {**{k: m.get(k) for k in TOP}, **{k: json.dumps(m[k]) if k in m else None for k in NESTED}}
        for m in messages_of(src)
    ]
    return _copy(rows, dict.fromkeys((*TOP, *NESTED), "VARCHAR"), out, out.with_suffix(".tmp"))


def write_messages_structs(src: Path, out: Path) -> Path:
    """One row per message; properties, traits and context as structs; timestamp as TIMESTAMPTZ."""
    messages = messages_of(src)
    rows = [{k: m.get(k) for k in (*TOP, *NESTED)} for m in messages]
    columns = {k: "VARCHAR" for k in TOP} | {k: _struct([m[k] for m in messages if k in m]) for k in NESTED}
    columns["timestamp"] = "TIMESTAMPTZ"
    return _copy(rows, columns, out, out.with_suffix(".tmp"))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write_event_tables(src: Path, lake: Path) -> Path:
    """The per-event-table shape of Segment's warehouse / Data Lakes exports: one folder per table
    (tracks by event, identifies, groups, pages), properties and traits flattened into columns,
    Segment's own metadata columns beside them, a Hive partition folder under each table."""
    tables: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages_of(src):
        kind = m["type"]
        row: dict[str, Any] = {
            "id": m["messageId"],
            "timestamp": m["timestamp"],
            "received_at": m["timestamp"],
            "user_id": m.get("userId"),
            "context_group_id": m.get("context", {}).get("groupId"),
            "context_timezone": m.get("context", {}).get("timezone"),
            "context_library_name": "analytics-python",
        }
        if kind == "track":
            table = _slug(m["event"])
            row |= {"event": table} if m["event"] == NOT_TITLED else {"event": table, "event_text": m["event"]}
            row |= m.get("properties", {})
        elif kind == "page":
            table = "pages"
            row |= {"name": m.get("name")} | m.get("properties", {})
        else:
            table = {"identify": "identifies", "group": "groups"}[kind]
            row |= ({"group_id": m["groupId"]} if kind == "group" else {}) | m.get("traits", {})
        tables[table].append(row)
    for table, rows in tables.items():
        names = list(dict.fromkeys(k for r in rows for k in r))
        full = [{k: r.get(k) for k in names} for r in rows]
        columns = {k: _sql_type([r[k] for r in full]) for k in names}
        columns |= {"timestamp": "TIMESTAMPTZ", "received_at": "TIMESTAMPTZ"}
        out = lake / table / "day=all" / "part-0.parquet"
        _copy(full, columns, out, lake / f"{table}.tmp")
    # Segment's derived tables are there too: they are not messages and must not count
    _copy([{"id": "usr_1", "email": "a@example.com"}], {"id": "VARCHAR", "email": "VARCHAR"},
          lake / "users" / "part-0.parquet", lake / "users.tmp")
    return lake


# ---- comparing answers -----------------------------------------------------------------------------


def answers(result: BacktestResult) -> dict[str, Any]:
    """Everything a backtest answers, without timings and file names."""
    data = result.to_dict()
    history = {k: v for k, v in data["history"].items() if k != "files"}
    definitions = [{k: v for k, v in d.items() if k != "work"} for d in data["definitions"]]
    subjects = [
        sorted(
            (s.account_id, s.user_id, s.qualified_at_ms, s.qualifications, s.disqualifications,
             s.converted_at_ms, s.reasons, s.touch)
            for s in run.subjects
        )
        for run in result.runs
    ]
    return {"history": history, "definitions": definitions, "subjects": subjects,
            "transitions": [sorted(run.transitions) for run in result.runs]}


def backtest(paths: list[Path]) -> BacktestResult:
    return run_backtest(paths, [(load_definition(p), p.name) for p in EXAMPLES], now_s=2_000_000_000)


@pytest.fixture(scope="module")
def demo_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("formats")
    gz = root / "history.jsonl.gz"  # and one gzip file with no .gz in its name: told by its bytes
    with gzip.open(gz, "wb") as f:
        f.write(DEMO.read_bytes())
    unnamed = root / "history-gzip"
    shutil.copy(gz, unnamed)
    return {
        "jsonl": [DEMO],
        "gzip": [gz],
        "gzip without .gz": [unnamed],
        "parquet, JSON strings": [write_messages_json_strings(DEMO, root / "json-strings.parquet")],
        "parquet, structs": [write_messages_structs(DEMO, root / "structs" / "history.parquet")],
        "parquet, per-event tables": [write_event_tables(DEMO, root / "lake")],
        "parquet, glob": [Path(f"{root}/lake/*/*/*.parquet"), Path(f"{root}/lake/users/*.parquet")],
    }


@pytest.fixture(scope="module")
def reference(demo_formats: dict[str, list[Path]]) -> dict[str, Any]:
    return answers(backtest(demo_formats["jsonl"]))


@pytest.mark.parametrize(
    "form", ["gzip", "gzip without .gz", "parquet, JSON strings", "parquet, structs",
             "parquet, per-event tables", "parquet, glob"]
)
def test_every_format_of_the_demo_gives_the_answers_of_its_json_lines(
    demo_formats: dict[str, list[Path]], reference: dict[str, Any], form: str
) -> None:
    # Given the demo history as JSON Lines, and the same messages in another format
    # When the nine example definitions are backtested on each
    got = answers(backtest(demo_formats[form]))
    # Then the same PQLs qualify at the same events, and every metric is the same
    assert got["history"]["events"] == reference["history"]["events"] > 15_000
    assert got["subjects"] == reference["subjects"]
    assert got["transitions"] == reference["transitions"]
    assert got == reference
    assert any(d["pqls"] for d in got["definitions"]), "the demo should produce PQLs"


def test_a_json_line_and_a_parquet_row_of_the_same_bad_message_are_rejected_alike(tmp_path: Path) -> None:
    # Given one good and two bad messages (no userId at all; a properties value that is not an object)
    good = {"type": "track", "messageId": "m1", "timestamp": "2026-09-01T10:00:00.000Z", "userId": "u1",
            "event": "Message Sent", "context": {"groupId": "a1"}}
    no_user = {**good, "messageId": "m2", "userId": None}
    jsonl = tmp_path / "h.jsonl"
    jsonl.write_text("".join(json.dumps({k: v for k, v in m.items() if v is not None}) + "\n"
                             for m in (good, no_user)) + '{"type": "track", "properties": 3}\n')
    rows = [{**{k: m.get(k) for k in TOP}, "context": json.dumps(m["context"]), "properties": None}
            for m in (good, no_user)]
    rows.append({**dict.fromkeys(TOP), "type": "track", "messageId": None, "context": None, "properties": "3"})
    parquet = _copy(rows, dict.fromkeys((*TOP, "context", "properties"), "VARCHAR"),
                    tmp_path / "h.parquet", tmp_path / "rows.tmp")
    # When both are backtested
    from_json, from_parquet = backtest([jsonl]).history, backtest([parquet]).history
    # Then each keeps the good one and rejects the same rows for the same reasons, by line / row number
    assert from_json.count == from_parquet.count == 1
    assert [(b.line, b.reason) for b in from_json.bad] == [(b.line, b.reason) for b in from_parquet.bad]
    assert [b.line for b in from_parquet.bad] == [2, 3] and all(b.file == str(parquet) for b in from_parquet.bad)


def test_a_per_event_table_without_event_text_is_named_after_its_table() -> None:
    assert event_of_table("signed_in") == "Signed In"
    assert event_of_table("invite_sent") == "Invite Sent"


# ---- errors, through the real command line -----------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *events: Path | str) -> tuple[int, str]:
    code = cli.main(["backtest", *map(str, events), "--definition", str(SLACK), "--no-decode-baseline"])
    return code, capsys.readouterr().err


def test_a_malformed_parquet_file_is_an_error_naming_the_file(tmp_path: Path, capsys) -> None:
    # Given a file with Parquet's magic bytes but a damaged body, and a .parquet file that is not Parquet
    good = write_messages_json_strings(DEMO, tmp_path / "good.parquet")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:5000])
    fake = tmp_path / "fake.parquet"
    fake.write_text('{"type": "track"}\n')
    for path, reason in [(truncated, "not a readable Parquet file"), (fake, "not a Parquet file")]:
        # When it is backtested
        code, err = run_cli(capsys, path)
        # Then the run stops with exit 2 and names the file and what is wrong
        assert code == 2
        assert f"{path}: {reason}" in err


@pytest.mark.parametrize(
    "shape, drop, column",
    [
        ("messages", "messageId", "messageId"),
        ("messages", "timestamp", "timestamp"),
        ("messages", "type", "type"),
        ("messages", "userId anonymousId", "userId"),
        ("tables", "timestamp", "timestamp"),
        ("tables", "user_id", "user_id"),
        ("groups", "group_id", "group_id"),
    ],
)
def test_a_missing_required_column_is_an_error_naming_file_and_column(
    tmp_path: Path, capsys, shape: str, drop: str, column: str
) -> None:
    # Given a Parquet file of either shape without one of the columns it needs
    if shape == "messages":
        columns = [c for c in (*TOP, *NESTED) if c not in drop.split()]
        path = tmp_path / "history.parquet"
    else:
        columns = [c for c in ("id", "timestamp", "user_id", "group_id", "event_text") if c != drop]
        path = tmp_path / ("groups" if shape == "groups" else "signed_in") / "part-0.parquet"
    row = {c: "{}" if c in NESTED else "x" for c in columns}
    _copy([row], dict.fromkeys(columns, "VARCHAR"), path, tmp_path / "row.tmp")
    # When it is backtested
    code, err = run_cli(capsys, path)
    # Then exit 2, with the file and the missing column
    assert code == 2
    assert str(path) in err and f"missing column {column!r}" in err


@pytest.mark.parametrize("content", [bytes(range(256)) * 40, b"\x89PNG\r\n\x1a\n" + bytes(3000)])
def test_a_history_with_no_valid_event_exits_non_zero_with_the_reason(tmp_path: Path, capsys, content) -> None:
    # Given a binary file where a history should be
    path = tmp_path / "history.bin"
    path.write_bytes(content)
    # When it is backtested
    code, err = run_cli(capsys, path)
    # Then the run fails (it used to print "N bad lines · 0 events" and exit 0) and says why
    assert code == 2
    assert f"{path}: no valid event" in err
    assert re.search(r"\d+ bad lines? and not one event", err)
    assert f"the first: {path}:1: " in err


def test_a_history_of_blank_lines_only_exits_non_zero(tmp_path: Path, capsys) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    code, err = run_cli(capsys, path)
    assert code == 2 and "no event at all" in err


@pytest.mark.parametrize(
    "given, message",
    [("{tmp}/nothing/*.parquet", "the pattern matches no file"), ("{tmp}", "no *.parquet file under it")],
)
def test_a_glob_or_directory_with_nothing_to_read_is_an_error(tmp_path: Path, capsys, given, message) -> None:
    (tmp_path / "notes.txt").write_text("not a history")
    code, err = run_cli(capsys, given.format(tmp=tmp_path))
    assert code == 2 and message in err


def test_parquet_without_duckdb_names_the_extra_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    # Given a Parquet history on a machine without DuckDB (the Lambda layer, a trimmed install)
    path = write_messages_json_strings(DEMO, tmp_path / "h.parquet")
    monkeypatch.setattr(history_files, "duckdb", None)
    # When it is backtested, then the error says what to install
    code, err = run_cli(capsys, path)
    assert code == 2 and "pip install 'pqlflow[parquet]'" in err and str(path) in err
