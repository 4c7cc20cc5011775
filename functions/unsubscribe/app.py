"""The unsubscribe endpoint behind every nurture email's `List-Unsubscribe` link (HTTP API, payload v2).

- `GET ?token=…` shows a confirmation page and changes nothing: mail scanners and link previews fetch
  links, and a GET must not unsubscribe anyone.
- `POST ?token=…` with the body `List-Unsubscribe=One-Click` unsubscribes: mail clients send it
  themselves for RFC 8058 one-click unsubscribe, and the confirmation page's button posts the same way.
  A POST without that body gets the confirmation page and changes nothing (RFC 8058's rule: why, in
  `pqlflow.channels.email.unsubscribe_endpoint`).

The token (pqlflow.channels.email.unsubscribe) is checked against the signing secret's current and previous
versions; a forged or malformed token gets 400 (never a 500), an expired one 410, and neither changes
anything. A valid one records the address's suppression (`SUP#<sha256>`; the first reason recorded
wins) so send_email never mails it again. Repeating the POST is harmless. The request, the decision
and the page are `pqlflow.channels.email.unsubscribe_endpoint`.

Environment: TABLE_NAME, UNSUBSCRIBE_SECRET_ARN; optional TEMPLATES_DIR, POSTAL_ADDRESS.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.unsubscribe_endpoint import UnsubscribeService, build, read_request
from pqlflow.kernel.observability import logger, metrics, tracer

_service: UnsubscribeService | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: Any, *, service: UnsubscribeService | None = None
) -> dict[str, Any]:
    global _service
    if service is None:
        _service = _service or build()
        service = _service
    request = read_request(event)
    result = service.decide(request.method, request.token, request.form)
    logger.info(
        "unsubscribe",
        extra={
            "method": request.method,
            "status": result.status,
            "state": result.state,
            "recorded": result.unsubscribed,
        },
    )
    metrics.add_metric(name=f"Unsubscribe_{result.state}", unit=MetricUnit.Count, value=1)
    return service.respond(result, request.action)
