"""A customer's life through the real qualify handler on moto: revenue on Account Converted, Account Churned once
per churn (a cancellation, or the plan trait back to free), a win-back converting again, under redelivery and a
crash between the state write and PutEvents; and usage items and state items of the layout before all this."""

from __future__ import annotations

from typing import Any

import boto3
from pqlflow.contracts.bus import EventPublisher, PublishError
from pqlflow.ingest.item import decode_image, encode_usage
from pqlflow.ingest.usage import DAY_MS
from pqlflow.qualify.store import DefinitionStore
from pqlflow.qualify.transitions import PqlStateStore, Qualifier

from functions.qualify import app
from tests.integration.qualify import test_qualify as base
from tests.integration.qualify.test_qualify import of_type, published_stream, stream_event
from tests.support.lambda_context import LambdaContext

bus_events = base.bus_events  # the fixtures of the qualify tests: the real handler, the bus read back
qualify = base.qualify


def _qualified(table_name: str, qualify: Any) -> Any:
    """The slack definition (`plan` in pro/business/enterprise means paying), acme just qualified."""
    stream = published_stream(table_name, "slack-messages.yaml", "Message Sent", 1999)
    qualify(stream.change(stream.track("Message Sent")))
    return stream


def _converted(stream: Any, qualify: Any, **properties: Any) -> None:
    qualify(stream.change(stream.track("Subscription Started", at_ms=stream.clock_ms + DAY_MS, **properties)))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["detail-type"] for e in events]


def test_account_converted_carries_the_revenue_the_sender_gave(table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given a qualified account
    stream = _qualified(table_name, qualify)
    # When it starts a subscription with Segment's mrr, currency and plan (and the record is redelivered)
    record = stream.change(stream.track("Subscription Started", at_ms=stream.clock_ms + DAY_MS, mrr=49.5,
                                        currency="usd", plan="pro", seats=3))
    qualify(record)
    qualify(record)
    # Then one Account Converted with the revenue, currency upper-cased
    converted = of_type(bus_events(), "Account Converted")
    assert len(converted) == 1
    assert {k: converted[0][k] for k in ("mrr", "revenue", "currency", "plan")} == {
        "mrr": 49.5, "revenue": None, "currency": "USD", "plan": "pro"}
    assert converted[0]["seconds_since_qualified"] == 86_400.0


def test_an_order_completed_conversion_carries_its_one_off_revenue(table_name: str, qualify: Any,
                                                                   bus_events: Any) -> None:
    stream = _qualified(table_name, qualify)
    qualify(stream.change(stream.track("Order Completed", revenue=199, currency="EUR")))
    (converted,) = of_type(bus_events(), "Account Converted")
    assert (converted["revenue"], converted["mrr"], converted["currency"]) == (199.0, None, "EUR")


def test_a_checkout_of_a_subscription_and_an_order_in_one_write_carries_both(table_name: str, qualify: Any,
                                                                            bus_events: Any) -> None:
    # Given a qualified account whose checkout sends Subscription Started and Order Completed together
    stream = _qualified(table_name, qualify)
    at = stream.clock_ms + DAY_MS
    qualify(stream.change(stream.track("Subscription Started", at_ms=at, mrr=49, currency="USD", plan="pro"),
                          stream.track("Order Completed", at_ms=at + 300, revenue=588, currency="USD")))
    # Then Account Converted has the subscription's mrr and plan and the order's revenue
    (converted,) = of_type(bus_events(), "Account Converted")
    assert {k: converted[k] for k in ("mrr", "revenue", "currency", "plan")} == {
        "mrr": 49.0, "revenue": 588.0, "currency": "USD", "plan": "pro"}


def test_a_churn_after_a_one_off_order_names_the_subscriptions_mrr(table_name: str, qualify: Any,
                                                                  bus_events: Any) -> None:
    # Given a customer at 49 a month who buys a one-off add-on the next day
    stream = _qualified(table_name, qualify)
    _converted(stream, qualify, mrr=49, plan="pro")
    qualify(stream.change(stream.track("Order Completed", at_ms=stream.clock_ms + 2 * DAY_MS, revenue=20)))
    # When it cancels
    qualify(stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + 3 * DAY_MS)))
    # Then Account Churned names the subscription's mrr as lost, not the add-on's none
    (churned,) = of_type(bus_events(), "Account Churned")
    assert churned["mrr"] == 49.0


def test_a_cancellation_churns_the_customer_once_under_redelivery(table_name: str, qualify: Any,
                                                                  bus_events: Any) -> None:
    # Given a customer paying 49 a month
    stream = _qualified(table_name, qualify)
    _converted(stream, qualify, mrr=49)
    # When it cancels, the record is delivered three times, and usage goes on after
    cancelled = stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + 20 * DAY_MS))
    qualify(cancelled, cancelled)
    qualify(cancelled)
    qualify(stream.change(stream.track("Message Sent")))
    # Then one Account Churned, naming the reason, the conversion and the mrr lost
    events = bus_events()
    assert types(events) == ["PQL Qualified", "Account Converted", "Account Churned"]
    churned = events[2]["detail"]
    assert churned["reason"] == "subscription_cancelled"
    assert churned["mrr"] == 49.0
    assert churned["converted_at"] == events[1]["detail"]["converted_at"]


