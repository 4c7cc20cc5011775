"""What PQLs are worth after they convert: revenue, retention and lifetime value, and results per journey step.

Pure functions over plain data, shared by `pqlflow backtest` (from the history) and `pqlflow replay` (which
adds the per-step table from the events its pipeline emitted):

* `customer_of` walks one account's money events (conversions with their `mrr`/`revenue`, cancellations,
  the plan trait set to a free plan) into a `Customer`: when it paid, what it paid. The rules are the live
  qualify function's: a conversion starts paying, `Subscription Cancelled` or a free plan after it ends it,
  a conversion after that starts paying again (a win-back, the same customer).
* `customer_worth` compares PQL-sourced customers with the others: conversion rate, time to convert,
  revenue per account, retention at 30/60/90 days and lifetime value so far.
* `step_results` counts, per journey step and channel, sends, engagement and conversions after the step,
  and the lift of conversion against the holdout with a 95% Newcombe (hybrid Wilson score) interval.

Lifetime value so far = mrr × months paying (a month is 30 days) + one-off revenue, up to the churn or the
end of the history. Amounts are summed as sent: a history in several currencies is flagged, not converted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pqlflow.ingest.usage import RevenueError, money_fields
from pqlflow.qualify.evaluation import free_plan

DAY_MS = 86_400_000
MONTH_MS = 30 * DAY_MS
RETENTION_DAYS = (30, 60, 90)
Z95 = 1.959963984540054
MIN_GROUP = 10  # fewer sends or holdouts than this: "not enough data" instead of an interval

ChangeKind = Literal["convert", "cancel", "free"]


@dataclass(frozen=True, slots=True)
class MoneyEvent:
    """One thing that changes what an account pays: a conversion (with the mrr/revenue it gave), a
    cancellation, or the plan trait set to a free plan."""

    ms: int
    kind: ChangeKind
    mrr: float | None = None
    revenue: float | None = None
    currency: str | None = None


@dataclass
class Customer:
    """One account's life as a customer over a history."""

    account_id: str
    converted_ms: int  # the first conversion
    periods: list[tuple[int, int | None]] = field(default_factory=list)  # (start, end); None: still paying
    first_mrr: float | None = None
    ltv: float = 0.0
    churns: int = 0
    currencies: set[str] = field(default_factory=set)
    unnamed_currency: bool = False  # an amount was given without a currency

    def paying_at(self, ms: int) -> bool:
        return any(start <= ms and (end is None or ms < end) for start, end in self.periods)

    @property
    def churned(self) -> bool:
        """Not paying at the end of the history."""
        return bool(self.periods) and self.periods[-1][1] is not None


def customer_of(account_id: str, events: Iterable[MoneyEvent], end_ms: int) -> Customer | None:
    """The account's life as a customer up to `end_ms` (events in time order; ties keep their order), or
    None if it never converted. A cancellation or a free plan ends paying only after the conversion started
    it (strictly later, as live)."""
    customer: Customer | None = None
    paying = False
    mrr = 0.0
    start = last = 0
    for e in events:
        if e.ms > end_ms:
            break
        if paying and customer is not None:
            customer.ltv += mrr * (e.ms - last) / MONTH_MS
            last = e.ms
        if e.kind == "convert":
            if customer is None:
                customer = Customer(account_id, e.ms)
            if not paying:
                paying, start, last, mrr = True, e.ms, e.ms, 0.0
            if e.mrr is not None:
                mrr = e.mrr
                if customer.first_mrr is None:
                    customer.first_mrr = e.mrr
            if e.revenue is not None:
                customer.ltv += e.revenue
            if e.currency:
                customer.currencies.add(e.currency)
            elif e.mrr is not None or e.revenue is not None:
                customer.unnamed_currency = True
        elif paying and customer is not None and e.ms > start:
            paying = False
            customer.periods.append((start, e.ms))
            customer.churns += 1
    if customer is not None and paying:
        customer.ltv += mrr * (end_ms - last) / MONTH_MS
        customer.periods.append((start, None))
    return customer


