"""DynamoDB adapter for usage state and the quarantine: the only place ingest touches boto3."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pqlflow.kernel.aws import AwsClient

BATCH_WRITE_MAX = 25


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

    def quarantine(self, items: list[dict[str, Any]]) -> None:
        """Put quarantine items with BatchWriteItem, retrying unprocessed ones; raises if some never go."""
        unique = {(i["pk"]["S"], i["sk"]["S"]): i for i in items}  # a batch may not write one key twice
        pending = [{"PutRequest": {"Item": i}} for i in unique.values()]
        for start in range(0, len(pending), BATCH_WRITE_MAX):
            chunk = pending[start : start + BATCH_WRITE_MAX]
            for attempt in range(6):
                response = self.client.batch_write_item(RequestItems={self.table: chunk})
                chunk = response.get("UnprocessedItems", {}).get(self.table, [])
                if not chunk:
                    break
                self._sleep(0.05 * 2**attempt)
            if chunk:
                raise RuntimeError(f"{len(chunk)} quarantine item(s) left unprocessed by DynamoDB")
