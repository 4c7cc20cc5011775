"""DynamoDB adapter for usage state and the quarantine: the only place ingest touches boto3."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from pqlflow.ingest.quarantine import QuarantineWrite, item_key, reduced_item
from pqlflow.kernel.aws import AwsClient

BATCH_WRITE_MAX = 25
UNPROCESSED_RETRIES = 6


def refused(exc: BaseException) -> bool:
    """True when DynamoDB (or botocore, before sending) refused the request's content: retrying the same
    item can never succeed. Anything else (throttling, a 5xx, the network) is an AWS failure."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") == "ValidationException"
    return isinstance(exc, UnicodeError | ParamValidationError)


class DynamoUsageStore:
    """Writes the UpdateItem requests `pqlflow.ingest.item` builds, and quarantine items in batches."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.table = table
        self.client = client
        self._sleep = sleep

    def update(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return self.client.update_item(**request).get("Attributes")

    def compact(self, request: dict[str, Any]) -> bool:
        """Apply a compaction; False when another writer compacted first (its condition failed)."""
        try:
            self.client.update_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def quarantine(self, items: list[dict[str, Any]]) -> QuarantineWrite:
        """Put quarantine items with BatchWriteItem, retrying unprocessed ones. One item DynamoDB refuses
        fails its whole request, so that request's items are then put one by one, the refused one in its
        reduced form: no item can block another. Items an AWS failure left unwritten are in `failed`."""
        result = QuarantineWrite()
        unique = {item_key(i): i for i in items}  # a batch may not write one key twice
        keys = list(unique)
        for start in range(0, len(keys), BATCH_WRITE_MAX):
            chunk = [unique[k] for k in keys[start : start + BATCH_WRITE_MAX]]
            try:
                left = self._batch_put(chunk)
            except Exception as exc:  # noqa: BLE001 - sorted below: refused content, or an AWS failure
                if not refused(exc):
                    result.failed.update(dict.fromkeys(map(item_key, chunk), exc))
                    continue
                for item in chunk:
                    self._put_alone(item, result)
                continue
            if left:
                unprocessed = RuntimeError(f"{len(left)} quarantine item(s) left unprocessed by DynamoDB")
                result.failed.update(dict.fromkeys(map(item_key, left), unprocessed))
        return result

    def _batch_put(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The items still unprocessed after retries with backoff (DynamoDB returns what it throttled)."""
        pending = [{"PutRequest": {"Item": i}} for i in items]
        for attempt in range(UNPROCESSED_RETRIES):
            response = self.client.batch_write_item(RequestItems={self.table: pending})
            pending = response.get("UnprocessedItems", {}).get(self.table, [])
            if not pending:
                return []
            self._sleep(0.05 * 2**attempt)
        return [p["PutRequest"]["Item"] for p in pending]

    def _put_alone(self, item: dict[str, Any], result: QuarantineWrite) -> None:
        """Write one item in a request of its own (BatchWriteItem still: the function may not PutItem);
        refused, its reduced form; refused again, it is dropped, never retried."""
        key = item_key(item)
        for attempt, candidate in enumerate((item, reduced_item(item))):
            try:
                left = self._batch_put([candidate])
            except Exception as exc:  # noqa: BLE001 - refused content gets the reduced form; AWS failures retry
                if not refused(exc):
                    result.failed[key] = exc
                    return
                continue
            if left:
                result.failed[key] = RuntimeError("a quarantine item was left unprocessed by DynamoDB")
            elif attempt:
                result.reduced.append(key)
            return
        result.dropped.append(key)
