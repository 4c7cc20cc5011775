"""The ses_events function: SES bounces and complaints feed the suppression list; every event is counted.

Trigger: an EventBridge rule on source `aws.ses` (the configuration set's EventBridge event destination
publishes to the default bus), detail-types `Email Bounced` and `Email Complaint Received` at least;
other SES events (`Email Delivered`, `Email Opened`, `Email Clicked`...) are only counted, per
template, for engagement. A permanent bounce or a complaint suppresses the address for good
(`pqlflow.nurture.suppression.from_ses_event`); redelivery is harmless since the first suppression wins.
Reading the event and recording its suppressions is `pqlflow.channels.email.ses_events`.

Environment: TABLE_NAME.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.ses_events import build, record_ses_event
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.nurture.suppression import SuppressionList

_suppressions: SuppressionList | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: Any, *, suppressions: SuppressionList | None = None
) -> dict[str, Any]:
    global _suppressions
    if suppressions is None:
        _suppressions = _suppressions or build()
        suppressions = _suppressions
    seen = record_ses_event(event.get("detail") or {}, suppressions)
    metrics.add_metric(name=f"Ses_{seen.event_type}", unit=MetricUnit.Count, value=1)
    if seen.suppressed:
        metrics.add_metric(name="AddressesSuppressed", unit=MetricUnit.Count, value=seen.suppressed)
    logger.info(
        "ses event",
        extra={
            "event_type": seen.event_type,
            "template": seen.template,
            "suppressed": seen.suppressed,
            "ses_message_id": seen.ses_message_id,
        },
    )
    return {"event_type": seen.event_type, "suppressed": seen.suppressed}
