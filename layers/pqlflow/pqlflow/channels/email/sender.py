"""Sending the one email a `Nurture Action` asks for, at most once per action, and the send_email wiring.

`EmailSender.deliver` is the work (at-most-once: why, in its docstring); it reaches AWS only through
the `DeliveryLedger`, `SuppressionCheck` and `Outbox` it is given. `build` gives it the real adapters
(`pqlflow.channels.email.ledger`, `pqlflow.nurture.suppression`, `pqlflow.channels.email.outbox`) from
the send_email function's environment, `SendEmailSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.email import tags as ses_tags
from pqlflow.channels.email.brand import Brand, load_brand
from pqlflow.channels.email.errors import NoRecipient, SendRejected
from pqlflow.channels.email.ledger import DynamoDeliveryLedger
from pqlflow.channels.email.message import Composed, compose, message_bytes
from pqlflow.channels.email.outbox import SesOutbox
from pqlflow.channels.email.render import EmailTemplates, find_templates_dir
from pqlflow.channels.email.unsubscribe import SigningKeys
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture import suppression
from pqlflow.nurture.suppression import SuppressionList


class SendEmailSettings(BaseModel):
    """The send_email function's environment (validated once per cold start)."""

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


class DeliveryLedger(Protocol):
    """The `EMAIL#<action_id>` marker items: one per action, claimed before the send."""

    def claim(self, account_id: str, action_id: str, attributes: Mapping[str, Any]) -> bool: ...

    def finish(self, account_id: str, action_id: str, status: str, attributes: Mapping[str, Any]) -> None: ...

    def release(self, account_id: str, action_id: str) -> None: ...


class SuppressionCheck(Protocol):
    def is_suppressed(self, hashed: str) -> bool: ...


class ConversionCheck(Protocol):
    def converted_since(self, account_id: str, user_id: str | None, since_ms: int) -> bool: ...


def pql_state_key(account_id: str, user_id: str | None) -> dict[str, dict[str, str]]:
    """`qualify.transitions.state_key`, spelled here: importing the evaluator would cost send_email's cold
    start ~90 ms (a test holds the two equal)."""
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": "PQL" if user_id is None else f"PQL#U#{user_id}"}}


class PqlStates:
    """The subject's qualification state item (`A#<account>` / `PQL`, written by qualify): has it converted?"""

    client = AwsClient("dynamodb")

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self.client = client

    def converted_since(self, account_id: str, user_id: str | None, since_ms: int) -> bool:
        """Whether the subject converted at or after `since_ms` (a strongly consistent read, 1 RRU)."""
        item = self.client.get_item(
            TableName=self.table_name,
            Key=pql_state_key(account_id, user_id),
            ConsistentRead=True,
            ProjectionExpression="converted_ms",
        ).get("Item")
        return item is not None and "converted_ms" in item and int(item["converted_ms"]["N"]) >= since_ms


class Outbox(Protocol):
    def send(self, raw: bytes, *, to: str, tags: Mapping[str, str]) -> str:
        """Send the exact MIME bytes with the message's SES tags and return the message id; raise
        `SendRejected` when refused."""
        ...


Outcome = Literal["sent", "duplicate", "suppressed", "converted", "no_recipient", "ignored"]


@dataclass(frozen=True)
class Delivery:
    """What happened to one Nurture Action's email (no personal data: safe to log)."""

    outcome: Outcome
    action_id: str
    template: str | None = None
    message_id: str | None = None
    address_hash: str | None = None


