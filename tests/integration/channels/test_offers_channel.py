"""The offers function on moto: one offer per action however often it is delivered, and at most one
live offer per account and offer type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.channels.offers.offer import load_catalog
from pqlflow.channels.offers.store import OfferStore
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError

from functions.offers.app import handler
from tests.support.channels import offer_action, pqlflow_event
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

ROOT = Path(__file__).resolve().parents[3]
CATALOG = load_catalog(ROOT / "examples" / "offers" / "catalog.yaml")
NOW = 1_800_000_000.0
DAY = 86_400


def user_items(table: str, user: str) -> list[dict[str, Any]]:
    resp = boto3.client("dynamodb").query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"U#{user}"}},
    )
    return resp["Items"]


@pytest.fixture
def store(table_name: str) -> OfferStore:
    clock.set_source(lambda: NOW)
    return OfferStore(table_name)


def deliver(event: dict[str, Any], store: OfferStore) -> dict[str, Any]:
    return handler(event, LambdaContext(), store=store, catalog=CATALOG)


def test_redelivered_action_makes_one_offer(store, table_name):
    # Given one Nurture Action delivered three times (EventBridge is at-least-once)
    event = pqlflow_event(offer_action("act-1", "acct-1", "user-a", "pro-discount-20"))

    # When the offers function handles every copy
    results = [deliver(event, store) for _ in range(3)]

    # Then the user has exactly one offer, and the copies were recognised as such
    assert [r["outcome"] for r in results] == ["created", "duplicate", "duplicate"]
    items = user_items(table_name, "user-a")
    assert len(items) == 1
    assert items[0]["kind"]["S"] == "offer"
    assert int(items[0]["expires_at"]["N"]) == int(NOW) + 7 * DAY  # TTL at the offer's expiry


def test_one_live_offer_per_account_and_type(store):
    # Given an active discount for the account
    deliver(pqlflow_event(offer_action("act-1", "acct-1", "user-a", "pro-discount-20")), store)

    # When another discount (a different action, even for a teammate) and a trial extension arrive
    second = deliver(pqlflow_event(offer_action("act-2", "acct-1", "user-b", "annual-discount-15")), store)
    trial = deliver(pqlflow_event(offer_action("act-3", "acct-1", "user-b", "trial-extension-14")), store)

    # Then the second discount is refused and the trial goes through
    assert second["outcome"] == "locked"
    assert trial["outcome"] == "created"
    assert [o.kind for o in store.list_for_user("user-b")] == ["extended_trial"]

    # And another account is not affected
    other = deliver(pqlflow_event(offer_action("act-4", "acct-2", "user-c", "pro-discount-20")), store)
    assert other["outcome"] == "created"


def test_a_dismissed_or_expired_offer_frees_its_type(store):
    # Given an active discount that the user dismisses
    deliver(pqlflow_event(offer_action("act-1", "acct-1", "user-a", "pro-discount-20")), store)
    (first,) = store.list_for_user("user-a")
    assert store.dismiss(first, NOW + 60)

    # When a new discount comes, it is created
    assert (
        deliver(pqlflow_event(offer_action("act-2", "acct-1", "user-a", "annual-discount-15")), store)["outcome"]
        == "created"
    )

    # And once that one has expired (valid 14 days), a third is allowed too
    clock.set_source(lambda: NOW + 15 * DAY)
    assert (
        deliver(pqlflow_event(offer_action("act-3", "acct-1", "user-a", "pro-discount-20")), store)["outcome"]
        == "created"
    )


def test_other_channels_and_outcomes_are_ignored(store, table_name):
    email = offer_action("act-1", "acct-1", "user-a", "pro-discount-20") | {"channel": "email"}
    holdout = offer_action("act-2", "acct-1", "user-a", "pro-discount-20") | {"outcome": "holdout"}
    assert deliver(pqlflow_event(email), store)["outcome"] == "ignored"
    assert deliver(pqlflow_event(holdout), store)["outcome"] == "ignored"
    assert user_items(table_name, "user-a") == []


def test_unknown_offer_key_fails_loudly(store):
    with pytest.raises(UsageError, match="'black-friday' is not in catalog"):
        deliver(pqlflow_event(offer_action("act-1", "acct-1", "user-a", "black-friday")), store)


def test_action_without_any_user_makes_no_offer(store, table_name):
    detail = offer_action("act-1", "acct-1", "user-a", "pro-discount-20") | {"recipient_user_id": None}
    assert deliver(pqlflow_event(detail), store)["outcome"] == "no_recipient"


def test_handler_reads_its_settings_from_the_environment(table_name, monkeypatch):
    # Given the deployed configuration
    import functions.offers.app as app

    monkeypatch.setenv("OFFER_CATALOG_FILE", str(ROOT / "examples" / "offers" / "catalog.yaml"))
    for cached in (app.settings, app._default_store, app._default_catalog):
        cached.cache_clear()
    clock.set_source(lambda: NOW)

    # When it runs with no injected collaborators
    result = app.handler(pqlflow_event(offer_action("act-9", "acct-9", "user-z", "unlock-sso")), LambdaContext())

    # Then the offer is in the table named by TABLE_NAME
    assert result["outcome"] == "created"
    assert len(user_items(table_name, "user-z")) == 1
    for cached in (app.settings, app._default_store, app._default_catalog):
        cached.cache_clear()


def test_missing_setting_is_named(monkeypatch):
    import functions.offers.app as app

    app.settings.cache_clear()
    monkeypatch.delenv("TABLE_NAME", raising=False)
    with pytest.raises(RuntimeError, match="TABLE_NAME"):
        app.settings()
    app.settings.cache_clear()


def test_the_deployed_catalog_is_the_one_next_to_the_function(monkeypatch):
    import functions.offers.app as app

    app.settings.cache_clear()
    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.delenv("OFFER_CATALOG_FILE", raising=False)
    path = app.settings().catalog_path()
    assert path == ROOT / "functions" / "offers" / "catalog.yaml"
    assert load_catalog(path).offers  # it loads
    app.settings.cache_clear()
