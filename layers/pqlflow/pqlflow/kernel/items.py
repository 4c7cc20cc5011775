"""Typed DynamoDB items for the adapters: plain documents to and from attribute values, conditional
writes that answer False when their condition did not hold, and the base of a store over one table.

Every item shares the table's layout keys (`pk`/`sk`, its `kind`, TTL `expires_at`); a store drops
them (`ITEM_KEYS`) when it turns an item back into its model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from pqlflow.kernel.aws import AwsClient

_ser = TypeSerializer()
_de = TypeDeserializer()

ITEM_KEYS = ("pk", "sk", "kind", "expires_at")


def to_item(doc: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able document as DynamoDB attribute values (floats as Decimal, None attributes left out)."""
    plain_doc = json.loads(json.dumps(doc), parse_float=Decimal)
    return {k: _ser.serialize(v) for k, v in plain_doc.items() if v is not None}


def plain(value: Any) -> Any:
    """A deserialized value with its Decimals back as int or float, and sets as lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [plain(v) for v in value]
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(_de.deserialize(v)) for k, v in item.items()}


def cancel_codes(exc: ClientError) -> list[str]:
    """A cancelled transaction's reason code per item, in the order the items were written."""
    return [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]


def is_error(exc: ClientError, code: str) -> bool:
    return exc.response.get("Error", {}).get("Code") == code


def conditional(write: Callable[..., Any], **request: Any) -> bool:
    """Make one conditional write; False when its condition did not hold."""
    try:
        write(**request)
    except ClientError as exc:
        if is_error(exc, "ConditionalCheckFailedException"):
            return False
        raise
    return True


class TableStore:
    """An adapter over one table; its DynamoDB client is created on first use unless one is passed."""

    client = AwsClient("dynamodb")

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table = table_name
        self.client = client