@dataclass
class EmailSender:
    """Sends the one email a `Nurture Action` asks for, at most once per action.

    Delivery is **at-most-once**, deliberately. The action's marker item (`EMAIL#<action_id>`) is
    claimed with a conditional put *before* the send and completed after it. A redelivered action finds
    the claim and sends nothing. If the process dies between the claim and the send's answer, the
    claim stays `sending` and no retry sends it: the recipient may miss this nudge, but never gets
    the same nudge twice. For a marketing nudge that is what the person on the other end expects: a
    duplicate looks careless or spammy, costs trust and sender reputation (complaints suppress the
    address for good), while a missed nudge costs little (the account stays qualified and there are
    other nudges). The loss window is kept to the SES call itself: everything that can fail for
    ordinary reasons (bad template, no address, suppression lookup) happens before the claim or
    leaves nothing claimed, and when SES *answers* with a refusal (`SendRejected`, e.g. throttling)
    the claim is released and the error re-raised, so the trigger's retry sends it. Only an
    unanswered call (timeout, crash) is recorded as `unknown`; the error is re-raised for visibility,
    and the retry it causes finds the claim and sends nothing.

    Suppression is checked after the claim, immediately before the send, so an unsubscribe that lands
    while an action waits in a retry is honoured.
    """

    templates: EmailTemplates
    brand: Brand
    sender: str
    unsubscribe_url: str
    signing_key: bytes
    ledger: DeliveryLedger
    suppressions: SuppressionCheck
    outbox: Outbox
    conversions: ConversionCheck | None = None  # None: the email is sent whether or not the account converted
    token_ttl_seconds: int = 90 * 86400
    marker_ttl_seconds: int = 180 * 86400

    def prepare(self, action: NurtureAction) -> Composed:
        """Render the action's email and build its MIME message (pure; raises before anything is claimed)."""
        return compose(
            action,
            templates=self.templates,
            brand=self.brand,
            sender=self.sender,
            unsubscribe_url=self.unsubscribe_url,
            signing_key=self.signing_key,
            token_ttl_seconds=self.token_ttl_seconds,
        )

    def deliver(self, action: NurtureAction) -> Delivery:
        if action.channel != "email" or action.outcome != "send":
            return Delivery("ignored", action.action_id, action.template)
        try:
            composed = self.prepare(action)
            recipient, rendered, message = composed.recipient, composed.rendered, composed.message
        except NoRecipient:
            return Delivery("no_recipient", action.action_id, action.template)
        hashed = suppression.address_hash(recipient.email)
        now = clock.now()
        claimed = self.ledger.claim(
            action.account_id,
            action.action_id,
            {
                "template": rendered.template,
                "transition_id": action.transition_id,
                "recipient_user_id": recipient.user_id,
                "address_hash": hashed,
                "claimed_at": _iso(now),
                "expires_at": int(now + self.marker_ttl_seconds),
            },
        )
        if not claimed:
            return Delivery("duplicate", action.action_id, rendered.template, address_hash=hashed)
        if self.suppressions.is_suppressed(hashed):
            self.ledger.finish(action.account_id, action.action_id, "suppressed", {})
            return Delivery("suppressed", action.action_id, rendered.template, address_hash=hashed)
        if self._converted_since_qualifying(action):
            # a nudge that waited (quiet hours, a retry) for an account that has paid since: never sent
            self.ledger.finish(action.account_id, action.action_id, "converted", {})
            return Delivery("converted", action.action_id, rendered.template, address_hash=hashed)
        try:
            message_id = self.outbox.send(
                message_bytes(message),
                to=recipient.email,
                tags=ses_tags.for_message(
                    action_id=action.action_id,
                    transition_id=action.transition_id,
                    account_id=action.account_id,
                    step=action.step,
                    template=rendered.template,
                    user_id=recipient.user_id,
                ),
            )
        except SendRejected:
            self.ledger.release(action.account_id, action.action_id)
            raise
        except Exception:
            # No answer from SES: it may have sent. Keep the claim (at-most-once) and surface the error.
            self.ledger.finish(
                action.account_id, action.action_id, "unknown", {"failed_at": _iso(clock.now())}
            )
            raise
        self.ledger.finish(
            action.account_id,
            action.action_id,
            "sent",
            {"message_id": message_id, "sent_at": _iso(clock.now())},
        )
        return Delivery(
            "sent", action.action_id, rendered.template, message_id=message_id, address_hash=hashed
        )


    def _converted_since_qualifying(self, action: NurtureAction) -> bool:
        since = clock.parse_iso(action.context.get("qualified_at"))
        if self.conversions is None or since is None:
            return False
        return self.conversions.converted_since(action.account_id, action.user_id, int(since.timestamp() * 1000))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


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
        conversions=PqlStates(settings.TABLE_NAME, clients.get("dynamodb")),
        outbox=SesOutbox(settings.SES_CONFIGURATION_SET, settings.SENDER, clients.get("sesv2")),
        token_ttl_seconds=settings.UNSUBSCRIBE_TOKEN_DAYS * 86400,
        marker_ttl_seconds=settings.EMAIL_MARKER_DAYS * 86400,
    )
