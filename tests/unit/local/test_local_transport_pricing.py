"""What carrying events from EventBridge to ingest costs on each transport the cost bench compares
(`pqlflow.local.pricing.transport_batches` / `add_transport`): counts and list prices, no AWS."""

from __future__ import annotations

import pytest
from pqlflow.local.billing import Bill
from pqlflow.local.cost import PRICES
from pqlflow.local.pricing import Event, Settings, add_transport, template_settings, transport_batches

from tests.support.template import ROOT

HOUR_MS = 3_600_000


def events(n: int, span_ms: int) -> list[Event]:
    return [Event(i * span_ms // n, {"type": "track", "event": "Signed In", "messageId": f"m-{i}",
                                     "userId": "u-1", "context": {"groupId": f"acct-{i % 50}"}}) for i in range(n)]


@pytest.fixture(scope="module")
def settings() -> Settings:
    return template_settings(ROOT / "template.yaml", ROOT)


def test_firehose_bills_every_record_as_five_kilobytes_and_one_object_per_buffer(settings: Settings) -> None:
    evs = events(1_200, HOUR_MS)  # one event every 3 s for an hour
    assert all(e.body_bytes < 1024 for e in evs)

    batches = transport_batches("firehose", evs, settings, firehose_interval=300, firehose_mb=5)
    bill = Bill()
    add_transport(bill, "firehose", evs, batches)

    assert len(batches) == 12  # one object every five minutes
    assert bill.lines[("Firehose", "ingestion (EventBridge target, 5 KB/record)")].units == 1_200 * 5 * 1024 / 1024**3
    assert bill.lines[("S3", "PutObject (Firehose delivery)")].units == 12
    assert bill.lines[("EventBridge", "Object Created (S3, per object)")].units == 12  # the event invoking ingest
    assert ("S3", "GetObject (ingest)") not in bill.lines  # the function's own request: metered where it runs
    per_million = bill.per_million(len(evs), "Firehose")
    assert per_million == pytest.approx(PRICES["firehose_per_gb_ingested"] * 5 * 1024 / 1024**3 * 1e6)  # $0.138
    assert "SQS" not in {service for service, _ in bill.lines}


def test_kinesis_is_billed_by_the_shard_hour_whatever_flows(settings: Settings) -> None:
    quiet, busy = events(3_600, HOUR_MS), events(5_000, 1_000)  # 1/s for an hour, and 5,000/s for a second

    quiet_bill, busy_bill = Bill(), Bill()
    add_transport(quiet_bill, "kinesis", quiet, transport_batches("kinesis", quiet, settings), span_ms=HOUR_MS)
    add_transport(busy_bill, "kinesis", busy, transport_batches("kinesis", busy, settings), span_ms=1_000)

    (quiet_line,) = [v for (s, op), v in quiet_bill.lines.items() if op.startswith("shard-hours")]
    (busy_line,) = [v for (s, op), v in busy_bill.lines.items() if op.startswith("shard-hours")]
    assert quiet_line.units == pytest.approx(1.0) and "(1 shard," in quiet_line.operation
    assert "(5 shards," in busy_line.operation  # 5,000 records/s need five shards of 1,000
    # an hour of one shard over 3,600 events: $0.015 / 3,600 per event = $4.17/M, the fixed cost dominates
    assert quiet_bill.per_million(len(quiet), "Kinesis") == pytest.approx(
        (PRICES["kinesis_per_shard_hour"] + 3_600 * PRICES["kinesis_per_million_put_units"] / 1e6) / 3_600 * 1e6)


def test_a_lambda_target_is_one_invocation_per_event_and_no_transport_line(settings: Settings) -> None:
    evs = events(100, 1_000)  # 100 events within a second

    batches = transport_batches("lambda", evs, settings)
    bill = Bill()
    add_transport(bill, "lambda", evs, batches)

    assert [b.size for b in batches] == [1] * 100
    assert bill.lines == {}
    with pytest.raises(ValueError, match="transport 'sns'"):
        transport_batches("sns", evs, settings)
