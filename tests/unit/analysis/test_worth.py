"""What PQLs are worth: revenue, retention and lifetime value, and lift per journey step, on hand-computed data."""

from __future__ import annotations

from typing import Any

import pytest
from pqlflow.analysis.worth import (
    DAY_MS,
    MoneyEvent,
    customer_of,
    customer_table,
    customer_worth,
    difference_interval,
    lift,
    step_results,
    step_table,
    wilson,
)

T0 = 20_000 * DAY_MS
END = T0 + 100 * DAY_MS


def day(n: float) -> int:
    return T0 + int(n * DAY_MS)


# The hand-computed dataset (days from T0, the history ends on day 100):
#   A  PQL (qualified day -10, seen day -20): converts day 0 at mrr 100, cancels day 45
#      → LTV 100 × 45/30 = 150; paying on day 30, not on days 60 or 90
#   B  PQL (qualified day 5): converts day 10 at mrr 50, orders 200 on day 20, still paying
#      → LTV 50 × 90/30 + 200 = 350; paying on days 40, 70 and 100
#   C  PQL (qualified day 70): converts day 80 at mrr 30, plan back to free on day 90
#      → LTV 30 × 10/30 = 10; converted only 20 days before the end: in no retention cohort
#   E  PQL (qualified day 60): never converts
#   D  other (seen day 20): one order of 500 on day 50 (no mrr) → LTV 500, paying on day 80
#   F  other (seen day 0): never converts
FIRST_SEEN = {"A": day(-20), "B": day(0), "C": day(60), "E": day(50), "D": day(20), "F": day(0)}
QUALIFIED = {"A": day(-10), "B": day(5), "C": day(70), "E": day(60)}
MONEY = {
    "A": [MoneyEvent(day(0), "convert", mrr=100, currency="USD"), MoneyEvent(day(45), "cancel")],
    "B": [MoneyEvent(day(10), "convert", mrr=50, currency="USD"),
          MoneyEvent(day(20), "convert", revenue=200, currency="USD")],
    "C": [MoneyEvent(day(80), "convert", mrr=30, currency="USD"), MoneyEvent(day(90), "free")],
    "D": [MoneyEvent(day(50), "convert", revenue=500, currency="USD")],
}


@pytest.fixture
def worth():
    return customer_worth(FIRST_SEEN, QUALIFIED, MONEY, END)


def test_lifetime_value_so_far_is_mrr_times_months_paying_plus_one_off_revenue():
    assert customer_of("A", MONEY["A"], END).ltv == pytest.approx(150)
    assert customer_of("B", MONEY["B"], END).ltv == pytest.approx(350)
    assert customer_of("C", MONEY["C"], END).ltv == pytest.approx(10)
    assert customer_of("D", MONEY["D"], END).ltv == pytest.approx(500)
    assert customer_of("F", [], END) is None


def test_revenue_per_pql_counts_every_pql_converted_or_not(worth):
    pql = worth["pql"]
    assert (pql["accounts"], pql["customers"]) == (4, 3)
    assert pql["conversion_rate"] == pytest.approx(0.75)
    assert pql["revenue"] == pytest.approx(510)
    assert pql["revenue_per_account"] == pytest.approx(127.5)  # 510 / 4 PQLs
    assert pql["ltv_per_customer"] == pytest.approx(170)  # 510 / 3 customers
    assert pql["mrr_per_customer"] == pytest.approx(60)  # (100 + 50 + 30) / 3
    assert pql["median_days_to_convert"] == pytest.approx(10)  # 10, 5 and 10 days after qualifying
    assert pql["churned"] == 2


def test_retention_counts_only_customers_converted_at_least_that_long_before_the_end(worth):
    retention = worth["pql"]["retention"]
    assert retention["30"] == {"eligible": 2, "retained": 2, "rate": 1.0}  # A and B; C converted 20 days before
    assert retention["60"] == {"eligible": 2, "retained": 1, "rate": 0.5}  # A cancelled on day 45
    assert retention["90"] == {"eligible": 2, "retained": 1, "rate": 0.5}  # B converted exactly 90 days before
    other = worth["other"]["retention"]
    assert other["30"] == {"eligible": 1, "retained": 1, "rate": 1.0}
    assert other["60"] == {"eligible": 0, "retained": 0, "rate": None}


def test_the_others_are_every_account_that_never_qualified(worth):
    other = worth["other"]
    assert (other["accounts"], other["customers"], other["revenue"]) == (2, 1, pytest.approx(500))
    assert other["revenue_per_account"] == pytest.approx(250)
    assert other["median_days_to_convert"] == pytest.approx(30)  # seen day 20, converted day 50
    assert other["mrr_per_customer"] is None


