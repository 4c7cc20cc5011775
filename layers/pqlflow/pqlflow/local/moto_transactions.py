"""moto's TransactWriteItems, at the cost of the items it touches rather than of the whole table.

moto keeps a transaction all-or-nothing by deep-copying every table the transaction names before it starts,
and putting the copies back when an action fails: on a table of a few thousand usage items that is seconds per
transaction, and ingest compacts in a transaction. `install()` replaces the table copies with a snapshot of
only the items the transaction names (and of each table's stream length), restored the same way on failure:
the same results, the same errors, the same stream records. Local runtime and tests only; nothing in AWS.
"""

from __future__ import annotations

import copy
from typing import Any

_installed = False


def install() -> None:
    """Patch moto's DynamoDB backend once per process (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items

    class _NoTableCopies:
        """moto's module `copy`, except that tables are not copied (the snapshot below stands in)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    models.copy = _NoTableCopies()  # type: ignore[assignment]

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved: list[tuple[Any, Any, Any, Any]] = []
        streams: dict[int, tuple[Any, int]] = {}
        for entry in transact_items:
            op = next(iter(entry.values()), None)
            if not isinstance(op, dict) or op.get("TableName") not in self.tables:
                continue
            table = self.tables[op["TableName"]]
            key = op.get("Key") or op.get("Item") or {}
            try:
                hash_value = DynamoType(key[table.hash_key_attr])
                range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
            except KeyError:
                continue  # moto refuses the request before changing anything
            bucket = table.items.get(hash_value)
            current = (bucket.get(range_value) if range_value is not None else bucket) if bucket else None
            saved.append((table, hash_value, range_value, copy.deepcopy(current)))
            if table.stream_shard is not None:
                streams.setdefault(id(table), (table.stream_shard, len(table.stream_shard.items)))
        try:
            original(self, transact_items)
        except BaseException:
            for table, hash_value, range_value, before in reversed(saved):
                if range_value is None:
                    if before is None:
                        table.items.pop(hash_value, None)
                    else:
                        table.items[hash_value] = before
                    continue
                bucket = table.items[hash_value]
                if before is None:
                    bucket.pop(range_value, None)
                    if not bucket:
                        table.items.pop(hash_value, None)
                else:
                    bucket[range_value] = before
            for shard, length in streams.values():
                del shard.items[length:]
            raise

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _installed = True
