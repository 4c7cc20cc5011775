"""The speed bench compares `pqlflow backtest` with DuckDB on the same question: the bench's DuckDB query
(bench/backtest_speed_bench.py) gives, account by account, the lifetime count and the moment of crossing the
threshold that the backtest of a one-rule count definition finds, so the ratio it prints is like for like."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pqlflow.analysis.backtest import run_backtest
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.qualify.definition import load_definition

from bench.backtest_speed_bench import lifetime_and_crossing

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
