"""The one source of "now" for pqlflow code, so replay can run handlers on simulated time."""

from __future__ import annotations

import time
from collections.abc import Callable

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
