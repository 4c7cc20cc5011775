"""DynamoDB adapter for the rep-task channel: rep task items and the round-robin counters. Every write
that must happen once is conditional.

Layout (the shared table, `pk`/`sk`):
- rep task         pk `A#<account_id>`   sk `TASK#<transition_id>`       kind `rep_task`
- roster counter   pk `ROSTER#<pool>`    sk `COUNTER`                    kind `roster_counter`
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pqlflow.channels.rep_tasks.task import Delivery, RepTask, TaskStatus
from pqlflow.kernel.items import ITEM_KEYS, TableStore, conditional, from_item, to_item

# Also dropped when reading: `crm_company_id`, which tasks stored by older versions carry (it came from an
# account trait, which must not choose the CRM company; the HubSpot connector resolves the company itself).
_DROPPED = (*ITEM_KEYS, "crm_company_id")


class RepTaskStore(TableStore):
    @staticmethod
    def _key(account_id: str, transition_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"TASK#{transition_id}"}}

    @staticmethod
    def counter_key(pool: str) -> dict[str, Any]:
        return {"pk": {"S": f"ROSTER#{pool}"}, "sk": {"S": "COUNTER"}}

    def _item(self, task: RepTask) -> dict[str, Any]:
        return to_item(
            {"pk": f"A#{task.account_id}", "sk": f"TASK#{task.transition_id}", "kind": "rep_task"}
            | task.model_dump(mode="json")
        )

    def get(self, account_id: str, transition_id: str) -> RepTask | None:
        resp = self.client.get_item(TableName=self.table, Key=self._key(account_id, transition_id), ConsistentRead=True)
        item = resp.get("Item")
        if not item:
            return None
        doc = from_item(item)
        return RepTask.model_validate({k: v for k, v in doc.items() if k not in _DROPPED})

    def create(self, task: RepTask) -> RepTask:
        """Store the task once; a redelivery gets the stored one back."""
        put = {"TableName": self.table, "Item": self._item(task), "ConditionExpression": "attribute_not_exists(pk)"}
        if conditional(self.client.put_item, **put):
            return task
        existing = self.get(task.account_id, task.transition_id)
        assert existing is not None
        return existing

    def create_round_robin(
        self, pool: str, transition_id: str, make: Callable[[int], RepTask], *, window: int = 32, max_tries: int = 25
    ) -> RepTask:
        """Draw the pool's next slot and store the task for it.

        The draw is one conditional UpdateItem on the counter item: `ADD n 1` only if `n` is still
        the value just read (two tasks never share a slot), recording `recent[<transition>] = slot`.
        A redelivery that finds its transition in `recent` reuses that slot instead of drawing again,
        so a crash between the draw and the task write skips no rep. `recent` keeps the last `window`
        draws (a ring), which bounds the item; later redeliveries find the stored task first."""
        key = self.counter_key(pool)
        tid = transition_id
        for _ in range(max_tries):
            item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
            counter = from_item(item) if item else {}
            recent: dict[str, int] = counter.get("recent") or {}
            if tid in recent:
                slot = int(recent[tid])
            else:
                slot = int(counter.get("n", 0))
                if not self._draw(key, slot, tid, counter.get("ring") or {}, window, exists=item is not None):
                    continue  # another task drew this slot: read the counter again
            return self.create(make(slot))
        raise RuntimeError(f"round-robin pool {pool!r} stayed contended for {max_tries} tries")

    def _draw(
        self, key: dict[str, Any], slot: int, tid: str, ring: dict[str, str], window: int, *, exists: bool
    ) -> bool:
        names = {"#tid": tid, "#k": str(slot % window)}
        values: dict[str, Any] = {":one": {"N": "1"}, ":kind": {"S": "roster_counter"}}
        if not exists:
            update = "SET kind = :kind, recent = :recent, ring = :ring ADD n :one"
            condition = "attribute_not_exists(pk)"
            names = {}
            values |= {
                ":recent": {"M": {tid: {"N": str(slot)}}},
                ":ring": {"M": {str(slot % window): {"S": tid}}},
            }
        else:
            update = "SET kind = :kind, recent.#tid = :slot, ring.#k = :tid"
            old = ring.get(str(slot % window))
            if old and old != tid:
                update += " REMOVE recent.#old"
                names["#old"] = old
            update += " ADD n :one"
            condition = "n = :slot"
            values |= {":slot": {"N": str(slot)}, ":tid": {"S": tid}}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": key,
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        return conditional(self.client.update_item, **kwargs)

    def mark_published(self, task: RepTask) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id),
            UpdateExpression="SET created_published = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def record_delivery(self, task: RepTask, connector: str, delivery: Delivery) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id),
            UpdateExpression="SET deliveries.#c = :d",
            ExpressionAttributeNames={"#c": connector},
            ExpressionAttributeValues={":d": to_item({"d": delivery.model_dump(mode="json")})["d"]},
        )

    def set_status(self, task: RepTask, status: TaskStatus) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id),
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": status}},
        )
