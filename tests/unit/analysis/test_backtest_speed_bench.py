"""The speed bench compares `pqlflow backtest` with DuckDB on the same question: the bench's DuckDB query
(bench/backtest_speed_bench.py) gives, account by account, the lifetime count and the moment of crossing the
threshold that the backtest of a one-rule count definition finds, so the ratio it prints is like for like."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import msgspec
import pytest
from pqlflow.analysis.backtest import run_backtest
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.qualify.definition import load_definition

from bench.backtest_speed_bench import account_lists, floor_strict_json, lifetime_and_crossing

NOW_S = 2_000_000_000
THRESHOLD = 60

DEFINITION = f"""
name: messages-{THRESHOLD}
version: 1
signals:
  messages:
    count: Message Sent
qualify:
  signal: messages
  gte: {THRESHOLD}
"""


def test_the_benchs_duckdb_query_answers_what_the_backtest_of_a_one_rule_definition_answers(tmp_path: Path) -> None:
    # Given a sample history (no redelivered copies: the query does not deduplicate) and a one-rule definition
    sample = Sample(SampleConfig(seed=3, accounts=60, days=40, start=date(2026, 1, 5), events=15_000))
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(sample.lines()) + "\n")
    definition = tmp_path / "messages.yaml"
    definition.write_text(DEFINITION)
    # When the backtest runs it, and DuckDB runs the bench's query on the same file
    result = run_backtest([history], [(load_definition(definition), definition.name)], now_s=NOW_S)
    duck = {account: (lifetime, crossed) for account, lifetime, crossed in lifetime_and_crossing(history,
                                                                                                  threshold=THRESHOLD)}
    # Then, for every account the backtest follows to the end (a conversion ends its fold), both find the same
    # lifetime count and the same moment of crossing the threshold; and both answers are non-trivial
    followed = [s for s in result.runs[0].subjects if s.converted_at_ms is None]
    answers = {s.account_id: (int(s.records[0][-1][1]) if s.records[0] else 0, s.qualified_at_ms) for s in followed}
    assert sum(1 for count, _ in answers.values() if count) >= 20
    assert sum(1 for _, crossed in answers.values() if crossed is not None) >= 5
    assert sum(1 for count, crossed in answers.values() if count and crossed is None) >= 5
    assert {a: duck.get(a, (0, None)) for a in answers} == answers


def test_the_per_account_floor_gathers_what_the_fold_reads(tmp_path: Path) -> None:
    # Given a sample history with some events delivered twice, and a one-rule definition
    sample = Sample(SampleConfig(seed=4, accounts=40, days=30, start=date(2026, 1, 5), events=8_000, duplicates=0.05))
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(sample.lines()) + "\n")
    definition = tmp_path / "messages.yaml"
    definition.write_text(DEFINITION)
    # When the backtest runs it, and the bench's per-account floor reads the same file
    result = run_backtest([history], [(load_definition(definition), definition.name)], now_s=NOW_S)
    lists = {account: rest for account, *rest in account_lists(history)}
    # Then the floor sees every account the backtest follows, with its first and last event and, once the
    # redelivered copies are counted once, as many events; and the sorted times of the counted event (copies
    # included: that dedupe is left to the fold), the very times the backtest counted
    assert result.history.duplicates > 0
    subjects = result.runs[0].subjects
    assert sorted(lists) == sorted(s.account_id for s in subjects)
    copied = 0
    for s in subjects:
        group = result.history.groups[s.account_id]
        first, last, distinct, times = lists[s.account_id]
        times = times or []
        assert (first, last, distinct) == (s.first_ms, s.last_ms, len(group))
        counted = [r[0] for r in group if r[3] == "track" and r[6] == "Message Sent"]
        assert sorted(times) == times and set(times) == set(counted)
        copied += len(times) - len(counted)
    assert copied > 0


@pytest.mark.parametrize("bad", ['{"type": "track", "n": NaN}', '{"type": "track", "n": [1, 2,]}', '{"type": ,}'])
def test_the_strict_json_floor_refuses_what_duckdb_lets_through(tmp_path: Path, bad: str) -> None:
    good = '{"type": "track", "n": 1}\n'
    history = tmp_path / "h.jsonl"
    history.write_text(good * 3)
    assert floor_strict_json(history) == 3
    history.write_text(good + bad + "\n" + good.rstrip("\n"))  # a last line without its newline is still read
    with pytest.raises(msgspec.DecodeError):
        floor_strict_json(history)
