"""replay's cost estimate prices the batches AWS would form, and agrees with the faithful figure.

The faithful figure is `pqlflow.local.pricing.price_history` on every account of the history: the real ingest
and qualify handlers in the batches the template's event source mappings form at the events' arrival times,
every write billed by its item sizes. replay prices a sample of accounts that way and scales; its own
coarse batches (hours of events each) are never what it prices.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pqlflow.local.batching import sqs_batches
from pqlflow.local.pricing import Event, message_account, price_history, template_settings
from pqlflow.local.replay import _parse_time, run_replay, summarize

from tests.e2e.conftest import REPO, TEMPLATE

ACCOUNTS, EVENTS, SAMPLE = 10, 800, 4
PIPELINE = ("usage_sqs", "usage_lambda", "usage_dynamodb")


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, list[Event]]:
    """The demo history's first 10 accounts, its first 800 of their events (arrival = event time)."""
    lines = [line for line in (REPO / "events" / "demo" / "history.jsonl").read_text().splitlines() if line]
    order: dict[str, None] = {}
    for line in lines:
        order.setdefault(message_account(json.loads(line)), None)
    keep = set(list(order)[:ACCOUNTS])
    picked = [line for line in lines if message_account(json.loads(line)) in keep]
    picked.sort(key=lambda line: _parse_time(json.loads(line)["timestamp"]) or 0)
    picked = picked[:EVENTS]
    path = tmp_path_factory.mktemp("cost") / "history.jsonl"
    path.write_text("\n".join(picked) + "\n")
    events = [Event(_parse_time(json.loads(line)["timestamp"]) or 0, json.loads(line)) for line in picked]
    return path, events


@pytest.fixture(scope="module")
def faithful(history):
    return price_history(history[1], template_settings(TEMPLATE, REPO), sample=None)


def test_replay_prices_the_batches_aws_forms_within_ten_percent_of_the_faithful_figure(history, faithful):
    path, events = history
    # When the history is replayed (its own steps are 6 hours of events) with a 4-account pricing sample
    result = run_replay([path], template=TEMPLATE, root=REPO, price_sample=SAMPLE)
    cost = summarize(result, {})["cost"]
    pipeline = cost["usage_pipeline"]
    # Then the estimate says how it priced ingest, on how many accounts
    assert cost["usage_pricing"] == "as AWS batches"
    assert (pipeline["sampled_accounts"], pipeline["accounts"]) == (SAMPLE, ACCOUNTS)
    assert pipeline["sampled_events"] < EVENTS
    # And its ingest invocations are the template mapping's batches of the whole history, not replay's steps
    settings = template_settings(TEMPLATE, REPO)
    batches = sqs_batches([e.arrival_ms for e in events], settings.ingest_batch_size, settings.ingest_window,
                          [e.record_bytes for e in events])
    assert pipeline["ingest_batches"] == len(batches) == faithful.ingest_batches
    assert pipeline["ingest_batches"] >= 10 * result.counters["invocations"]["IngestFunction"]
    # And SQS (sends, the poller's receives and deletes per batch) is the faithful figure exactly
    exact = {svc: faithful.bill.per_million(faithful.events, svc) for svc in ("SQS", "Lambda", "DynamoDB")}
    assert cost["lines"]["usage_sqs"]["per_million_events"] == pytest.approx(exact["SQS"], rel=1e-9)
    # And DynamoDB and the whole usage pipeline are within 10% of the faithful figure on every account
    assert cost["lines"]["usage_dynamodb"]["per_million_events"] == pytest.approx(exact["DynamoDB"], rel=0.10)
    estimated = sum(cost["lines"][name]["per_million_events"] for name in PIPELINE)
    assert estimated == pytest.approx(sum(exact.values()), rel=0.10)
    # And the figure the user reads includes it
    assert cost["pqlflow_per_million"] >= estimated


def test_without_a_pricing_run_the_estimate_says_it_priced_replays_own_batches(history):
    result = run_replay([history[0]], template=TEMPLATE, root=REPO, price_sample=0)
    cost = summarize(result, {})["cost"]
    assert cost["usage_pricing"] == "replay batches"
    assert cost["usage_pipeline"] is None
    assert "usage_dynamodb" not in cost["lines"]
