"""Backtest and replay agree on which accounts qualify, and when, for the same history and definition.

Replay runs the deployed code path (ingest aggregates a batch per account, qualify evaluates the stored
state at its last event), so its qualification time is the last event of that account in the step that
crossed the threshold: never earlier than the backtest's, and within one step of it.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest
from pqlflow.analysis.backtest import run_backtest
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.local.replay import _parse_time, run_replay, transitions_of
from pqlflow.qualify.definition import load_definition

from tests.e2e.conftest import REPO, TEMPLATE

STEP_SECONDS = 3600


@pytest.mark.parametrize("definition", ["scoring.yaml", "team-velocity.yaml"])
def test_backtest_and_replay_qualify_the_same_accounts_at_the_same_time(tmp_path, definition):
    # Given a synthetic history and one of the example definitions
    history = tmp_path / "history.jsonl"
    sample = Sample(SampleConfig(seed=3, accounts=8, days=30, start=date(2026, 9, 1), events=900))
    history.write_text("".join(line + "\n" for line in sample.lines()))
    path = REPO / "examples" / "definitions" / definition
    # When the backtest and a replay run it
    run = run_backtest([history], [(load_definition(path), str(path))]).runs[0]
    result = run_replay([history], template=TEMPLATE, definition=path, step_seconds=STEP_SECONDS)
    # Then the same accounts qualify...
    backtest = {s.account_id: s.qualified_at_ms for s in run.subjects if s.qualified_at_ms is not None}
    replayed: dict[str, int] = {}
    transitions = transitions_of(result)
    for t in transitions:
        if t["type"] == "PQL Qualified":
            replayed.setdefault(t["account_id"], _parse_time(t["at"]))
    assert sorted(replayed) == sorted(backtest)
    assert backtest, "the history should produce some PQLs"
    # ...at the same time, up to the step replay feeds at once
    for account, at in backtest.items():
        assert 0 <= replayed[account] - at < STEP_SECONDS * 1000, account
    # And they make the same number of qualifications and disqualifications
    kinds = Counter(kind for kind, _ in run.transitions)
    replay_kinds = Counter(t["type"] for t in transitions)
    assert (replay_kinds["PQL Qualified"], replay_kinds["PQL Disqualified"]) == (
        kinds["qualified"], kinds["disqualified"]
    )