def test_the_plan_trait_back_to_free_churns_the_customer(table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given a customer whose group call says plan pro after converting (still paying: no churn)
    stream = _qualified(table_name, qualify)
    _converted(stream, qualify, mrr=20)
    qualify(stream.change(stream.message("group", traits={"plan": "pro"})))
    assert types(bus_events()) == ["PQL Qualified", "Account Converted"]
    # When a later group call says plan free
    record = stream.change(stream.message("group", at_ms=stream.clock_ms + 10 * DAY_MS, traits={"plan": "free"}))
    qualify(record)
    qualify(record)
    # Then it churned once, by downgrade
    churned = of_type(bus_events(), "Account Churned")
    assert [c["reason"] for c in churned] == ["plan_downgraded"]
    assert churned[0]["mrr"] == 20.0


def test_a_churned_customer_who_subscribes_again_is_reported_again_then_can_churn_again(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    stream = _qualified(table_name, qualify)
    _converted(stream, qualify, mrr=10)
    qualify(stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + 5 * DAY_MS)))
    # When it subscribes again (a win-back), redelivered
    again = stream.change(stream.track("Subscription Started", at_ms=stream.clock_ms + 5 * DAY_MS, mrr=30))
    qualify(again)
    qualify(again)
    # and cancels again
    qualify(stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + 5 * DAY_MS)))
    # Then each change was reported once; the win-back names no qualification (the PQL's conversion was the first)
    events = bus_events()
    assert types(events) == ["PQL Qualified", "Account Converted", "Account Churned", "Account Converted",
                             "Account Churned"]
    win_back = events[3]["detail"]
    assert (win_back["mrr"], win_back["qualified_at"], win_back["definition"]) == (30.0, None, None)
    assert events[4]["detail"]["mrr"] == 30.0
    assert events[4]["detail"]["converted_at"] == win_back["converted_at"]
    # and it never became a PQL again
    assert len(of_type(events, "PQL Qualified")) == 1


def test_a_crash_between_the_churn_write_and_put_events_is_repaired_by_redelivery(
    table_name: str, bus_name: str, bus_events: Any, qualify: Any
) -> None:
    real = EventPublisher(bus_name, sleep=lambda _: None)

    class FailingOnChurn:
        failed = False

        def publish(self, details: Any) -> int:
            if not self.failed and details[0].DETAIL_TYPE == "Account Churned":
                self.failed = True
                raise PublishError([{}], ["InternalFailure"])
            return real.publish(details)

    qualifier = Qualifier(DefinitionStore(table_name), PqlStateStore(table_name), FailingOnChurn(), decode_image)
    stream = _qualified(table_name, qualify)
    _converted(stream, qualify, mrr=10)
    record = stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + DAY_MS))
    # When publishing the churn fails after its state write, and the record is redelivered twice
    first = app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)
    assert first["batchItemFailures"]
    app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)
    app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)
    # Then Account Churned went out exactly once
    assert len(of_type(bus_events(), "Account Churned")) == 1


def test_items_of_the_layout_before_revenue_keep_working(table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given a usage item written before revenue was kept (a conversion time `cv`, no pseudo traits)...
    stream = _qualified(table_name, qualify)
    record = stream.change(stream.track("Subscription Started", at_ms=stream.clock_ms + DAY_MS, mrr=10))
    image = record["dynamodb"]["NewImage"]
    image["ta"]["SS"] = [e for e in image["ta"]["SS"] if "$conversion" not in e and "$subscription" not in e]
    if not image["ta"]["SS"]:
        del image["ta"]
    assert "cv" in image
    # When qualify judges it
    qualify(record)
    # Then the conversion is reported, without revenue
    (converted,) = of_type(bus_events(), "Account Converted")
    assert converted["mrr"] is None and converted["seconds_since_qualified"] == 86_400.0
    # ...and a state item of that layout (converted, no converted_ms) churns on a later cancellation
    ddb = boto3.client("dynamodb")
    key = {"pk": {"S": "A#acme"}, "sk": {"S": "PQL"}}
    ddb.update_item(TableName=table_name, Key=key, UpdateExpression="REMOVE converted_ms")
    qualify(stream.change(stream.track("Subscription Cancelled", at_ms=stream.clock_ms + DAY_MS)))
    assert [c["reason"] for c in of_type(bus_events(), "Account Churned")] == ["subscription_cancelled"]


def test_the_usage_item_keeps_revenue_only_for_accounts_that_pay(table_name: str, qualify: Any) -> None:
    # Given an account that never converts and one that does
    stream = _qualified(table_name, qualify)
    free = encode_usage(stream.fold(stream.track("Message Sent", account="other")), 0)
    paid = encode_usage(stream.fold(stream.track("Subscription Started", mrr=49, currency="USD")), 0)
    # Then only the paying one carries the pseudo trait, and it reads back
    assert not any("$conversion" in e for e in free.get("ta", {}).get("SS", []))
    assert decode_image(paid).last_conversion[1] == {"mrr": 49, "currency": "USD"}
    assert "$conversion" not in decode_image(paid).traits