# ---- PQL-sourced customers against the others ---------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def group_worth(
    starts: Mapping[str, int], customers: Mapping[str, Customer], end_ms: int
) -> dict[str, Any]:
    """The worth of one group of accounts. `starts`: account → when it entered the group (qualified, for
    PQLs; first seen, for the others): conversion and time to convert count from there."""
    members = [customers[a] for a, at in starts.items() if a in customers and customers[a].converted_ms >= at]
    to_convert = [(c.converted_ms - starts[c.account_id]) / DAY_MS for c in members]
    revenue = math.fsum(c.ltv for c in members)  # exactly rounded: the same in any order (partitions)
    retention = {}
    for days in RETENTION_DAYS:
        eligible = [c for c in members if end_ms - c.converted_ms >= days * DAY_MS]
        kept = sum(1 for c in eligible if c.paying_at(c.converted_ms + days * DAY_MS))
        retention[str(days)] = {"eligible": len(eligible), "retained": kept, "rate": _ratio(kept, len(eligible))}
    mrrs = [c.first_mrr for c in members if c.first_mrr is not None]
    return {
        "accounts": len(starts),
        "customers": len(members),
        "conversion_rate": _ratio(len(members), len(starts)),
        "median_days_to_convert": statistics.median(to_convert) if to_convert else None,
        "revenue": revenue,
        "revenue_per_account": _ratio(revenue, len(starts)),
        "mrr_per_customer": statistics.mean(mrrs) if mrrs else None,
        "ltv_per_customer": _ratio(revenue, len(members)),
        "churned": sum(1 for c in members if c.churned),
        "retention": retention,
    }


def customer_worth(
    first_seen: Mapping[str, int],
    qualified: Mapping[str, int],
    money: Mapping[str, Sequence[MoneyEvent]],
    end_ms: int,
) -> dict[str, Any]:
    """PQL-sourced customers against the others. `first_seen`: every account → its first event;
    `qualified`: account → its first qualification; `money`: account → its money events in time order."""
    customers = {a: c for a, events in money.items() if (c := customer_of(a, events, end_ms)) is not None}
    pqls = {a: at for a, at in qualified.items()}
    others = {a: at for a, at in first_seen.items() if a not in qualified}
    currencies = sorted({cur for c in customers.values() for cur in c.currencies})
    return {
        "end": end_ms,
        "month_days": MONTH_MS // DAY_MS,
        "currencies": currencies,
        # customers who gave an amount without its currency: with them, no one currency labels the amounts
        "customers_without_currency": sum(1 for c in customers.values() if c.unnamed_currency),
        "pql": group_worth(pqls, customers, end_ms),
        "other": group_worth(others, customers, end_ms),
        "customers_without_revenue": sum(1 for c in customers.values() if c.ltv == 0 and c.first_mrr is None),
    }


# ---- per journey step and channel ------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 − p2 and its Newcombe hybrid score interval (Newcombe 1998, method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def lift(converted: int, sent: int, holdout_converted: int, holdout: int) -> dict[str, Any]:
    """Conversion after the step against the holdout: the difference in points with its 95% interval, or
    `enough: False` when either group has fewer than MIN_GROUP accounts."""
    if sent < MIN_GROUP or holdout < MIN_GROUP:
        return {"enough": False, "difference": None, "low": None, "high": None,
                "why": f"not enough data (needs {MIN_GROUP} sends and {MIN_GROUP} holdouts; has {sent} and {holdout})"}
    d, low, high = difference_interval(converted, sent, holdout_converted, holdout)
    return {"enough": True, "difference": d, "low": low, "high": high, "why": None}


ENGAGEMENT_TYPES = {
    "Email Delivered": "delivered", "Email Opened": "opened", "Email Clicked": "clicked",
    "Email Bounced": "bounced", "Email Complained": "complained", "Offer Viewed": "viewed",
    "Offer Dismissed": "dismissed", "Offer Accepted": "accepted", "Rep Task Closed": "task_closed",
}
ENGAGEMENT_COLUMNS = ("delivered", "opened", "clicked", "viewed", "dismissed", "accepted", "task_closed")


def _first_after(times: Sequence[int], at: int, window_ms: float) -> int | None:
    for t in times:
        if at <= t <= at + window_ms:
            return t
    return None


