"""`pqlflow discover` on a history read one partition of accounts at a time (`--partitions`) gives exactly
the result of the in-memory run: the same ranked table, proposal, held-out backtest and bad-line report."""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pqlflow import cli
from pqlflow.analysis.discover import run_discover
from pqlflow.analysis.sample import Sample, SampleConfig

NOW_S = datetime(2026, 6, 1, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 accounts over 60 days with redelivered copies, and two bad lines."""
    config = SampleConfig(seed=22, accounts=400, days=60, start=date(2026, 1, 5), events=100_000, duplicates=0.02)
    lines = list(Sample(config).lines())
    path = tmp_path_factory.mktemp("discover") / "history.jsonl"
    path.write_text("\n".join([*lines[:50], "{not json", '{"type":"track"}', *lines[50:]]) + "\n")
    return path


def _without_timings(value: Any) -> Any:
    """The output without its timings (every "seconds"), all else as it is."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_partitioned_discover_gives_the_in_memory_result(history: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # When the history is discovered in memory and in 4 partitions
    in_memory = _without_timings(run_discover([history], now_s=NOW_S).to_dict(top=1000))
    spilled = _without_timings(run_discover([history], now_s=NOW_S, partitions=4).to_dict(top=1000))
    # Then it found something worth comparing, on a history with duplicates and bad lines
    assert in_memory["history"]["duplicates"] > 1000 and in_memory["history"]["bad_lines"] == 2
    assert len(in_memory["signals"]) > 20 and in_memory["proposal"]["heldout_backtest"]["pqls"] > 0
    # and the two results are identical, down to the order of every list; no spill file is left
    assert spilled == in_memory
    assert list(tmp_path.glob("pqlflow-backtest-*")) == []


@pytest.mark.parametrize("conversions", ["Nope", "Plan Upgraded,Nope"])
def test_an_unknown_conversion_is_the_same_error_partitioned(history: Path, capsys, conversions: str) -> None:
    errors = []
    for n in ("1", "3"):
        code = cli.main(["discover", str(history), "--conversions", conversions, "--partitions", n])
        errors.append((code, capsys.readouterr().err))
    assert errors[0] == errors[1]
    assert errors[0][0] == 2 and "no such event in the history: " in errors[0][1] and "'Nope'" in errors[0][1]
