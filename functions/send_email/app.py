"""The send_email function: the personalized email a `Nurture Action` asks for, sent once, through SES v2.

Trigger: an EventBridge rule on detail-type `Nurture Action` (source `pqlflow`) with `channel: email`
and `outcome: send` (deferred actions come back as `send` from their Scheduler schedule, same
`action_id`). Every trigger may be redelivered.

The work is `pqlflow.channels.email.sender.EmailSender.deliver` (at-most-once per action: why, in its
docstring), wired by `pqlflow.channels.email.sender.build` with its adapters: the `EMAIL#<action_id>`
marker item (`pqlflow.channels.email.ledger`), the address's `SUP#<sha256>` suppression entry
(`pqlflow.nurture.suppression`), read just before sending, and SES v2 `SendEmail` with the exact MIME
bytes (`pqlflow.channels.email.outbox`).

Environment (validated once per cold start): TABLE_NAME, SENDER, SES_CONFIGURATION_SET,
UNSUBSCRIBE_URL, UNSUBSCRIBE_SECRET_ARN; optional TEMPLATES_DIR (default: the templates layer at /opt),
POSTAL_ADDRESS (overrides brand.yaml's), UNSUBSCRIBE_TOKEN_DAYS, EMAIL_MARKER_DAYS.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.errors import SendRejected
from pqlflow.channels.email.sender import EmailSender, build
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel.observability import error_type, log_id, logger, metrics, tracer

_sender: EmailSender | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, sender: EmailSender | None = None) -> dict[str, Any]:
    global _sender
    if sender is None:
        _sender = _sender or build()
        sender = _sender
    action = NurtureAction.model_validate(event["detail"])
    # Ids only (`log_id`: a B2C account id can hold the address); never the recipient, never a message.
    log = {"action_id": action.action_id, "account_id": log_id(action.account_id), "template": action.template}
    try:
        delivery = sender.deliver(action)
    except SendRejected as exc:
        logger.warning(
            "SES refused the email; the claim is released and the trigger retries",
            extra=log | {"error_code": str(exc)},  # SES's error code only (SendRejected carries nothing else)
        )
        metrics.add_metric(name="EmailRefused", unit=MetricUnit.Count, value=1)
        raise
    except Exception as exc:
        # The type, not the message or traceback: they can quote the context's traits (Lambda logs the
        # traceback's frames of the error it raises).
        logger.error("email not sent", extra=log | {"error_type": error_type(exc)})
        metrics.add_metric(name="EmailFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info(
        "email",
        extra=log
        | {"template": delivery.template, "outcome": delivery.outcome, "message_id": delivery.message_id},
    )
    metrics.add_metric(name=f"Email_{delivery.outcome}", unit=MetricUnit.Count, value=1)
    return {
        "action_id": delivery.action_id,
        "outcome": delivery.outcome,
        "template": delivery.template,
        "message_id": delivery.message_id,
    }
