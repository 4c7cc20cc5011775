"""DynamoDB adapter for usage state and the quarantine: the only place ingest touches boto3."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from pqlflow.ingest.cold import ColdUsage, archive_fingerprints, archive_prefix, cold_key, newer_cold
from pqlflow.ingest.item import StoredUsage, usage_key
from pqlflow.ingest.quarantine import QuarantineWrite, item_key, reduced_item
from pqlflow.ingest.usage import AccountUsage
from pqlflow.kernel.aws import AwsClient

BATCH_WRITE_MAX = 25
UNPROCESSED_RETRIES = 6


def refused(exc: BaseException) -> bool:
    """True when DynamoDB (or botocore, before sending) refused the request's content: retrying the same
    item can never succeed. Anything else (throttling, a 5xx, the network) is an AWS failure."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") == "ValidationException"
    return isinstance(exc, UnicodeError | ParamValidationError)


def read_usage(client: Any, table: str, account_id: str, user_id: str | None = None) -> AccountUsage | None:
    """An account's (or user's) usage state, read consistently: the usage item and, once compacted, its cold
    item. For tools and tests; qualification decodes stream images with `UsageReader`."""
    item = client.get_item(TableName=table, Key=usage_key(account_id, user_id), ConsistentRead=True).get("Item")
    if not item:
        return None
    stored = StoredUsage.parse(item)
    cold = get_cold(client, table, account_id, user_id, stored.cver, consistent=True) if stored.needs_cold else None
    return stored.to_usage(cold)


def get_cold(client: Any, table: str, account_id: str, user_id: str | None, version: int,
             consistent: bool) -> ColdUsage | None:
    """The cold item in the slot of compaction `version` (it may hold another version: the caller compares);
    when that slot has nothing as new, the single cold item of the layout before the slots, if newer."""
    def get(key: dict[str, Any]) -> ColdUsage | None:
        return ColdUsage.parse(client.get_item(TableName=table, Key=key, ConsistentRead=consistent).get("Item"))

    cold = get(cold_key(account_id, user_id, version))
    if cold is None or cold.version < version:
        cold = newer_cold(cold, get(cold_key(account_id, user_id)))
    return cold


class UsageReader:
    """Decodes usage images for qualification: a hot image (a stream record's) with its cold item.

    A cold item never changes once written (each compaction writes a new version), so it is read once per
    (subject, compaction version) and kept: between two compactions every image of an account shares it.
    The read is eventually consistent (0.5 RRU up to 4 KB), and consistent only when that one was older.
    """

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None, cache_size: int = 4096):
        self.table = table
        self.client = client
        self.reads = 0
        self._cache: OrderedDict[tuple[str, str | None, int], ColdUsage] = OrderedDict()
        self._latest: dict[tuple[str, str | None], int] = {}
        self._cache_size = cache_size

    def decode(self, image: dict[str, dict[str, Any]]) -> AccountUsage:
        """The AccountUsage of an image; `StaleCold` when its cold item has moved on (a newer image follows)."""
        stored = StoredUsage.parse(image)
        return stored.to_usage(self.cold(stored) if stored.needs_cold else None)

    def cold(self, stored: StoredUsage) -> ColdUsage | None:
        subject = (stored.account_id, stored.user_id)
        newest = self._latest.get(subject)
        if newest is not None and newest > stored.cver:
            return self._cache.get((*subject, newest))  # an older image: StaleCold, without a read
        key = (*subject, stored.cver)
        cold = self._cache.get(key)
        if cold is not None:
            self._cache.move_to_end(key)
            return cold
        for consistent in (False, True):
            self.reads += 1
            cold = get_cold(self.client, self.table, *subject, stored.cver, consistent)
            if cold is not None and cold.version >= stored.cver:
                break
        if cold is not None:
            self._cache[(*subject, cold.version)] = cold
            self._latest[subject] = max(cold.version, self._latest.get(subject, 0))
            while len(self._cache) > self._cache_size:
                (account, user, _), _ = self._cache.popitem(last=False)
                self._latest.pop((account, user), None)
        return cold


class DynamoUsageStore:
    """Writes the UpdateItem requests `pqlflow.ingest.item` builds, and quarantine items in batches."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.table = table
        self.client = client
        self._sleep = sleep

    def update(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return self.client.update_item(**request).get("Attributes")

    def read_usage_item(self, account_id: str, user_id: str | None) -> dict[str, Any] | None:
        """The hot usage item, read consistently (after a compaction lost a race)."""
        key = usage_key(account_id, user_id)
        response = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    def read_cold(self, account_id: str, user_id: str | None, version: int) -> ColdUsage | None:
        """The cold item in the slot of compaction `version`, read consistently (compaction builds on the
        latest one, and looks in the next version's slot for an intent to complete)."""
        return get_cold(self.client, self.table, account_id, user_id, version, consistent=True)

    def read_archives(self, account_id: str, user_id: str | None, days: list[int],
                      up_to_version: int) -> dict[int, set[bytes]]:
        """Fingerprints archived for each event day of `days` by compactions up to `up_to_version` (one
        consistent Query per day). Items of a later version belong to a compaction not yet completed: what
        they name is not folded yet, so they are not read."""
        found: dict[int, set[bytes]] = {}
        for day in days:
            pk, prefix = archive_prefix(account_id, user_id, day)
            request: dict[str, Any] = {
                "TableName": self.table, "ConsistentRead": True, "ProjectionExpression": "sk, f",
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                "ExpressionAttributeValues": {":pk": {"S": pk}, ":prefix": {"S": prefix}}}
            fps: set[bytes] = set()
            while True:
                response = self.client.query(**request)
                for item in response.get("Items", []):
                    if int(item["sk"]["S"][len(prefix):]) <= up_to_version:
                        fps |= archive_fingerprints(item)
                if "LastEvaluatedKey" not in response:
                    break
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
            found[day] = fps
        return found

    def write_if(self, request: dict[str, Any]) -> bool:
        """Send one PutItem (a request with `Item`) or UpdateItem; False when its condition failed."""
        try:
            if "Item" in request:
                self.client.put_item(**request)
            else:
                self.client.update_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def transact(self, items: list[dict[str, Any]]) -> bool:
        """Apply a compaction transaction; False when another compaction won (its condition failed) or a
        concurrent write conflicted: the state is unchanged and the next batch compacts again."""
        try:
            self.client.transact_write_items(TransactItems=items)
        except self.client.exceptions.TransactionCanceledException:
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
