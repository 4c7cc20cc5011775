"""Ingest keeps a conversion's revenue on the usage item (a pseudo trait of paying accounts only), quarantines a
bad amount naming its field without losing the rest of the batch, and reads the same state under redelivery."""

from __future__ import annotations

import boto3
import pytest
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.store import DynamoUsageStore, read_usage
from pqlflow.ingest.usage import TrackingSpec
from pqlflow.kernel import clock

from functions.ingest import app
from tests.integration.ingest.test_ingest_hostile import NOW_MS, key_of, message, quarantined, sent, sqs_event_of
from tests.support.events import iso
from tests.support.lambda_context import LambdaContext

HOUR = 3_600_000


@pytest.fixture
def ingest(table_name):
    clock.set_source(lambda: NOW_MS / 1000)
    ddb = boto3.client("dynamodb")

    def run(bodies: list[str]):
        processor = UsageBatchProcessor(DynamoUsageStore(table_name, ddb), IngestConfig(spec=TrackingSpec()),
                                        clock.now_ms)
        return app.handler(sqs_event_of(bodies), LambdaContext(), processor=processor)

    return run


def test_a_subscription_keeps_its_revenue_and_a_cancellation_its_time_under_redelivery(ingest, table_name):
    # Given a subscription with Segment's mrr, then its cancellation, each delivered twice in two batches
    started = sent(message("s1", event="Subscription Started", timestamp=iso(NOW_MS - 3 * HOUR),
                           properties={"mrr": 99, "currency": "eur", "plan": "pro", "seats": 4}))
    cancelled = sent(message("c1", event="Subscription Cancelled", timestamp=iso(NOW_MS - HOUR), properties={}))
    assert ingest([started, started]) == {"batchItemFailures": []}
    assert ingest([cancelled, started, cancelled]) == {"batchItemFailures": []}
    # Then the usage state has the conversion's revenue fields and the cancellation, once
    usage = read_usage(boto3.client("dynamodb"), table_name, "acme")
    assert usage.last_conversion == (NOW_MS - 3 * HOUR, {"mrr": 99, "currency": "EUR", "plan": "pro"})
    assert usage.last_cancellation == (NOW_MS - HOUR, {})
    assert usage.count("Subscription Started") == 1 and usage.count("Subscription Cancelled") == 1
    assert not any(k.startswith("$") for k in usage.traits)


def test_an_order_after_the_subscription_keeps_the_subscriptions_mrr_in_one_batch_or_later(ingest, table_name):
    # Given a checkout that sends Subscription Started (mrr, plan) and Order Completed (revenue) in one batch,
    # and a one-off add-on order in a later batch (each redelivered, out of order)
    started = sent(message("s1", event="Subscription Started", timestamp=iso(NOW_MS - 3 * HOUR),
                           properties={"mrr": 49, "currency": "usd", "plan": "pro"}))
    order = sent(message("o1", event="Order Completed", timestamp=iso(NOW_MS - 3 * HOUR + 500),
                         properties={"revenue": 588, "currency": "usd"}))
    addon = sent(message("o2", event="Order Completed", timestamp=iso(NOW_MS - HOUR), properties={"revenue": 20}))
    assert ingest([order, started, order]) == {"batchItemFailures": []}
    assert ingest([addon, started, addon]) == {"batchItemFailures": []}
    # Then the latest conversion is the add-on, and the subscription is still the one with the mrr
    usage = read_usage(boto3.client("dynamodb"), table_name, "acme")
    assert usage.last_conversion == (NOW_MS - HOUR, {"revenue": 20})
    assert usage.last_subscription == {"mrr": 49, "currency": "USD", "plan": "pro"}
    assert not any(k.startswith("$") for k in usage.traits)


@pytest.mark.parametrize(("amount", "reason"), [
    ("lots", 'properties.mrr: revenue is not a non-negative number ("lots")'),
    (-5, "properties.mrr: revenue is not a non-negative number (-5)"),
])
def test_a_bad_amount_is_quarantined_naming_the_field_and_the_rest_of_the_batch_goes_through(
    ingest, table_name, amount, reason
):
    bad = sent(message("bad", event="Subscription Started", properties={"mrr": amount}))
    good = sent(message("fine"))
    assert ingest([bad, good]) == {"batchItemFailures": []}
    ddb = boto3.client("dynamodb")
    assert quarantined(ddb, table_name)[key_of(bad)]["reason"]["S"] == reason
    usage = read_usage(ddb, table_name, "acme")
    assert usage.count("Message Sent") == 1 and usage.converted_at_ms is None


def test_a_group_trait_named_like_the_pseudo_trait_is_not_kept(ingest, table_name):
    body = sent(message("g", type="group", event=None, groupId="acme", context={},
                        traits={"$conversion": "{\"mrr\": 1}", "plan": "free"}))
    assert ingest([body]) == {"batchItemFailures": []}
    usage = read_usage(boto3.client("dynamodb"), table_name, "acme")
    assert usage.trait("plan") == "free" and usage.last_conversion is None
