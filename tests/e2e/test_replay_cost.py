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
from pqlflow.local.batching import firehose_batches, sqs_batches
from pqlflow.local.pricing import Event, message_account, price_history, template_settings
from pqlflow.local.replay import _parse_time, run_replay, summarize

from tests.e2e.conftest import REPO, TEMPLATE

ACCOUNTS, EVENTS, SAMPLE = 10, 800, 4
PIPELINE = ("usage_lambda", "usage_dynamodb")


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


@pytest.fixture(scope="module", params=["firehose", "sqs"])
def transport(request, tmp_path_factory) -> tuple[str, Path]:
    """The template's own default transport (firehose), and the queue: a copy whose default is sqs."""
    if request.param == "firehose":
        return "firehose", TEMPLATE
    text = TEMPLATE.read_text()
    default = "    Default: firehose\n    AllowedValues: [firehose, sqs]\n"
    assert default in text
    path = tmp_path_factory.mktemp("sqs") / "template.yaml"
    path.write_text(text.replace(default, "    Default: sqs\n    AllowedValues: [firehose, sqs]\n"))
    return "sqs", path


@pytest.fixture(scope="module")
def faithful(history, transport):
    return price_history(history[1], template_settings(transport[1], REPO), sample=None)


def test_replay_prices_the_batches_aws_forms_within_ten_percent_of_the_faithful_figure(history, transport, faithful):
    path, events = history
    name, template = transport
    # When the history is replayed (its own steps are 6 hours of events) with a 4-account pricing sample
    result = run_replay([path], template=template, root=REPO, price_sample=SAMPLE)
    cost = summarize(result, {})["cost"]
    pipeline = cost["usage_pipeline"]
    # Then the estimate says how it priced ingest, on how many accounts, over the template's transport
    assert cost["usage_pricing"] == "as AWS batches"
    assert (pipeline["sampled_accounts"], pipeline["accounts"]) == (SAMPLE, ACCOUNTS)
    assert pipeline["sampled_events"] < EVENTS
    assert pipeline["transport"] == name
    # And its ingest invocations are the transport's batches of the whole history (Firehose: an object per
    # IngestBufferSeconds; SQS: the mapping's batches), not replay's steps
    settings = template_settings(template, REPO)
    if name == "firehose":
        batches = firehose_batches([e.arrival_ms for e in events], settings.firehose_interval, 5,
                                   [e.body_bytes for e in events])
        transport_services = ("Firehose", "S3")
        transport_lines = ("usage_firehose", "usage_s3", "usage_object_events")
    else:
        batches = sqs_batches([e.arrival_ms for e in events], settings.ingest_batch_size, settings.ingest_window,
                              [e.record_bytes for e in events])
        transport_services = ("SQS",)
        transport_lines = ("usage_sqs",)
    assert pipeline["ingest_batches"] == len(batches) == faithful.ingest_batches
    assert pipeline["ingest_batches"] >= 5 * result.counters["invocations"]["IngestFunction"]  # 7.8× / 10×
    # And the transport (SQS: sends, the poller's receives and deletes per batch; Firehose: its ingestion, an
    # S3 PUT and GET per object) is the faithful figure exactly
    for service, line in zip(transport_services, transport_lines, strict=False):
        exact_transport = faithful.bill.per_million(faithful.events, service)
        assert exact_transport > 0
        assert cost["lines"][line]["per_million_events"] == pytest.approx(exact_transport, rel=1e-9)
    # And DynamoDB and the whole usage pipeline are within 10% of the faithful figure on every account
    exact = {svc: faithful.bill.per_million(faithful.events, svc) for svc in ("Lambda", "DynamoDB")}
    assert cost["lines"]["usage_dynamodb"]["per_million_events"] == pytest.approx(exact["DynamoDB"], rel=0.10)
    estimated = sum(cost["lines"][line]["per_million_events"] for line in (*transport_lines, *PIPELINE))
    faithful_total = faithful.per_million - faithful.bill.per_million(faithful.events, "EventBridge") + sum(
        v for k, v in ((f"{ln.service} {ln.operation}", ln.cost(faithful.bill.prices) / faithful.events * 1e6)
                       for ln in faithful.bill.lines.values()) if k.startswith("EventBridge Object Created"))
    assert estimated == pytest.approx(faithful_total, rel=0.10)
    # And the figure the user reads includes it
    assert cost["pqlflow_per_million"] >= estimated


def test_without_a_pricing_run_the_estimate_says_it_priced_replays_own_batches(history):
    result = run_replay([history[0]], template=TEMPLATE, root=REPO, price_sample=0)
    cost = summarize(result, {})["cost"]
    assert cost["usage_pricing"] == "replay batches"
    assert cost["usage_pipeline"] is None
    assert "usage_dynamodb" not in cost["lines"]
