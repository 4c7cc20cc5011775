"""The send_email delivery ledger: one `A#<account>` / `EMAIL#<action_id>` marker item per action (kind `email`).

The marker is claimed with a conditional put before the send, completed after it, and released when
SES refuses; why delivery works this way is `pqlflow.channels.email.sender.EmailSender`'s docstring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from pqlflow.kernel.aws import AwsClient

MARKER_KIND = "email"


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
