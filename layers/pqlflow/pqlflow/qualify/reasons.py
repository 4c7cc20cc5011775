"""What a qualification's reasons carry to the channels besides their text: the signal's words in the
definition's language (label and singular), the author's talking point for the rep, and the signal's
value a week before ("what changed since last week"), read from the same usage state.

`with_words(defn, usage, now_ms, reasons)` is applied once per emitted `PQL Qualified` (never on the
per-record check), so it costs nothing on the qualify function's hot path. All of it is plain text: the
email autoescapes it and no channel treats it as template code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pqlflow.contracts.emitted import Reason
from pqlflow.ingest.usage import AccountUsage, day_of
from pqlflow.qualify.language import (
    ActiveUsersSignal,
    CountSignal,
    Definition,
    RatioSignal,
    Signal,
)

WEEK_DAYS = 7
ACTIVE_USER_DAYS = 35  # per-day active users are kept this long (pqlflow.ingest.usage)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "unknown" if value is None else str(value)
    return f"{int(number):,}" if number == int(number) else f"{number:,.2f}".rstrip("0").rstrip(".")


def week_before(defn: Definition, name: str, usage: AccountUsage, now_ms: int) -> float | None:
    """The signal's value 7 days before `now_ms`, or None where usage state cannot say (gauges keep only
    their latest reading, traits their current value)."""
    signal = defn.signals.get(name)
    today = day_of(now_ms)
    then = today - WEEK_DAYS
    if isinstance(signal, CountSignal):
        if signal.last_days:
            return float(usage.count_between(signal.key, then - signal.last_days + 1, then))
        return float(usage.count(signal.key) - usage.count_between(signal.key, then + 1, today))
    if isinstance(signal, ActiveUsersSignal) and signal.active_users.last_days:
        days = signal.active_users.last_days
        if days + WEEK_DAYS > ACTIVE_USER_DAYS:
            return None
        return float(usage.active_users_between(then - days + 1, then))
    if isinstance(signal, RatioSignal):
        of = week_before(defn, signal.ratio.of, usage, now_ms)
        limit = signal.ratio.limit if signal.ratio.limit is not None else _number(
            usage.trait(signal.ratio.limit_trait or "")
        )
        return round(of / limit, 6) if of is not None and limit else None
    return None


def change_words(value: Any, previous: float | None) -> str:
    """'+4 this week', 'no change this week', '-2 this week'; '' when either side is unknown."""
    now = _number(value)
    if now is None or previous is None:
        return ""
    delta = now - previous
    if delta == 0:
        return "no change this week"
    return f"{'+' if delta > 0 else '-'}{_fmt(abs(delta))} this week"


def _labels(signal: Signal) -> tuple[str | None, str | None]:
    """(plural, singular) of a signal's label; counts and active users always have words, and active users
    say their window ("teammates active in the last 7 days") as their reason does."""
    if isinstance(signal, ActiveUsersSignal):
        return signal.active_words(2), signal.active_words(1)
    return signal.words(2), signal.words(1)


def _talking_point(signal: Signal, value: Any, previous: float | None) -> str | None:
    if signal.talking_point is None:
        return None
    fields = {
        "value": _fmt(value),
        "label": signal.words(value) or "",
        "change": change_words(value, previous),
    }
    text = signal.talking_point
    for key, words in fields.items():
        text = text.replace("{" + key + "}", words)
    return " ".join(text.split())


def with_words(defn: Definition, usage: AccountUsage, now_ms: int, reasons: Sequence[Reason]) -> list[Reason]:
    """The reasons with their signal's label, talking point and value a week before filled in."""
    out = []
    for reason in reasons:
        signal = defn.signals.get(reason.signal or "")
        if signal is None:
            out.append(reason)
            continue
        previous = week_before(defn, reason.signal or "", usage, now_ms)
        many, one = _labels(signal)
        out.append(
            reason.model_copy(
                update={
                    "label": many,
                    "label_one": one,
                    "talking_point": _talking_point(signal, reason.value, previous),
                    "previous": previous,
                }
            )
        )
    return out
