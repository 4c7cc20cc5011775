"""The one source of "now" for pqlflow code, so replay can run handlers on simulated time."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

_source: Callable[[], float] = time.time


def now() -> float:
    """Seconds since the epoch: wall-clock time in AWS, simulated time in replay."""
    return _source()


def now_ms() -> int:
    return int(_source() * 1000)


def set_source(source: Callable[[], float] | None) -> None:
    """Replace the clock (replay and tests); `None` restores wall-clock time."""
    global _source
    _source = source or time.time


def parse_iso(value: object) -> datetime | None:
    """An ISO 8601 time from an event or a record (`Z` or an offset; naive: UTC), or None when it is missing
    or not a time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
