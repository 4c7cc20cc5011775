"""Offer catalog and the pure rules for showing, accepting and dismissing in-app offers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pqlflow.channels.offers.offer import (
    decide_accept,
    decide_dismiss,
    effective_status,
    is_visible,
    load_catalog,
    make_offer,
    offer_id_for,
    parse_catalog,
    recipient_of,
)
from pqlflow.contracts.emitted import NurtureAction, Reason
from pqlflow.kernel.errors import UsageError

ROOT = Path(__file__).resolve().parents[3]
CATALOG = ROOT / "examples" / "offers" / "catalog.yaml"
NOW = 1_800_000_000.0
DAY = 86_400


def action(**overrides) -> NurtureAction:
    fields = {
        "action_id": "act-1",
        "transition_id": "tr-1",
        "account_id": "acct-1",
        "channel": "offer",
        "offer": "pro-discount-20",
        "recipient_user_id": "user-a",
        "touch": "low",
        "reasons": [
            Reason(code="limit.messages", text="2,000 messages: the free plan's limit", kind="limit")
        ],
    }
    return NurtureAction(**(fields | overrides))


def test_example_catalog_has_every_kind_of_incentive():
    # Given the shipped catalog
    catalog = load_catalog(CATALOG)

    # Then it offers a discount, an extended trial and a premium feature, each with its terms
    kinds = {spec.kind for spec in catalog.offers.values()}
    assert kinds == {"discount", "extended_trial", "premium_feature"}
    discount = catalog.spec("pro-discount-20")
    assert (discount.percent, discount.duration_months, discount.valid_for_days) == (20, 3, 7)


def test_catalog_error_names_the_file_and_field(tmp_path):
    # Given a discount over 100%
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "offers:\n  big:\n    kind: discount\n    title: Big\n    percent: 150\n"
        "    duration_months: 1\n    valid_for_days: 3\n"
    )

    # When it is loaded / Then the error says where
    with pytest.raises(UsageError, match=r"catalog.yaml: field offers\.big\.discount\.percent"):
        load_catalog(path)


def test_catalog_rejects_unknown_kind_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match="offers.x"):
        parse_catalog({"offers": {"x": {"kind": "coupon", "title": "t", "valid_for_days": 1}}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("offers: [\n")
    with pytest.raises(UsageError, match=r"bad.yaml line \d+: invalid YAML"):
        load_catalog(bad)


def test_unknown_offer_key_names_the_known_ones():
    catalog = load_catalog(CATALOG)
    with pytest.raises(UsageError, match="'nope' is not in catalog 'default'.*pro-discount-20"):
        catalog.spec("nope")


def test_offer_expires_after_its_validity_and_is_then_hidden():
    # Given an offer valid for 7 days
    catalog = load_catalog(CATALOG)
    offer = make_offer(action(), catalog.spec("pro-discount-20"), "user-a", NOW)

    # Then it is active until the last second and expired from then on
    assert offer.valid_until == int(NOW) + 7 * DAY
    assert offer.terms == {"percent": 20, "duration_months": 3}
    assert is_visible(offer, NOW + 7 * DAY - 1)
    assert effective_status(offer, NOW + 7 * DAY) == "expired"
    assert not is_visible(offer, NOW + 7 * DAY)


def test_offer_id_is_the_same_for_a_redelivered_action():
    assert offer_id_for("act-1") == offer_id_for("act-1") != offer_id_for("act-2")
    catalog = load_catalog(CATALOG)
    spec = catalog.spec("trial-extension-14")
    assert make_offer(action(), spec, "u", NOW).offer_id == make_offer(action(), spec, "u", NOW + 60).offer_id


def test_accept_rules():
    catalog = load_catalog(CATALOG)
    offer = make_offer(action(), catalog.spec("unlock-sso"), "user-a", NOW)

    assert decide_accept(offer, NOW).outcome == "change"
    accepted = offer.model_copy(update={"status": "accepted", "accepted_at": int(NOW)})
    assert decide_accept(accepted, NOW + 1).outcome == "unchanged"

    dismissed = offer.model_copy(update={"status": "dismissed"})
    decision = decide_accept(dismissed, NOW)
    assert decision.outcome == "conflict" and "dismissed" in decision.message

    decision = decide_accept(offer, NOW + 8 * DAY)
    assert decision.outcome == "conflict" and "expired" in decision.message


def test_dismiss_rules():
    catalog = load_catalog(CATALOG)
    offer = make_offer(action(), catalog.spec("unlock-sso"), "user-a", NOW)
    assert decide_dismiss(offer, NOW).outcome == "change"
    assert decide_dismiss(offer.model_copy(update={"status": "dismissed"}), NOW).outcome == "unchanged"
    assert decide_dismiss(offer.model_copy(update={"status": "accepted"}), NOW).outcome == "conflict"


def test_recipient_falls_back_to_the_user_then_the_first_active_user():
    assert recipient_of(action()) == "user-a"
    assert recipient_of(action(recipient_user_id=None, user_id="user-b")) == "user-b"
    ctx = {"users": [{"user_id": "user-c", "traits": {}}]}
    assert recipient_of(action(recipient_user_id=None, context=ctx)) == "user-c"
    assert recipient_of(action(recipient_user_id=None)) is None


def test_public_view_shows_terms_and_status_without_bookkeeping():
    catalog = load_catalog(CATALOG)
    offer = make_offer(action(), catalog.spec("pro-discount-20"), "user-a", NOW)
    view = offer.public(NOW)
    assert view["status"] == "active"
    assert view["terms"] == {"percent": 20, "duration_months": 3}
    assert view["reasons"] == ["2,000 messages: the free plan's limit"]
    assert "action_id" not in view and "accept_published" not in view
