"""DynamoDB adapter for the rep-task channel: rep task items and the round-robin counters. Every write
that must happen once is conditional.

Layout (the shared table, `pk`/`sk`):
- rep task         pk `A#<account_id>`   sk `TASK#<transition_id>`       kind `rep_task`
                   (`TASK#<transition_id>#S<step>` for a journey's later step)
- roster counter   pk `ROSTER#<pool>`    sk `COUNTER`                    kind `roster_counter`
- task pointer     pk `RTASK#<task_id>`  sk `TASK`                       kind `rep_task_pointer`
- HubSpot pointer  pk `RTASK#HUBSPOT#<HubSpot task id>`  sk `TASK`      kind `rep_task_pointer`

A pointer names the task item (account and transition) for the connectors' callbacks, which know only
pqlflow's task id (Slack button, signed webhook) or HubSpot's own task id (HubSpot webhooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from botocore.exceptions import ClientError

from pqlflow.channels.rep_tasks.task import Delivery, RepTask, TaskStatus, task_slot
from pqlflow.kernel.items import ITEM_KEYS, TableStore, conditional, from_item, is_error, to_item

# Also dropped when reading: `crm_company_id`, which tasks stored by older versions carry (it came from an
# account trait, which must not choose the CRM company; the HubSpot connector resolves the company itself).
_DROPPED = (*ITEM_KEYS, "crm_company_id")


class RepTaskStore(TableStore):
    @staticmethod
    def _key(account_id: str, transition_id: str, step: int = 0) -> dict[str, Any]:
        return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"TASK#{task_slot(transition_id, step)}"}}

    @staticmethod
    def counter_key(pool: str) -> dict[str, Any]:
        return {"pk": {"S": f"ROSTER#{pool}"}, "sk": {"S": "COUNTER"}}

    def _item(self, task: RepTask) -> dict[str, Any]:
        return to_item(
            {"pk": f"A#{task.account_id}", "sk": f"TASK#{task_slot(task.transition_id, task.step)}",
             "kind": "rep_task"}
            | task.model_dump(mode="json")
        )

    @staticmethod
    def pointer_key(task_id: str, hubspot_id: str | None = None) -> dict[str, Any]:
        pk = f"RTASK#HUBSPOT#{hubspot_id}" if hubspot_id is not None else f"RTASK#{task_id}"
        return {"pk": {"S": pk}, "sk": {"S": "TASK"}}

    @staticmethod
    def _task(item: dict[str, Any]) -> RepTask:
        doc = from_item(item)
        return RepTask.model_validate({k: v for k, v in doc.items() if k not in _DROPPED})

    def get(self, account_id: str, transition_id: str, step: int = 0) -> RepTask | None:
        resp = self.client.get_item(TableName=self.table, Key=self._key(account_id, transition_id, step),
                                    ConsistentRead=True)
        item = resp.get("Item")
        return self._task(item) if item else None

    def put_pointer(self, task: RepTask, hubspot_id: str | None = None) -> None:
        """Point the task id (or HubSpot's id of the task) at the task item; the same content each time."""
        self.client.put_item(
            TableName=self.table,
            Item=self.pointer_key(task.task_id, hubspot_id)
            | {
                "kind": {"S": "rep_task_pointer"},
                "task_id": {"S": task.task_id},
                "account_id": {"S": task.account_id},
                "transition_id": {"S": task.transition_id},
                "step": {"N": str(task.step)},
            },
        )

    def find(self, task_id: str | None = None, *, hubspot_id: str | None = None) -> RepTask | None:
        """The task a callback names, by pqlflow's task id or by HubSpot's id of it; None when unknown."""
        key = self.pointer_key(task_id or "", hubspot_id)
        pointer = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        if not pointer:
            return None
        step = int(pointer.get("step", {}).get("N", "0"))
        task = self.get(pointer["account_id"]["S"], pointer["transition_id"]["S"], step)
        return task if task is not None and (task_id is None or task.task_id == task_id) else None

    def claim_close(
        self,
        task: RepTask,
        *,
        closed_at: str,
        outcome: Literal["completed", "dismissed"],
        via: Literal["hubspot", "slack", "webhook"],
        now: float,
        stale_after: int = 10,
    ) -> RepTask | None:
        """Record the task closed (the first report's time, outcome and connector stay) and take the right
        to publish `Rep Task Closed`: None when it is out already, or another request claimed it less
        than `stale_after` seconds ago."""
        try:
            resp = self.client.update_item(
                TableName=self.table,
                Key=self._key(task.account_id, task.transition_id, task.step),
                UpdateExpression=(
                    "SET closed_at = if_not_exists(closed_at, :at), closed_via = if_not_exists(closed_via, :via), "
                    "close_outcome = if_not_exists(close_outcome, :outcome), close_claimed_at = :now"
                ),
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(close_published) OR close_published = :f) "
                    "AND (attribute_not_exists(close_claimed_at) OR close_claimed_at < :stale)"
                ),
                ExpressionAttributeValues={
                    ":at": {"S": closed_at},
                    ":via": {"S": via},
                    ":outcome": {"S": outcome},
                    ":now": {"N": str(int(now))},
                    ":stale": {"N": str(int(now) - stale_after)},
                    ":f": {"BOOL": False},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_error(exc, "ConditionalCheckFailedException"):
                return None
            raise
        return self._task(resp["Attributes"])

    def release_close(self, task: RepTask) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id, task.step),
            UpdateExpression="REMOVE close_claimed_at",
        )

    def mark_close_published(self, task: RepTask) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id, task.step),
            UpdateExpression="SET close_published = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def create(self, task: RepTask) -> RepTask:
        """Store the task once; a redelivery gets the stored one back."""
        put = {"TableName": self.table, "Item": self._item(task), "ConditionExpression": "attribute_not_exists(pk)"}
        if conditional(self.client.put_item, **put):
            return task
        existing = self.get(task.account_id, task.transition_id, task.step)
        assert existing is not None
        return existing

    def create_round_robin(
        self, pool: str, transition_id: str, make: Callable[[int], RepTask], *, window: int = 32, max_tries: int = 25,
        step: int = 0,
    ) -> RepTask:
        """Draw the pool's next slot and store the task for it.

        The draw is one conditional UpdateItem on the counter item: `ADD n 1` only if `n` is still
        the value just read (two tasks never share a slot), recording `recent[<transition>] = slot`.
        A redelivery that finds its transition in `recent` reuses that slot instead of drawing again,
        so a crash between the draw and the task write skips no rep. `recent` keeps the last `window`
        draws (a ring), which bounds the item; later redeliveries find the stored task first."""
        key = self.counter_key(pool)
        tid = task_slot(transition_id, step)
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
            Key=self._key(task.account_id, task.transition_id, task.step),
            UpdateExpression="SET created_published = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def record_delivery(self, task: RepTask, connector: str, delivery: Delivery) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id, task.step),
            UpdateExpression="SET deliveries.#c = :d",
            ExpressionAttributeNames={"#c": connector},
            ExpressionAttributeValues={":d": to_item({"d": delivery.model_dump(mode="json")})["d"]},
        )

    def set_status(self, task: RepTask, status: TaskStatus) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id, task.step),
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": status}},
        )