def step_results(
    actions: Sequence[Mapping[str, Any]],
    engagement: Sequence[tuple[str, Mapping[str, Any]]],
    conversions: Mapping[str, Sequence[int]],
    window_days: float,
    offer_action: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per (rule, step, channel): sends, engagement, conversions within the window after the step, and the
    lift against the same rule's holdout.

    `actions`: Nurture Action details with `at_ms` (when it was decided); `engagement`: (detail-type,
    detail) of engagement events (deduplicated on `engagement_id`; Offer Accepted through `offer_action`,
    offer id → action id); `conversions`: account → conversion times, ascending."""
    window_ms = window_days * DAY_MS
    engaged: dict[str, set[str]] = {}
    seen: set[str] = set()
    for detail_type, d in engagement:
        column = ENGAGEMENT_TYPES.get(detail_type)
        event_key = str(d.get("engagement_id") or f"{detail_type}|{d.get('offer_id')}")
        if column is None or event_key in seen:
            continue
        seen.add(event_key)
        action = d.get("action_id") or (offer_action or {}).get(str(d.get("offer_id")))
        if action:
            engaged.setdefault(str(action), set()).add(column)
    holdout: dict[str | None, list[tuple[str, int]]] = {}  # rule → (account, when held out)
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    offsets: dict[tuple[str, int, str], list[int]] = {}
    unique: dict[str, Mapping[str, Any]] = {}  # action id → its first record (actions are redelivered)
    for a in actions:
        unique.setdefault(str(a.get("action_id")), a)
    started: dict[str, int] = {}  # transition → when its first action (step 0) was decided
    for a in unique.values():
        transition = str(a.get("transition_id") or "")
        if transition and int(a.get("step") or 0) == 0:
            started[transition] = min(started.get(transition, int(a["at_ms"])), int(a["at_ms"]))
    for action_id, a in unique.items():
        at = int(a["at_ms"])
        account = str(a.get("account_id"))
        if a.get("outcome") == "holdout":
            holdout.setdefault(a.get("rule"), []).append((account, at))
            continue
        if a.get("outcome") not in ("send", "deferred") or a.get("channel") in (None, "none"):
            continue
        converted = _first_after(conversions.get(account, ()), at, window_ms) is not None
        key = (str(a.get("rule") or "—"), int(a.get("step") or 0), str(a.get("channel")))
        row = rows.setdefault(key, {"rule": key[0], "step": key[1], "step_name": a.get("step_name"),
                                    "channel": key[2], "sends": 0, "converted": 0,
                                    **{c: 0 for c in ENGAGEMENT_COLUMNS}})
        row["sends"] += 1
        row["converted"] += converted
        offsets.setdefault(key, []).append(max(0, at - started.get(str(a.get("transition_id") or ""), at)))
        for column in engaged.get(action_id, ()):
            if column in row:
                row[column] += 1
    out = []
    for row_key in sorted(rows):
        row = rows[row_key]
        # The same rule's holdout, measured from the same offset after being held out as the step is after its
        # qualification: only holdout accounts not converted by then, converting within the window after it
        # (a later step reaches only accounts its journey has not seen convert).
        offset = int(statistics.median(offsets[row_key])) if offsets.get(row_key) else 0
        control = []
        for account, held_at in holdout.get(row["rule"] if row["rule"] != "—" else None, []):
            times = conversions.get(account, ())
            if any(t < held_at + offset for t in times):
                continue
            control.append(_first_after(times, held_at + offset, window_ms) is not None)
        row["offset_days"] = round(offset / DAY_MS, 1)
        row["conversion_rate"] = _ratio(row["converted"], row["sends"])
        row["holdout"] = len(control)
        row["holdout_converted"] = sum(control)
        row["holdout_rate"] = _ratio(sum(control), len(control))
        row["lift"] = lift(row["converted"], row["sends"], sum(control), len(control))
        out.append(row)
    return {"window_days": window_days, "min_group": MIN_GROUP, "steps": out,
            "holdout": sum(len(v) for v in holdout.values()),
            "engagement_events": len(seen)}


# ---- from a backtest's history ------------------------------------------------------------------------


def money_of_records(
    groups: Mapping[str, Sequence[tuple[Any, ...]]], defn: Any, spec: Any
) -> tuple[dict[str, int], dict[str, list[MoneyEvent]]]:
    """(account → first seen, account → money events in time order) from a backtest's records (see
    `pqlflow.analysis.backtest.RECORD`). Conversions and cancellations are `spec`'s; a free plan is the
    definition's (`pqlflow.qualify.evaluation.free_plan`). An amount live ingest would quarantine
    (`RevenueError`) drops its event here too."""


    first_seen: dict[str, int] = {}
    money: dict[str, list[MoneyEvent]] = {}
    plan_traits = tuple(defn.exclusions.paying) or ("plan",)
    customer_names = spec.conversions | spec.cancellations
    for records in groups.values():
        if not records:
            continue
        for r in records:  # a group is time-ordered: its first record is its account's first event
            if r[4] not in first_seen:
                first_seen[r[4]] = r[0]
            kind = r[3]
            if kind == "track":
                if r[6] not in customer_names:
                    continue
                ms, account, name, bag = r[0], r[4], r[6], r[7]
                try:
                    fields = money_fields(bag or {})
                except RevenueError:
                    continue
                if name in spec.conversions:
                    money.setdefault(account, []).append(MoneyEvent(
                        ms, "convert", fields.get("mrr"), fields.get("revenue"), fields.get("currency")))
                else:
                    money.setdefault(account, []).append(MoneyEvent(ms, "cancel"))
            elif ((kind == "group" or (kind == "identify" and str(r[4]).startswith("user:"))) and r[7]
                  and any(t in r[7] and free_plan(defn, t, r[7][t]) for t in plan_traits)):
                money.setdefault(r[4], []).append(MoneyEvent(r[0], "free"))
    for events in money.values():
        events.sort(key=lambda e: e.ms)  # stable: ties keep file order
    return first_seen, money


# ---- the tables the report shows (plain text cells; the report renders them as text or HTML) ------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _amount(value: float | None, currency: str) -> str:
    if value is None:
        return "—"
    return f"{currency}{value:,.0f}" if abs(value) >= 10 else f"{currency}{value:,.2f}"


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f} pts"


def amount_unit(worth: Mapping[str, Any]) -> str:
    """The currency that labels the amounts ("EUR "): only when every amount named the same one."""
    currencies = worth.get("currencies") or []
    return f"{currencies[0]} " if len(currencies) == 1 and not worth.get("customers_without_currency") else ""


def customer_table(worth: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of the PQL-sourced against other customers table."""
    currencies = worth.get("currencies") or []
    unnamed = worth.get("customers_without_currency") or 0
    unit = amount_unit(worth)
    p, o = worth["pql"], worth["other"]

    def both(fn: Any) -> list[str]:
        return [fn(p), fn(o)]

    rows = [
        ["accounts", *both(lambda g: f"{g['accounts']:,}")],
        ["converted (customers)", *both(lambda g: f"{g['customers']:,}")],
        ["conversion rate (any time)", *both(lambda g: _pct(g["conversion_rate"]))],
        ["median time to convert", *both(lambda g: "—" if g["median_days_to_convert"] is None
                                          else f"{g['median_days_to_convert']:.1f} days")],
        ["revenue per account (LTV so far ÷ accounts)", *both(lambda g: _amount(g["revenue_per_account"], unit))],
        ["mean MRR at conversion", *both(lambda g: _amount(g["mrr_per_customer"], unit))],
        ["lifetime value so far, per customer", *both(lambda g: _amount(g["ltv_per_customer"], unit))],
        ["churned by the end", *both(lambda g: f"{g['churned']:,}")],
    ]
    for days in RETENTION_DAYS:
        rows.append([f"retained at {days} days", *both(lambda g, d=days: (
            "—" if not g["retention"][str(d)]["eligible"] else
            f"{g['retention'][str(d)]['retained']:,} of {g['retention'][str(d)]['eligible']:,} "
            f"({_pct(g['retention'][str(d)]['rate'])})"))])
    notes = [
        "PQLs: accounts that qualified, counted from their first qualification; others: every other account, "
        "from its first event.",
        "Retention at N days: of the customers who converted at least N days before the history's end, those "
        "still paying N days after converting (—: none converted that long before the end). LTV so far: MRR × "
        f"months paying ({worth['month_days']}-day months) + one-off revenue, up to churn or the end of the history.",
    ]
    if len(currencies) > 1:
        notes.append(f"Amounts in several currencies ({', '.join(currencies)}) are summed as sent, not converted.")
    if unnamed and currencies:
        notes.append(f"{unnamed:,} customer{'' if unnamed == 1 else 's'} gave amounts without a currency, "
                     "summed as sent with the others "
                     f"({', '.join(currencies)}).")
    if worth.get("customers_without_revenue"):
        notes.append(f"{worth['customers_without_revenue']:,} customers converted with no mrr or revenue given.")
    return ["", "PQL-sourced", "other"], rows, notes


