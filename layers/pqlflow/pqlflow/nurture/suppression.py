"""The email suppression list: addresses that never get email again (unsubscribed, bounced, complained).

An entry is keyed by the sha256 of the trimmed, lower-cased address (`SUP#<hash>` / `EMAIL`), so the
table never holds the address itself. The first reason recorded wins: a later unsubscribe does not
overwrite a complaint. Entries do not expire.

Pure parts: `address_hash`, `Suppression`, `from_ses_event` (which SES bounce/complaint events
suppress). `SuppressionList` is the small DynamoDB adapter (boto3 is imported only when it has to
create its own client).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, Literal

from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient

SuppressionReason = Literal["unsubscribed", "bounced", "complained"]
KIND = "suppression"
SORT_KEY = "EMAIL"

# SES bounce types that mean the address will not take mail; Transient/Undetermined may recover.
SUPPRESSING_BOUNCES = frozenset({"Permanent"})


def address_hash(address: str) -> str:
    """sha256 hex of the trimmed, lower-cased address: the only form of an address pqlflow stores or logs."""
    return hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()


def suppression_key(hashed: str) -> dict[str, str]:
    return {"pk": f"SUP#{hashed}", "sk": SORT_KEY}


@dataclass(frozen=True)
class Suppression:
    """One address that must get no more email, and why."""

    address_hash: str
    reason: SuppressionReason
    source: str
    at: float
    account_id: str | None = None
    user_id: str | None = None

    def item(self) -> dict[str, Any]:
        """The table item (plain Python values; the adapter adds DynamoDB types)."""
        item: dict[str, Any] = {
            **suppression_key(self.address_hash),
            "kind": KIND,
            "reason": self.reason,
            "source": self.source,
            "suppressed_at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
        }
        if self.account_id:
            item["account_id"] = self.account_id
        if self.user_id:
            item["user_id"] = self.user_id
        return item


def from_ses_event(detail: Mapping[str, Any], now: float | None = None) -> list[Suppression]:
    """The suppressions an SES event (the EventBridge `detail` of an SES event destination) calls for.

    A permanent bounce suppresses each bounced recipient; a complaint suppresses each complaining
    recipient unless its feedback type is `not-spam`. Everything else (deliveries, opens, transient
    bounces) suppresses nothing.
    """
    at = clock.now() if now is None else now
    event_type = detail.get("eventType") or detail.get("notificationType")
    if event_type == "Bounce":
        bounce = detail.get("bounce") or {}
        if bounce.get("bounceType") not in SUPPRESSING_BOUNCES:
            return []
        source = f"ses:bounce:{bounce.get('bounceType')}/{bounce.get('bounceSubType') or 'General'}"
        recipients = bounce.get("bouncedRecipients") or []
        reason: SuppressionReason = "bounced"
    elif event_type == "Complaint":
        complaint = detail.get("complaint") or {}
        if complaint.get("complaintFeedbackType") == "not-spam":
            return []
        source = f"ses:complaint:{complaint.get('complaintFeedbackType') or 'unspecified'}"
        recipients = complaint.get("complainedRecipients") or []
        reason = "complained"
    else:
        return []
    seen: dict[str, Suppression] = {}
    for entry in recipients:
        address = parseaddr(str((entry or {}).get("emailAddress") or ""))[1]
        if "@" in address:
            hashed = address_hash(address)
            seen.setdefault(hashed, Suppression(hashed, reason, source, at))
    return list(seen.values())


class SuppressionList:
    """The suppression entries in the pqlflow table."""

    client = AwsClient("dynamodb")

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self.client = client

    def is_suppressed(self, hashed: str) -> bool:
        """Whether the address with this hash is suppressed (a strongly consistent read)."""
        response = self.client.get_item(
            TableName=self.table_name,
            Key={k: {"S": v} for k, v in suppression_key(hashed).items()},
            ConsistentRead=True,
            ProjectionExpression="pk",
        )
        return "Item" in response

    def add(self, suppression: Suppression) -> bool:
        """Record a suppression; False when the address was already suppressed (the first reason stays)."""
        item = {k: {"S": str(v)} for k, v in suppression.item().items()}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
