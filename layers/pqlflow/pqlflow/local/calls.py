"""Watch the AWS calls handlers make while the local runtime runs them: count them, and take their PutEvents.

One set of botocore hooks per process, added to botocore's built-in handlers (so every session created
from then on has them, as moto does for its own stub) and to boto3's default session if it already
exists. They only act while a handler runs under `attributed_to(function, log, put_events)`, so the
runtime's own calls are never counted.

- Counting uses `before-call`: once per API call (retries not included).
- Calls to chosen operations ("sesv2.SendEmail") are recorded with their parameters, as the handler
  passed them (`before-parameter-build`), e.g. so a replay can keep the exact email given to SES.
- A handler's EventBridge PutEvents is answered by the runtime's EventBridge emulation (`put_events`,
  see `pqlflow.local.eventbus`) instead of the emulator's, the way botocore's Stubber answers calls:
  the request is validated as EventBridge would and the handler gets the API's response or error.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.handlers import BUILTIN_HANDLERS

from pqlflow.local.putevents import PutEventsRejected

_HOOK_ID = "pqlflow-local-calls"
_PUT_EVENTS = "before-call.eventbridge.PutEvents"

PutEvents = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class TappedCall:
    """One recorded call: which function made it, and the parameters it passed."""

    function: str
    service: str
    operation: str
    params: dict[str, Any]


@dataclass
class RequestLog:
    """AWS requests made by handlers: per service and operation, overall and per function.

    `tap`: "service.Operation" names whose calls are also kept, with their parameters, in `tapped`.
    """

    by_operation: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_function: defaultdict[str, Counter[tuple[str, str]]] = field(default_factory=lambda: defaultdict(Counter))
    tap: frozenset[str] = frozenset()
    tapped: list[TappedCall] = field(default_factory=list)

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
    put_events: PutEvents | None


_current: ContextVar[_Attribution | None] = ContextVar("pqlflow_local_attribution", default=None)
_installed = False


@contextmanager
def attributed_to(function: str, log: RequestLog, put_events: PutEvents | None = None) -> Iterator[None]:
    """AWS calls made inside this block are the named function's; its PutEvents go to `put_events`."""
    token = _current.set(_Attribution(function, log, put_events))
    try:
        yield
    finally:
        _current.reset(token)


def install() -> None:
    """Make sure the hooks see every boto3 client handlers create from now on (idempotent)."""
    global _installed
    if not _installed:
        BUILTIN_HANDLERS.append(("before-call", _count))
        BUILTIN_HANDLERS.append((_PUT_EVENTS, _take_put_events))
        BUILTIN_HANDLERS.append(("before-parameter-build", _tap))
        _installed = True
    session = boto3.DEFAULT_SESSION
    if session is not None:
        session.events.register("before-call", _count, unique_id=f"{_HOOK_ID}-count")
        session.events.register(_PUT_EVENTS, _take_put_events, unique_id=f"{_HOOK_ID}-put-events")
        session.events.register("before-parameter-build", _tap, unique_id=f"{_HOOK_ID}-tap")


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


def _tap(params: Any = None, model: Any = None, context: Any = None, **_: Any) -> None:
    attribution = _current.get()
    if attribution is None or model is None or not attribution.log.tap:
        return
    service, operation = model.service_model.service_name, model.name
    if f"{service}.{operation}" not in attribution.log.tap:
        return
    if isinstance(context, dict):
        if context.get(f"{_HOOK_ID}-tap"):
            return
        context[f"{_HOOK_ID}-tap"] = True
    attribution.log.tapped.append(TappedCall(attribution.function, service, operation, copy.deepcopy(params)))


def _take_put_events(
    params: Any = None, model: Any = None, context: Any = None, **_: Any
) -> tuple[AWSResponse, dict[str, Any]] | None:
    attribution = _current.get()
    if attribution is None or attribution.put_events is None or not isinstance(params, dict):
        return None
    # botocore calls the more specific hook first, and an answer stops the generic `before-call` ones.
    _count(model=model, context=context)
    body = params.get("body") or b"{}"
    request = json.loads(body.decode() if isinstance(body, bytes) else body)
    metadata = {"RequestId": str(uuid.uuid4())}
    try:
        response = attribution.put_events(list(request.get("Entries") or []))
    except PutEventsRejected as exc:
        error = {"Error": {"Code": exc.code, "Message": exc.message}, "ResponseMetadata": metadata}
        return AWSResponse(None, 400, {}, None), error | {"ResponseMetadata": {**metadata, "HTTPStatusCode": 400}}
    return AWSResponse(None, 200, {}, None), {**response, "ResponseMetadata": {**metadata, "HTTPStatusCode": 200}}