def step_table(steps: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of the per journey step and channel table."""
    headers = ["rule · step", "channel", "sends", "engagement", "converted after", "holdout",
               "lift vs holdout (95% CI)"]
    rows = []
    for r in steps["steps"]:
        engaged = ", ".join(f"{r[c]:,} {c.replace('_', ' ')}" for c in ENGAGEMENT_COLUMNS if r.get(c))
        lift_ = r["lift"]
        shown = (f"{_points(lift_['difference'])} ({_points(lift_['low'])} to {_points(lift_['high'])})"
                 if lift_["enough"] else "not enough data")
        name = f" {r['step_name']}" if r.get("step_name") else ""
        rows.append([f"{r['rule']} · {r['step']}{name}", r["channel"], f"{r['sends']:,}", engaged or "—",
                     f"{r['converted']:,} ({_pct(r['conversion_rate'])})",
                     f"{r['holdout_converted']:,}/{r['holdout']:,} ({_pct(r['holdout_rate'])})" if r["holdout"]
                     else "none", shown])
    notes = [
        f"Converted after: accounts converting within {steps['window_days']:g} days after the step. Holdout: the "
        "same rule's held-out accounts, from as long after the holdout decision as the step is after its "
        "qualification (a later step: only those not converted by then). Lift: the difference in conversion rate, "
        f"with a 95% Newcombe (hybrid Wilson score) interval; fewer than {steps['min_group']} sends or holdouts: "
        "not enough data.",
    ]
    if not steps.get("engagement_events"):
        notes.append("No engagement events (email delivered/opened/clicked, offer viewed/dismissed/accepted, task "
                     "closed) were emitted in this run.")
    return headers, rows, notes
