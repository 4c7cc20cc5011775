"""The ses_events function: SES bounces and complaints feed the suppression list; every event is counted.

Trigger: an EventBridge rule on source `aws.ses` (the configuration set's EventBridge event destination
publishes to the default bus), detail-types `Email Bounced` and `Email Complaint Received` at least;
other SES events (`Email Delivered`, `Email Opened`, `Email Clicked`...) are only counted, per
template, for engagement. A permanent bounce or a complaint suppresses the address for good
(`pqlflow.nurture.suppression.from_ses_event`); redelivery is harmless since the first suppression wins.

Environment: TABLE_NAME.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import SuppressionList, from_ses_event
from pydantic import BaseModel, ConfigDict, Field


class SesEventsSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)


_suppressions: SuppressionList | None = None


def build(settings: SesEventsSettings | None = None, client: Any = None) -> SuppressionList:
    settings = settings or from_environ(SesEventsSettings)
    return SuppressionList(settings.TABLE_NAME, client)


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
    detail = event.get("detail") or {}
    event_type = str(detail.get("eventType") or detail.get("notificationType") or "Unknown")
    tags = (detail.get("mail") or {}).get("tags") or {}
    template = (tags.get("pqlflow_template") or ["unknown"])[0]
    added = 0
    for entry in from_ses_event(detail, now=clock.now()):
        added += suppressions.add(entry)
    metrics.add_metric(name=f"Ses_{event_type}", unit=MetricUnit.Count, value=1)
    if added:
        metrics.add_metric(name="AddressesSuppressed", unit=MetricUnit.Count, value=added)
    logger.info(
        "ses event",
        extra={
            "event_type": event_type,
            "template": template,
            "suppressed": added,
            "ses_message_id": (detail.get("mail") or {}).get("messageId"),
        },
    )
    return {"event_type": event_type, "suppressed": added}
