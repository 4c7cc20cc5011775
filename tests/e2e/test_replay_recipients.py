"""Simulated recipients in a replay: engagement goes in through the deployed paths (SES events on the default
bus, the one-click unsubscribe link, the offers API) and journeys react to it as they would in AWS."""

from __future__ import annotations

from pathlib import Path

import pytest
from pqlflow.local.recipients import Rates

from tests.e2e.conftest import DEFINITION, read_jsonl, run
from tests.e2e.test_replay_journeys import POLICY, _history

EVERYONE_ENGAGES = Rates(email_open=1, email_click=1, email_unsubscribe=0, offer_view=1, offer_accept=1)
EVERYONE_UNSUBSCRIBES = Rates(email_open=0, email_click=0, email_unsubscribe=1, offer_view=0, offer_accept=0,
                              offer_dismiss=0)


def _replay(tmp: Path, rates: Rates) -> tuple[dict, Path]:
    (tmp / "definition.yaml").write_text(DEFINITION)
    (tmp / "policy.yaml").write_text(POLICY)
    out = tmp / "out"
    summary = run(_history().write(tmp / "history.jsonl"), out, tmp / "definition.yaml", tmp / "policy.yaml",
                  price_sample=0, simulate_recipients=rates)
    return summary, out


def _steps(out: Path) -> dict[str, list[tuple[int, str]]]:
    steps: dict[str, list[tuple[int, str]]] = {}
    for a in read_jsonl(out / "actions.jsonl"):
        if a["outcome"] == "send":
            steps.setdefault(a["account_id"], []).append((a["step"], a["channel"]))
    return steps


@pytest.fixture(scope="module")
def engaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    return _replay(tmp_path_factory.mktemp("engaged"), EVERYONE_ENGAGES)


def test_accepted_offers_stop_the_journeys_before_their_last_step(engaged):
    summary, out = engaged
    # Given every recipient opens and clicks every email and accepts every offer
    assert summary["simulated_recipients"]["offer accepted"] == 2
    # Then conv and full stop at their accepted offer (step 1): no demo invite on day 14
    assert _steps(out) == {"conv": [(0, "email"), (1, "offer")], "full": [(0, "email"), (1, "offer")],
                           "bigco": [(0, "rep_task"), (1, "email")]}
    events = summary["counts"]["pqlflow_events"]
    assert events["Offer Accepted"] == 2
    assert summary["counts"]["journeys_stopped"] == {"completed": 1, "offer_accepted": 2}
    # And every email came back delivered, opened and clicked through ses_events
    assert events["Email Delivered"] == events["Email Opened"] == events["Email Clicked"] == 3


def test_an_unsubscribe_from_the_first_email_stops_the_journey_at_its_next_step(tmp_path):
    summary, out = _replay(tmp_path, EVERYONE_UNSUBSCRIBES)
    # Given every recipient uses the one-click unsubscribe link of the first email they get
    assert summary["simulated_recipients"]["unsubscribed"] == 3  # conv's and full's step 0, bigco's step 1
    # Then conv and full get nothing after it, and bigco (unsubscribed at its last step) completes
    steps = _steps(out)
    assert steps["conv"] == [(0, "email")] and steps["full"] == [(0, "email")]
    assert summary["counts"]["journeys_stopped"] == {"completed": 1, "unsubscribed": 2}
