"""Rep task channel: on a `Nurture Action` with channel `rep_task`, store one task for the account's
owner (or the next rep in the round-robin), emit `Rep Task Created` once, and deliver it through the
configured connectors. A delivery that still fails leaves the task stored as `delivery_failed` and
fails the invocation so the trigger retries; connectors already delivered are not called again."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.parser import envelopes, parse
from pqlflow.channels.rep_tasks.connectors import Connector
from pqlflow.channels.rep_tasks.service import Collaborators, RepTaskSettings, process
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.channels.rep_tasks.task import Roster
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ


class Settings(RepTaskSettings):
    function_dir = Path(__file__).parent  # a relative ROSTER_FILE is read from this function's folder


@functools.cache
def settings() -> Settings:
    return from_environ(Settings)


@functools.cache
def _defaults() -> Collaborators:
    return Collaborators.from_settings(settings())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: Any,
    *,
    store: RepTaskStore | None = None,
    publisher: EventPublisher | None = None,
    roster: Roster | None = None,
    connectors: list[Connector] | None = None,
) -> dict[str, Any]:
    action = parse(event=event, model=NurtureAction, envelope=envelopes.EventBridgeEnvelope)
    if store is None or publisher is None or roster is None or connectors is None:
        d = _defaults()
        c = Collaborators(
            store or d.store,
            publisher or d.publisher,
            roster or d.roster,
            connectors if connectors is not None else d.connectors,
        )
    else:
        c = Collaborators(store, publisher, roster, connectors)
    return process(action, c)
