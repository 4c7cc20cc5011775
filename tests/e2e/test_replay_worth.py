"""Replay of a crafted history with revenue and churn: Account Converted carries the mrr, Account Churned comes
once, and summary.json, the printed summary and report.html show what the PQL was worth and each step's results."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pqlflow.cli.replay import render_summary

from tests.e2e.conftest import DEFINITION, POLICY, T0, crafted, read_jsonl, run

CONVERTED = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("worth")
    (tmp / "definition.yaml").write_text(DEFINITION)
    (tmp / "policy.yaml").write_text(POLICY)
    h = crafted()
    # acme (a PQL, emailed) subscribes at 100/month a day later and cancels 35 days after that; tiny (never a
    # PQL) buys once for 40 on day 2; the history ends with tiny's sign-in 40 days after acme converted
    h.track("Subscription Started", "ann", "acme", CONVERTED, mrr=100, currency="USD", plan="pro")
    h.track("Order Completed", "cat", "tiny", T0 + timedelta(days=2), revenue=40, currency="USD")
    h.track("Subscription Cancelled", "ann", "acme", CONVERTED + timedelta(days=35))
    h.track("Signed In", "cat", "tiny", CONVERTED + timedelta(days=40))
    history = h.write(tmp / "history.jsonl")
    out = tmp / "out"
    return run(history, out, tmp / "definition.yaml", tmp / "policy.yaml", price_sample=0), out


def test_the_customer_events_carry_revenue_and_the_churn_comes_once(replayed):
    _, out = replayed
    money = [(t["type"], t["account_id"], t.get("mrr"), t.get("revenue"), t.get("reason"))
             for t in read_jsonl(out / "transitions.jsonl") if t["type"] in ("Account Converted", "Account Churned")]
    assert sorted(money) == [("Account Churned", "acme", 100.0, None, "subscription_cancelled"),
                             ("Account Converted", "acme", 100.0, None, None),
                             ("Account Converted", "tiny", None, 40.0, None)]


def test_summary_and_report_show_what_the_pql_was_worth(replayed):
    summary, out = replayed
    assert summary["counts"]["churned"] == 1
    worth = json.loads((out / "summary.json").read_text())["worth"]["customers"]
    pql, other = worth["pql"], worth["other"]
    # acme: 100 × 35/30 months; the PQLs are acme, bigco and night
    assert (pql["accounts"], pql["customers"], pql["churned"]) == (3, 1, 1)
    assert pql["revenue"] == pytest.approx(100 * 35 / 30)
    assert pql["revenue_per_account"] == pytest.approx(100 * 35 / 30 / 3)
    assert pql["retention"]["30"] == {"eligible": 1, "retained": 1, "rate": 1.0}
    assert pql["retention"]["60"]["eligible"] == 0
    assert (other["customers"], other["revenue"]) == (1, pytest.approx(40))
    page = (out / "report.html").read_text()
    assert "What PQLs are worth as customers" in page and "USD 117" in page
    printed = render_summary(summary, out)
    assert "PQL-sourced 1 of 3 (33.3%), LTV so far USD 117 per customer" in printed


def test_each_step_and_channel_has_its_sends_and_conversions_after_it(replayed):
    _, out = replayed
    steps = json.loads((out / "summary.json").read_text())["worth"]["steps"]["steps"]
    rows = {(s["rule"], s["step"], s["channel"]): (s["sends"], s["converted"], s["lift"]["enough"]) for s in steps}
    # acme and night got the email (acme converted a day later), bigco the rep task; no holdout in this policy
    assert rows == {("personalized-email", 0, "email"): (2, 1, False), ("rep-follow-up", 0, "rep_task"): (1, 0, False)}
    page = (out / "report.html").read_text()
    assert "Per journey step and channel" in page and "not enough data" in page