def test_a_customer_who_converts_again_after_churning_pays_again():
    events = [MoneyEvent(day(0), "convert", mrr=10), MoneyEvent(day(30), "cancel"),
              MoneyEvent(day(60), "convert", mrr=20)]
    c = customer_of("W", events, day(90))
    assert c.ltv == pytest.approx(10 + 20)
    assert c.paying_at(day(45)) is False and c.paying_at(day(75)) is True
    assert (c.churns, c.churned, c.converted_ms) == (1, False, day(0))


def test_a_free_plan_at_the_moment_of_conversion_does_not_end_it():
    c = customer_of("X", [MoneyEvent(day(0), "convert", mrr=10), MoneyEvent(day(0), "free")], day(30))
    assert c.periods == [(day(0), None)] and c.ltv == pytest.approx(10)


def test_the_table_says_which_customers_retention_counts(worth):
    headers, rows, notes = customer_table(worth)
    assert headers == ["", "PQL-sourced", "other"]
    shown = {r[0]: r[1:] for r in rows}
    assert shown["revenue per account (LTV so far ÷ accounts)"] == ["USD 128", "USD 250"]
    assert shown["retained at 60 days"] == ["1 of 2 (50.0%)", "—"]
    assert any("at least N days before the history's end" in n for n in notes)


# ---- lift against the holdout ----------------------------------------------------------------------------


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "low", "high"), [
    # Newcombe (1998), "Interval estimation for the difference between independent proportions", Table II,
    # method 10 (hybrid score): the published intervals
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
])
def test_the_difference_interval_is_newcombes_published_one(x1, n1, x2, n2, low, high):
    d, lo, hi = difference_interval(x1, n1, x2, n2)
    assert d == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_the_wilson_interval_by_hand():
    # 81 of 263 at z = 1.96: centre (p + z²/2n)/(1 + z²/n), half z√(p(1−p)/n + z²/4n²)/(1 + z²/n) = 0.2553..0.3662
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_too_few_sends_or_holdouts_is_not_enough_data():
    assert lift(5, 9, 1, 50)["enough"] is False
    assert "not enough data" in lift(5, 50, 1, 9)["why"]
    assert lift(5, 10, 1, 10)["enough"] is True


def _action(i: int, account: str, *, step: int, channel: str, at: int, outcome: str = "send") -> dict:
    return {"action_id": f"a{i}", "transition_id": f"t{account}", "account_id": account, "rule": "nudge",
            "step": step, "step_name": None if step == 0 else "offer", "channel": channel, "outcome": outcome,
            "at_ms": at}


def test_step_results_count_sends_engagement_conversions_after_the_step_and_lift():
    # Given rule "nudge": 70 emails at step 0 (56 of those accounts convert within 30 days, one more after
    # 40 days), 80 holdouts (48 convert), and 5 offers at step 1
    actions, conversions = [], {}
    for i in range(70):
        actions.append(_action(i, f"s{i}", step=0, channel="email", at=day(0)))
        if i < 56:
            conversions[f"s{i}"] = [day(10)]
    conversions["s69"] = [day(40)]
    for i in range(80):
        actions.append(_action(100 + i, f"h{i}", step=0, channel="none", at=day(0), outcome="holdout"))
        if i < 48:
            conversions[f"h{i}"] = [day(5)]
    for i in range(5):
        actions.append(_action(200 + i, f"s{i}", step=1, channel="offer", at=day(3)))
    actions.append(dict(actions[0]))  # a redelivered action counts once
    engagement = [
        ("Email Delivered", {"engagement_id": "e1", "action_id": "a0"}),
        ("Email Delivered", {"engagement_id": "e2", "action_id": "a1"}),
        ("Email Opened", {"engagement_id": "e3", "action_id": "a0"}),
        ("Email Opened", {"engagement_id": "e3", "action_id": "a0"}),  # the same engagement twice
        ("Email Opened", {"engagement_id": "e4", "action_id": "a0"}),  # a second open of the same email
        ("Offer Viewed", {"engagement_id": "e5", "action_id": "a200"}),
        ("Offer Accepted", {"offer_id": "of_x", "account_id": "s1"}),
    ]

    # When the per-step table is computed
    result = step_results(actions, engagement, conversions, 30, offer_action={"of_x": "a201"})

    # Then each (rule, step, channel) row has its counts and the lift interval against the rule's holdout
    email, offer = result["steps"]
    assert (email["step"], email["channel"], email["sends"], email["converted"]) == (0, "email", 70, 56)
    assert (email["delivered"], email["opened"], email["clicked"]) == (2, 1, 0)
    assert (email["holdout"], email["holdout_converted"]) == (80, 48)
    lift_ = email["lift"]
    assert lift_["enough"] and round(lift_["difference"], 4) == 0.2
    assert (round(lift_["low"], 4), round(lift_["high"], 4)) == (0.0524, 0.3339)
    assert (offer["step"], offer["sends"], offer["viewed"], offer["accepted"]) == (1, 5, 1, 1)
    assert offer["lift"]["enough"] is False
    headers, rows, _ = step_table(result)
    assert rows[0][-1] == "+20.0 pts (+5.2 pts to +33.4 pts)"
    assert rows[1][-1] == "not enough data" and rows[1][0] == "nudge · 1 offer"


