"""A history larger than memory is backtested partition by partition (`--partitions`): the answers are
identical to the in-memory engine's — the same PQLs at the same events, the same metrics, sweeps, per-signal
table and bad-line report, in the same order — and the spill files are gone when the run ends or fails."""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pqlflow import cli
from pqlflow.analysis import partitions
from pqlflow.analysis.backtest import BacktestResult
from pqlflow.analysis.partitions import run_backtest_partitioned
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.qualify.definition import load_definition

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples" / "definitions").glob("*.yaml"))
NOW_S = 2_000_000_000
FORCED = 5  # partitions forced on a history the size-based choice would keep in memory


def _bad_lines(lines: list[str]) -> list[str]:
    """Lines ingest would quarantine, and gauge values it would refuse (`total` = "abc")."""
    contacts = next(json.loads(x) for x in lines if '"Contacts Updated"' in x)
    no_user = {k: v for k, v in json.loads(lines[10]).items() if k != "userId"}
    bad = [json.dumps(no_user), json.dumps({**json.loads(lines[11]), "timestamp": "yesterday"})]
    for i in range(3):
        gauge = {**contacts, "messageId": f"bad-gauge-{i}", "properties": {"total": "abc"}}
        bad.append(json.dumps(gauge))
    return bad


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A `pqlflow sample` history with redelivered copies and out-of-order lines, damaged with bad lines
    (spread through it, so they fall in several partitions), as JSON Lines and as Parquet."""
    root = tmp_path_factory.mktemp("partitioned")
    sample = Sample(SampleConfig(seed=7, accounts=80, days=60, start=date(2026, 1, 5), events=20_000,
                                 duplicates=0.03, shuffle_window=40))
    lines = list(sample.lines())
    bad = _bad_lines(lines)
    step = len(lines) // (len(bad) + 1)
    for k, line in enumerate(bad, 1):
        lines.insert(k * step, line)
    jsonl = root / "history.jsonl"
    jsonl.write_text("\n".join(lines[:100] + ["{not json", ""] + lines[100:]) + "\n")
    parquet = root / "history.parquet"  # one row per message, objects as JSON (every line above is JSON)
    columns = {c: "VARCHAR" for c in ("type", "messageId", "timestamp", "userId", "event", "name", "groupId")}
    columns |= {c: "JSON" for c in ("properties", "traits", "context")}
    spec = "{" + ", ".join(f"'{k}': '{t}'" for k, t in columns.items()) + "}"
    rows = root / "rows.jsonl"
    rows.write_text("\n".join(lines) + "\n")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_json('{rows}', columns = {spec}, format = 'newline_delimited')) "
                f"TO '{parquet}' (FORMAT parquet)")
    con.close()
    return {"jsonl": jsonl, "parquet": parquet}


def answers(result: BacktestResult) -> dict[str, Any]:
    """Everything a backtest answers (the report's data, and each subject's outcome in order), without timings."""
    data = result.to_dict()
    data.pop("speed")
    for d in data["definitions"]:
        d.pop("work")
    runs = [
        {
            "subjects": [
                (s.account_id, s.user_id, s.first_ms, s.last_ms, s.qualified_at_ms, s.qualifications,
                 s.disqualifications, s.converted_at_ms, s.reasons, s.touch, s.rows, s.records)
                for s in run.subjects
            ],
            "transitions": run.transitions,
            "bad": [(str(b), b.message_id) for b in run.bad],
        }
        for run in result.runs
    ]
    return {"data": data, "runs": runs}


def backtest(path: Path, n: int | None) -> BacktestResult:
    return run_backtest_partitioned([path], [(load_definition(p), p.name) for p in EXAMPLES], now_s=NOW_S, partitions=n)


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_partitioned_backtest_gives_the_in_memory_answers_on_the_nine_examples(
    histories: dict[str, Path], form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a damaged sample history, and a run that counts how many partitions held accounts
    loaded: list[int] = []
    load = partitions.Spill.load

    def spy(self: partitions.Spill, i: int) -> Any:
        groups, first = load(self, i)
        loaded.append(len(groups))
        return groups, first

    monkeypatch.setattr(partitions.Spill, "load", spy)
    # When the nine example definitions are backtested in memory and in 5 partitions
    in_memory = backtest(histories[form], 1)
    spilled = backtest(histories[form], FORCED)
    # Then the run really was partitioned, on a history with duplicates, bad lines and bad gauge values
    assert len(loaded) == FORCED and all(loaded), loaded
    history = in_memory.to_dict()["history"]
    assert history["duplicates"] > 100 and history["events"] > 15_000
    assert history["bad_lines"] == (3 if form == "jsonl" else 2)
    crm = next(r for r in in_memory.runs if r.source == "crm-contact-limit.yaml")
    assert len(crm.bad) == 3
    assert sum(1 for d in in_memory.to_dict()["definitions"] if d["pqls"]) >= 5
    # and every answer is identical, in the same order: PQLs, qualifying events, metrics, sweeps, signals, bad lines
    assert answers(spilled) == answers(in_memory)


def test_comparison_through_the_command_line_is_identical_partitioned(
    histories: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two definitions compared on the same history
    a, b = REPO / "examples/definitions/scoring.yaml", REPO / "examples/definitions/facebook-friends.yaml"

    def run(n: str) -> dict[str, Any]:
        argv = ["backtest", str(histories["jsonl"]), "--definition", str(a), "--compare", str(b),
                "--json", "--no-decode-baseline", "--partitions", n]
        assert cli.main(argv) == 0
        data = json.loads(capsys.readouterr().out)
        data.pop("speed")
        for d in data["definitions"]:
            d.pop("work")
        return data

    # When it runs in memory and in 3 partitions, then the output (comparison included) is the same
    in_memory = run("1")
    assert in_memory["comparison"]["groups"][0]["accounts"] > 0
    assert run("3") == in_memory


def _scratch_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("pqlflow-backtest-*"))


def test_spill_files_are_removed_when_the_run_ends_and_when_it_fails(
    histories: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # $TMPDIR, for this test
    slack = [(load_definition(REPO / "examples/definitions/slack-messages.yaml"), "slack")]
    seen: list[list[Path]] = []
    run_definition = partitions.run_definition

    def watching(*args: Any, **kwargs: Any) -> Any:
        seen.append([p for d in _scratch_dirs(tmp_path) for p in d.iterdir()])
        return run_definition(*args, **kwargs)

    monkeypatch.setattr(partitions, "run_definition", watching)
    # Given a run that succeeds: spill files existed while it ran, none are left after it
    run_backtest_partitioned([histories["jsonl"]], slack, now_s=NOW_S, partitions=4)
    assert seen and seen[0], "the run wrote no spill file"
    assert _scratch_dirs(tmp_path) == []

    # Given a history whose second file is a damaged gzip (the reading pass fails after spilling the first)
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(gzip.compress(histories["jsonl"].read_bytes())[:20_000])
    code = cli.main(["backtest", str(histories["jsonl"]), str(damaged), "--definition",
                     str(REPO / "examples/definitions/slack-messages.yaml"), "--partitions", "4",
                     "--no-decode-baseline"])
    # Then it exits 2 naming the file, and the spill directory is gone
    assert code == 2
    assert _scratch_dirs(tmp_path) == []

    # Given a run that fails while running its partitions
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(partitions, "run_definition", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        run_backtest_partitioned([histories["jsonl"]], slack, now_s=NOW_S, partitions=4)
    assert _scratch_dirs(tmp_path) == []


def test_a_history_with_no_valid_event_is_the_same_error_partitioned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a binary file where a history should be
    path = tmp_path / "history.bin"
    path.write_bytes(bytes(range(256)) * 40)
    errors = []
    for n in ("1", "3"):
        # When it is backtested in memory and partitioned
        code = cli.main(["backtest", str(path), "--definition", str(EXAMPLES[0]), "--partitions", n,
                         "--no-decode-baseline"])
        errors.append((code, capsys.readouterr().err))
    # Then both exit 2 with the same reason, naming the first bad line
    assert errors[0] == errors[1]
    assert errors[0][0] == 2 and f"the first: {path}:1: " in errors[0][1]


def test_auto_keeps_a_small_history_in_memory_and_partitions_a_large_one(
    histories: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = histories["jsonl"]
    events = partitions.estimate_events([path])
    assert 15_000 < events < 40_000  # ~190 bytes a line
    assert partitions.choose_partitions([path]) == 1
    monkeypatch.setattr(partitions, "IN_MEMORY_EVENTS", 1_000)
    monkeypatch.setattr(partitions, "EVENTS_PER_PARTITION", 5_000)
    assert partitions.choose_partitions([path]) == -(-events // 5_000)


@pytest.mark.parametrize("given", ["0", "-2", "many", "5000"])
def test_a_bad_partitions_value_is_an_error_naming_it(
    histories: dict[str, Path], capsys: pytest.CaptureFixture[str], given: str
) -> None:
    code = cli.main(["backtest", str(histories["jsonl"]), "--definition", str(EXAMPLES[0]), "--partitions", given])
    assert code == 2
    assert f"--partitions {given}: must be 'auto' or a whole number" in capsys.readouterr().err


_TERMINATED = """
import os, signal, sys
from pqlflow.analysis import partitions
from pqlflow.qualify.definition import load_definition

def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a CI timeout sends, here mid-run
    raise AssertionError("still running after SIGTERM")

partitions.run_definition = terminated
partitions.run_backtest_partitioned([sys.argv[1]], [(load_definition(sys.argv[2]), "slack")], partitions=3)
"""


def test_spill_files_are_removed_when_the_process_is_terminated(histories: dict[str, Path], tmp_path: Path) -> None:
    # Given a partitioned backtest in a process of its own that gets SIGTERM while it runs its partitions
    import os
    import subprocess
    import sys

    slack = REPO / "examples/definitions/slack-messages.yaml"
    child = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", _TERMINATED, str(histories["jsonl"]), str(slack)],
        env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, check=False,
    )
    # Then it exits as terminated (128 + 15), and its spill directory is gone
    assert child.returncode == 143, child.stderr
    assert _scratch_dirs(tmp_path) == []
