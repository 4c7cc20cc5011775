"""Rep-task callbacks (public routes of the HTTP API, each verified by its signature): a rep closed the task,
reported by a signed webhook callback (`POST /rep-tasks/webhook`), Slack's "Mark done" button
(`POST /rep-tasks/slack`, the Slack app's interactivity request URL) or a HubSpot webhook on
`hs_task_status` → COMPLETED (`POST /rep-tasks/hubspot`). `Rep Task Closed` goes on the bus once per
task (`pqlflow.channels.rep_tasks.callback_api`).

Environment: TABLE_NAME, EVENT_BUS_NAME, CALLBACK_SECRET_ARN (JSON: `{"webhook": {"secret": …},
"slack": {"signing_secret": …}, "hubspot": {"client_secret": …}}`; a connector left out is refused).
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from pqlflow.channels.rep_tasks.callback_api import (
    CallbackSecrets,
    Publisher,
    RepTaskEventsSettings,
    build_app,
    load_secrets,
)
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.contracts.bus import EventPublisher
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ


@functools.cache
def settings() -> RepTaskEventsSettings:
    return from_environ(RepTaskEventsSettings)


@functools.cache
def _secrets() -> CallbackSecrets:
    return load_secrets(settings().CALLBACK_SECRET_ARN)


@functools.cache
def _default_app() -> APIGatewayHttpResolver:
    s = settings()
    return build_app(RepTaskStore(s.TABLE_NAME), EventPublisher(s.EVENT_BUS_NAME), _secrets)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: Any,
    *,
    store: RepTaskStore | None = None,
    publisher: Publisher | None = None,
    secrets: CallbackSecrets | None = None,
) -> dict[str, Any]:
    if store is None and publisher is None and secrets is None:
        app = _default_app()
    else:
        app = build_app(
            store or RepTaskStore(settings().TABLE_NAME),
            publisher or EventPublisher(settings().EVENT_BUS_NAME),
            (lambda: secrets) if secrets is not None else _secrets,
        )
    return app.resolve(event, context)