def _journey_action(i: int, account: str, step: int, channel: str, outcome: str = "send") -> dict[str, Any]:
    return {"action_id": f"a{i}", "transition_id": f"t{account}", "account_id": account, "rule": "nudge",
            "step": step, "channel": channel, "outcome": outcome, "at_ms": 20_000 * DAY_MS + step * 7 * DAY_MS}


def test_a_later_step_that_changes_nothing_shows_no_lift() -> None:
    # Given 40 accounts nudged and 40 held out by the same rule, where nothing has any effect: half of each
    # group converts on day 3; the other half gets step 1 on day 7 and nobody converts after
    actions, conversions = [], {}
    t0 = 20_000 * DAY_MS
    for i in range(40):
        actions.append(_journey_action(i, f"s{i}", 0, "email"))
        if i % 2:
            conversions[f"s{i}"] = [t0 + 3 * DAY_MS]
        else:
            actions.append(_journey_action(100 + i, f"s{i}", 1, "email"))
        actions.append(_journey_action(200 + i, f"h{i}", 0, "none", outcome="holdout"))
        if i % 2:
            conversions[f"h{i}"] = [t0 + 3 * DAY_MS]
    # When the per-step results are computed
    step0, step1 = step_results(actions, [], conversions, 30)["steps"]
    # Then step 0 is compared from the decision (20/40 against 20/40), and step 1 from day 7, with the holdout
    # accounts not converted by then (0/20 against 0/20): no lift either way
    assert (step0["converted"], step0["sends"], step0["holdout_converted"], step0["holdout"]) == (20, 40, 20, 40)
    assert step0["lift"]["difference"] == 0
    assert (step1["converted"], step1["sends"], step1["holdout_converted"], step1["holdout"]) == (0, 20, 0, 20)
    assert step1["offset_days"] == 7 and step1["lift"]["difference"] == 0
    assert step1["lift"]["low"] <= 0 <= step1["lift"]["high"]


def test_a_rule_is_never_compared_with_another_rules_holdout() -> None:
    # Given sends of a high-touch rule and holdouts recorded under a low-touch rule only
    actions = [{"action_id": f"r{i}", "transition_id": f"t{i}", "account_id": f"r{i}", "rule": "rep-follow-up",
                "step": 0, "channel": "rep_task", "outcome": "send", "at_ms": 0} for i in range(20)]
    actions += [{"action_id": f"h{i}", "transition_id": f"u{i}", "account_id": f"h{i}", "rule": "nudge",
                 "step": 0, "channel": None, "outcome": "holdout", "at_ms": 0} for i in range(20)]
    # When the per-step results are computed, then the high-touch rule has no holdout to be compared with
    (row,) = step_results(actions, [], {f"r{i}": [DAY_MS] for i in range(10)}, 30)["steps"]
    assert row["holdout"] == 0 and not row["lift"]["enough"]


def test_amounts_without_a_currency_are_not_labelled_with_another_customers_currency() -> None:
    # Given one customer paying in EUR and another giving an amount without a currency
    money = {"a": [MoneyEvent(T0, "convert", revenue=1000, currency="EUR")],
             "b": [MoneyEvent(T0, "convert", revenue=1200)]}
    worth = customer_worth({"a": T0, "b": T0}, {"a": T0, "b": T0}, money, T0 + DAY_MS)
    # When the table is shown, then the amounts carry no currency, and a note says why
    _, rows, notes = customer_table(worth)
    shown = {r[0]: r[1] for r in rows}
    assert shown["lifetime value so far, per customer"] == "1,100"
    assert "1 customer gave amounts without a currency, summed as sent with the others (EUR)." in notes
    # and with every amount in EUR, they say so
    money["b"] = [MoneyEvent(T0, "convert", revenue=1200, currency="EUR")]
    _, rows, _ = customer_table(customer_worth({"a": T0, "b": T0}, {"a": T0, "b": T0}, money, T0 + DAY_MS))
    assert {r[0]: r[1] for r in rows}["lifetime value so far, per customer"] == "EUR 1,100"
