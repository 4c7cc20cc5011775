"""Watch the AWS calls handlers make while the local runtime runs them: count them and stamp event time.

One botocore hook per process, added to botocore's built-in handlers (so every session created from
then on has it, as moto does for its own stub) and to boto3's default session if it already exists.
It only acts while a handler runs under `attributed_to(function, log)`, so the runtime's own calls are
never counted. Counting uses `before-call` (once per API call, retries not included).

PutEvents entries a handler sends without a `Time` get the current `pqlflow.clock` time: EventBridge
stamps events with the time it receives them, which in a replay is simulated time.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.handlers import BUILTIN_HANDLERS

from pqlflow import clock

_HOOK_ID = "pqlflow-local-requests"


@dataclass
class RequestLog:
    """AWS requests made by handlers: per service and operation, overall and per function."""

    by_operation: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_function: defaultdict[str, Counter[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def record(self, function: str, service: str, operation: str) -> None:
        self.by_operation[(service, operation)] += 1
        self.by_function[function][(service, operation)] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        """`{"dynamodb": {"UpdateItem": 3}, "events": {"PutEvents": 1}}`."""
        return _nest(self.by_operation)

    def by_function_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        return {fn: _nest(counts) for fn, counts in sorted(self.by_function.items())}


def _nest(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (service, operation), n in sorted(counts.items()):
        nested.setdefault(service, {})[operation] = n
    return nested


@dataclass(frozen=True)
class _Attribution:
    function: str
    log: RequestLog


_current: ContextVar[_Attribution | None] = ContextVar("pqlflow_local_attribution", default=None)
_installed = False


@contextmanager
def attributed_to(function: str, log: RequestLog) -> Iterator[None]:
    """AWS calls made inside this block are the named function's."""
    token = _current.set(_Attribution(function, log))
    try:
        yield
    finally:
        _current.reset(token)


def install() -> None:
    """Make sure the hooks see every boto3 client handlers create from now on (idempotent)."""
    global _installed
    if not _installed:
        BUILTIN_HANDLERS.append(("before-call", _count))
        BUILTIN_HANDLERS.append(("before-parameter-build.eventbridge.PutEvents", _stamp_time))
        _installed = True
    session = boto3.DEFAULT_SESSION
    if session is not None:
        session.events.register("before-call", _count, unique_id=f"{_HOOK_ID}-count")
        session.events.register(
            "before-parameter-build.eventbridge.PutEvents", _stamp_time, unique_id=f"{_HOOK_ID}-time"
        )


def _count(model: Any = None, context: Any = None, **_: Any) -> None:
    attribution = _current.get()
    if attribution is None or model is None:
        return
    if isinstance(context, dict):
        # A session can hold the hook twice (built-in and registered); count each call once.
        if context.get(_HOOK_ID):
            return
        context[_HOOK_ID] = True
    attribution.log.record(attribution.function, model.service_model.service_name, model.name)


def _stamp_time(params: Any = None, **_: Any) -> None:
    if _current.get() is None or not isinstance(params, dict):
        return
    now = dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC)
    for entry in params.get("Entries") or []:
        if isinstance(entry, dict) and entry.get("Time") is None:
            entry["Time"] = now
