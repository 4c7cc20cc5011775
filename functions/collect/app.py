"""The collect function: Segment's HTTP Tracking API (`POST /v1/track|identify|group|page|screen|alias|batch`)
in front of the bus, so Segment's and RudderStack's SDKs send usage events to pqlflow directly.

Trigger: the CollectApi HTTP API (payload 2.0, no authorizer: the write key is the credential, checked
here against the CollectWriteKeys secret, cached WRITE_KEYS_CACHE_SECONDS). Valid messages go on the
bus with their key's source before the answer; rejected ones are quarantined and named in it; a bus or
quarantine failure answers 500 so the SDK sends again. The request is `pqlflow.collect.service`.

Environment: TABLE_NAME, EVENT_BUS_NAME, WRITE_KEYS_SECRET_ARN, ALLOWED_SOURCES; optional
WRITE_KEYS_CACHE_SECONDS, QUARANTINE_DAYS, RETENTION_DAYS.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.collect.api import CollectSettings, build, read_request
from pqlflow.collect.messages import CALLS
from pqlflow.collect.service import CollectService
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ


@functools.cache
def settings() -> CollectSettings:
    return from_environ(CollectSettings)


@functools.cache
def _default_service() -> CollectService:
    return build(settings(), log_problem=lambda message, extra: logger.error(message, extra=extra))


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, service: CollectService | None = None) -> dict[str, Any]:
    request = read_request(event)
    response = (service or _default_service()).handle(request)
    metrics.add_metric(name="MessagesCollected", unit=MetricUnit.Count, value=response.accepted)
    metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=sum(response.rejected_by_field.values()))
    if response.status >= 500:
        metrics.add_metric(name="CollectUnavailable", unit=MetricUnit.Count, value=1)
    # Counts, the call, the key's label and source: never the key, never the content.
    logger.info("collect", extra={
        "call": request.call_name if request.call_name in (*CALLS, "batch") else "other", "method": request.method,
        "status": response.status, "key": response.key, "source": response.source, "accepted": response.accepted,
        "not_put": response.not_put, "rejected_by_field": dict(response.rejected_by_field),
    })
    return response.http()
