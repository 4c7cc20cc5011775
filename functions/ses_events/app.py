"""The ses_events function: SES bounces and complaints feed the suppression list; the engagement of nurture
emails goes on the pqlflow bus; every event is counted.

Trigger: an EventBridge rule on source `aws.ses` (the configuration set's EventBridge event destination
publishes to the default bus), detail-types `Email Delivered`, `Email Opened`, `Email Clicked`, `Email
Bounced` and `Email Complaint Received`. A permanent bounce or a complaint suppresses the address for
good (`pqlflow.nurture.suppression.from_ses_event`); an event about an email send_email tagged becomes
`Email Delivered` / `Opened` / `Clicked` / `Bounced` / `Complained` on the pqlflow bus, with an
engagement id that a redelivery repeats. Untagged messages (other senders on the configuration set)
and broken tags are counted and skipped, never an error; a failed publish raises so the trigger
retries. The work is `pqlflow.channels.email.ses_events`.

Environment: TABLE_NAME, EVENT_BUS_NAME.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.ses_events import Publisher, Suppressions, build, record_ses_event
from pqlflow.kernel.observability import log_id, logger, metrics, tracer

_defaults: tuple[Suppressions, Publisher] | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: Any,
    *,
    suppressions: Suppressions | None = None,
    publisher: Publisher | None = None,
) -> dict[str, Any]:
    global _defaults
    if suppressions is None or publisher is None:
        _defaults = _defaults or build()
        suppressions = suppressions or _defaults[0]
        publisher = publisher or _defaults[1]
    seen = record_ses_event(event.get("detail") or {}, suppressions, publisher, event_time=event.get("time"))
    metrics.add_metric(name=f"Ses_{seen.event_type}", unit=MetricUnit.Count, value=1)
    if seen.suppressed:
        metrics.add_metric(name="AddressesSuppressed", unit=MetricUnit.Count, value=seen.suppressed)
    log: dict[str, Any] = {
        "event_type": seen.event_type,
        "template": seen.template,
        "suppressed": seen.suppressed,
        "ses_message_id": seen.ses_message_id,
    }
    if seen.engagement is not None:
        metrics.add_metric(name="EngagementPublished", unit=MetricUnit.Count, value=1)
        log |= {
            "engagement_id": seen.engagement.engagement_id,
            "action_id": seen.engagement.action_id,
            "account_id": log_id(seen.engagement.account_id),
        }
    elif seen.skipped == "untagged":
        metrics.add_metric(name="SesEventsUntagged", unit=MetricUnit.Count, value=1)
    elif seen.skipped == "bad_tags":
        metrics.add_metric(name="SesEventsBadTags", unit=MetricUnit.Count, value=1)
        logger.warning("SES event with broken pqlflow tags skipped", extra=log | {"problem": seen.problem})
    logger.info("ses event", extra=log | {"skipped": seen.skipped})
    return {
        "event_type": seen.event_type,
        "suppressed": seen.suppressed,
        "engagement_id": seen.engagement.engagement_id if seen.engagement else None,
        "detail_type": seen.engagement.DETAIL_TYPE if seen.engagement else None,
        "skipped": seen.skipped,
    }
