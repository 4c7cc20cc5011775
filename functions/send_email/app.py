"""The send_email function: the personalized email a `Nurture Action` asks for, sent once, through SES v2.

Trigger: an EventBridge rule on detail-type `Nurture Action` (source `pqlflow`) with `channel: email`
and `outcome: send` (deferred actions come back as `send` from their Scheduler schedule, same
`action_id`). Every trigger may be redelivered.

The work is `pqlflow.channels.email.mail.EmailSender.deliver` (at-most-once per action: why, in its docstring). This
module holds its adapters and the handler:

- `DynamoDeliveryLedger`: the `A#<account>` / `EMAIL#<action_id>` marker item (kind `email`), claimed
  with a conditional put before the send, completed after it, released when SES refuses.
- `SuppressionList` (pqlflow.nurture.suppression): the address's `SUP#<sha256>` entry, read just before sending.
- `SesOutbox`: SES v2 `SendEmail` with `Content.Raw` (the exact MIME bytes) and the configuration set.

Environment (validated once per cold start): TABLE_NAME, SENDER, SES_CONFIGURATION_SET,
UNSUBSCRIBE_URL, UNSUBSCRIBE_SECRET_ARN; optional TEMPLATES_DIR (default: the templates layer at /opt),
POSTAL_ADDRESS (overrides brand.yaml's), UNSUBSCRIBE_TOKEN_DAYS, EMAIL_MARKER_DAYS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.mail import EmailSender, EmailTemplates, SendRejected, find_templates_dir, load_brand
from pqlflow.channels.email.unsubscribe import SigningKeys
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel.aws import AwsClient
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import SuppressionList
from pydantic import BaseModel, ConfigDict, Field

MARKER_KIND = "email"


class SendEmailSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    SENDER: str = Field(
        min_length=3, pattern=r"@", description="From header, e.g. 'Northwind <hi@example.com>'"
    )
    SES_CONFIGURATION_SET: str = Field(min_length=1)
    UNSUBSCRIBE_URL: str = Field(pattern=r"^https?://", description="the unsubscribe endpoint (HTTP API)")
    UNSUBSCRIBE_SECRET_ARN: str = Field(min_length=1)
    TEMPLATES_DIR: str | None = None
    POSTAL_ADDRESS: str | None = None
    UNSUBSCRIBE_TOKEN_DAYS: int = Field(default=90, ge=30, le=730)
    EMAIL_MARKER_DAYS: int = Field(default=180, ge=7, le=730)


# --- adapters ---------------------------------------------------------------------------------------


def marker_key(account_id: str, action_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"EMAIL#{action_id}"}}


def _attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    return {"S": str(value)}


class DynamoDeliveryLedger:
    """The per-action email marker items in the pqlflow table."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self.client = client

    def claim(self, account_id: str, action_id: str, attributes: Mapping[str, Any]) -> bool:
        item = {
            **marker_key(account_id, action_id),
            "kind": {"S": MARKER_KIND},
            "status": {"S": "sending"},
            "action_id": {"S": action_id},
            "account_id": {"S": account_id},
            **{k: _attr(v) for k, v in attributes.items() if v is not None},
        }
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def finish(self, account_id: str, action_id: str, status: str, attributes: Mapping[str, Any]) -> None:
        values = {"status": status, **{k: v for k, v in attributes.items() if v is not None}}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        self.client.update_item(
            TableName=self.table,
            Key=marker_key(account_id, action_id),
            UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":v{i}": _attr(v) for i, v in enumerate(values.values())},
        )

    def release(self, account_id: str, action_id: str) -> None:
        """Delete a claim that never reached SES, so the trigger's retry can send (only while `sending`)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.delete_item(
                TableName=self.table,
                Key=marker_key(account_id, action_id),
                ConditionExpression="#s = :sending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":sending": {"S": "sending"}},
            )


class SesOutbox:
    """SES v2 SendEmail with the raw MIME message and the configuration set (events, reputation)."""

    client = AwsClient("sesv2")

    def __init__(self, configuration_set: str, sender: str, client: Any = None) -> None:
        self.configuration_set = configuration_set
        self.sender = sender
        self.client = client

    def send(self, raw: bytes, *, to: str, template: str) -> str:
        from botocore.exceptions import ClientError

        try:
            response = self.client.send_email(
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [to]},
                Content={"Raw": {"Data": raw}},
                ConfigurationSetName=self.configuration_set,
                EmailTags=[{"Name": "pqlflow_template", "Value": template}],
            )
        except ClientError as exc:  # SES answered: the message was not accepted
            raise SendRejected(exc.response.get("Error", {}).get("Code", "ClientError")) from exc
        return response["MessageId"]


# --- handler ----------------------------------------------------------------------------------------

_sender: EmailSender | None = None


def build(settings: SendEmailSettings | None = None, **clients: Any) -> EmailSender:
    """The sender with real adapters; built once per cold start. `clients` (dynamodb, sesv2,
    secretsmanager) replace the boto3 clients."""
    settings = settings or from_environ(SendEmailSettings)
    root = find_templates_dir(settings.TEMPLATES_DIR)
    return EmailSender(
        templates=EmailTemplates(root),
        brand=load_brand(root, {"postal_address": settings.POSTAL_ADDRESS}),
        sender=settings.SENDER,
        unsubscribe_url=settings.UNSUBSCRIBE_URL,
        signing_key=SigningKeys(settings.UNSUBSCRIBE_SECRET_ARN, clients.get("secretsmanager")).current(),
        ledger=DynamoDeliveryLedger(settings.TABLE_NAME, clients.get("dynamodb")),
        suppressions=SuppressionList(settings.TABLE_NAME, clients.get("dynamodb")),
        outbox=SesOutbox(settings.SES_CONFIGURATION_SET, settings.SENDER, clients.get("sesv2")),
        token_ttl_seconds=settings.UNSUBSCRIBE_TOKEN_DAYS * 86400,
        marker_ttl_seconds=settings.EMAIL_MARKER_DAYS * 86400,
    )


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, sender: EmailSender | None = None) -> dict[str, Any]:
    global _sender
    if sender is None:
        _sender = _sender or build()
        sender = _sender
    action = NurtureAction.model_validate(event["detail"])
    log = {"action_id": action.action_id, "account_id": action.account_id, "template": action.template}
    try:
        delivery = sender.deliver(action)
    except SendRejected as exc:
        logger.warning(
            "SES refused the email; the claim is released and the trigger retries",
            extra=log | {"error": str(exc)},
        )
        metrics.add_metric(name="EmailRefused", unit=MetricUnit.Count, value=1)
        raise
    except Exception:
        logger.exception("email not sent", extra=log)
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
