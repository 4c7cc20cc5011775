"""`pqlflow backtest` shows what PQLs are worth (text, --json, report.html), from a history whose answer is known;
`pqlflow sample` generates the revenue and churn that exercise it."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pqlflow import cli
from pqlflow.analysis.sample import Sample, SampleConfig

T0 = datetime(2026, 8, 1, 10, tzinfo=UTC)  # day 100 is still in the past
DEFINITION = """\
name: three-sign-ins
version: 1
signals:
  sign_ins: {count: Signed In}
qualify: {signal: sign_ins, gte: 3}
exclusions:
  paying: {plan: [pro]}
"""


def _line(n: int, kind: str, account: str, at: datetime, **fields) -> str:
    message = {"type": kind, "messageId": f"m{n}", "timestamp": at.isoformat().replace("+00:00", "Z"),
               "userId": f"u-{account}", **fields}
    if kind == "group":
        message["groupId"] = account
    else:
        message["context"] = {"groupId": account}
    return json.dumps(message)


def history(path: Path) -> Path:
    # pql1: 3 sign-ins (a PQL on day 0), subscribes at 60/month on day 10, plan back to free on day 70
    # pql2: 3 sign-ins, never pays; other: 1 sign-in, buys once for 300 on day 5; the history ends on day 100
    lines, n = [], 0

    def add(kind: str, account: str, days: float, **fields) -> None:
        nonlocal n
        n += 1
        lines.append(_line(n, kind, account, T0 + timedelta(days=days), **fields))

    for account in ("pql1", "pql2"):
        for i in range(3):
            add("track", account, i / 100, event="Signed In")
    add("track", "other", 0, event="Signed In")
    add("track", "pql1", 10, event="Subscription Started", properties={"mrr": 60, "currency": "USD"})
    add("group", "pql1", 11, traits={"plan": "pro"})
    add("track", "other", 5, event="Order Completed", properties={"revenue": 300, "currency": "USD"})
    add("group", "pql1", 70, traits={"plan": "free"})
    add("track", "other", 100, event="Signed In")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_backtest_json_text_and_report_show_the_customer_worth(tmp_path, capsys):
    events = history(tmp_path / "h.jsonl")
    (tmp_path / "d.yaml").write_text(DEFINITION)
    # When backtested as JSON
    assert cli.main(["backtest", str(events), "--definition", str(tmp_path / "d.yaml"), "--json"]) == 0
    worth = json.loads(capsys.readouterr().out)["definitions"][0]["worth"]
    pql, other = worth["pql"], worth["other"]
    # Then pql1 paid 60 × 60/30 days = 120 until its plan went back to free, over 2 PQLs
    assert (pql["accounts"], pql["customers"], pql["churned"]) == (2, 1, 1)
    assert round(pql["revenue"], 6) == 120 and round(pql["revenue_per_account"], 6) == 60
    assert pql["retention"]["30"] == {"eligible": 1, "retained": 1, "rate": 1.0}  # paying on day 40
    assert pql["retention"]["90"] == {"eligible": 1, "retained": 0, "rate": 0.0}  # not on day 100
    assert (other["accounts"], other["customers"], round(other["revenue"], 6)) == (1, 1, 300)
    # and as text and report.html
    out = tmp_path / "out"
    assert cli.main(["backtest", str(events), "--definition", str(tmp_path / "d.yaml"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "What PQLs are worth as customers" in text
    assert "revenue per account (LTV so far ÷ accounts)" in text and "USD 60" in text
    page = (out / "report.html").read_text()
    assert "What PQLs are worth as customers" in page and "0 of 1 (0.0%)" in page


def test_the_same_table_in_partitions(tmp_path, capsys):
    events = history(tmp_path / "h.jsonl")
    (tmp_path / "d.yaml").write_text(DEFINITION)
    runs = []
    for partitions in ("1", "3"):
        assert cli.main(["backtest", str(events), "--definition", str(tmp_path / "d.yaml"), "--json",
                         "--partitions", partitions]) == 0
        runs.append(json.loads(capsys.readouterr().out)["definitions"][0]["worth"])
    assert runs[0] == runs[1] and runs[0]["pql"]["customers"] == 1


def test_sample_generates_revenue_orders_and_churn():
    sample = Sample(SampleConfig(seed=7, accounts=200, days=60, start=date(2026, 9, 1)))
    messages = [json.loads(line) for line in sample.lines()]
    answers = sample.answers()["accounts"]
    started = [m for m in messages if m.get("event") == "Subscription Started"]
    assert started and all(m["properties"]["mrr"] > 0 and m["properties"]["currency"] == "USD" for m in started)
    orders = {m["context"]["groupId"]: m["properties"]["revenue"] for m in messages
              if m.get("event") == "Order Completed"}
    cancelled = {m["context"]["groupId"] for m in messages if m.get("event") == "Subscription Cancelled"}
    downgraded = {a["account_id"] for a in answers if a["customer_churn"] == "plan_downgraded"}
    # The answers name every order, cancellation and downgrade the file holds
    assert orders == {a["account_id"]: a["order_revenue"] for a in answers if a["order_revenue"]}
    assert cancelled == {a["account_id"] for a in answers if a["customer_churn"] == "subscription_cancelled"}
    assert orders and cancelled and downgraded
    for account in downgraded:
        plans = [m["traits"]["plan"] for m in messages if m["type"] == "group" and m["groupId"] == account]
        assert plans[-1] == "free" and any(p in ("pro", "business") for p in plans)
