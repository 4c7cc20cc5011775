"""DynamoDB adapter for the offer and rep-task channels: offer items and their per-account-per-type
locks, rep task items, and the round-robin counters. Every write that must happen once is conditional.

Layout (one table, `pk`/`sk`, TTL `expires_at`):
- offer            pk `U#<user_id>`      sk `OFFER#<offer_id>`           kind `offer`
- offer lock       pk `A#<account_id>`   sk `OFFER#LOCK#<offer kind>`    kind `offer_lock`
- rep task         pk `A#<account_id>`   sk `TASK#<transition_id>`       kind `rep_task`
- roster counter   pk `ROSTER#<pool>`    sk `COUNTER`                    kind `roster_counter`
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from pqlflow.channels.offers.offer import Offer, benefit_until
from pqlflow.channels.rep_tasks.task import Delivery, RepTask, TaskStatus
from pqlflow.kernel.aws import AwsClient

_ser = TypeSerializer()
_de = TypeDeserializer()
_RETENTION = 30 * 86_400  # keep settled offers a while for support and analytics


def _to_item(doc: dict[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(doc), parse_float=Decimal)
    return {k: _ser.serialize(v) for k, v in plain.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def _cancel_codes(exc: ClientError) -> list[str]:
    return [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]


def _is(exc: ClientError, code: str) -> bool:
    return exc.response.get("Error", {}).get("Code") == code


def _conditional(write: Callable[..., Any], **request: Any) -> bool:
    """Make one conditional write; False when its condition did not hold."""
    try:
        write(**request)
    except ClientError as exc:
        if _is(exc, "ConditionalCheckFailedException"):
            return False
        raise
    return True


_KEYS = ("pk", "sk", "kind", "expires_at", "offer_kind")


class _TableStore:
    client = AwsClient("dynamodb")

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table = table_name
        self.client = client


class OfferStore(_TableStore):
    @staticmethod
    def _key(user_id: str, offer_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"U#{user_id}"}, "sk": {"S": f"OFFER#{offer_id}"}}

    @staticmethod
    def _item(offer: Offer, expires_at: int) -> dict[str, Any]:
        doc = offer.model_dump(mode="json")
        doc["offer_kind"] = doc.pop("kind")
        return _to_item(
            {
                "pk": f"U#{offer.user_id}",
                "sk": f"OFFER#{offer.offer_id}",
                "kind": "offer",
                "expires_at": expires_at,
            }
            | doc
        )

    @staticmethod
    def _offer(item: dict[str, Any]) -> Offer:
        doc = _from_item(item)
        fields = {k: v for k, v in doc.items() if k not in _KEYS}
        return Offer.model_validate(fields | {"kind": doc["offer_kind"]})

    def create(self, offer: Offer, now: float) -> Literal["created", "duplicate", "locked"]:
        """Put the offer and take the account's lock for its kind, atomically. A redelivered action
        finds its own offer (`duplicate`); another live offer of that kind holds the lock (`locked`)."""
        lock_key = {"pk": {"S": f"A#{offer.account_id}"}, "sk": {"S": f"OFFER#LOCK#{offer.kind}"}}
        lock = lock_key | {
            "kind": {"S": "offer_lock"},
            "offer_id": {"S": offer.offer_id},
            "user_id": {"S": offer.user_id},
            "lock_until": {"N": str(offer.valid_until)},
            "expires_at": {"N": str(offer.valid_until)},
        }
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": lock,
                            "ConditionExpression": ("attribute_not_exists(pk) OR lock_until <= :now OR offer_id = :id"),
                            "ExpressionAttributeValues": {
                                ":now": {"N": str(int(now))},
                                ":id": {"S": offer.offer_id},
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": self._item(offer, offer.valid_until),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not _is(exc, "TransactionCanceledException"):
                raise
            codes = _cancel_codes(exc)
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                return "duplicate"
            if codes and codes[0] == "ConditionalCheckFailed":
                return "locked"
            raise
        return "created"

    def get(self, user_id: str, offer_id: str) -> Offer | None:
        resp = self.client.get_item(TableName=self.table, Key=self._key(user_id, offer_id), ConsistentRead=True)
        item = resp.get("Item")
        return self._offer(item) if item else None

    def list_for_user(self, user_id: str) -> list[Offer]:
        offers: list[Offer] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": f"U#{user_id}"}, ":prefix": {"S": "OFFER#"}},
        }
        while True:
            resp = self.client.query(**kwargs)
            offers += [self._offer(i) for i in resp.get("Items", []) if i.get("kind", {}).get("S") == "offer"]
            if "LastEvaluatedKey" not in resp:
                return offers
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def accept(self, offer: Offer, now: float) -> bool:
        """Mark an active, unexpired offer accepted; False when it no longer is (caller re-reads)."""
        accepted = offer.model_copy(update={"status": "accepted", "accepted_at": int(now)})
        keep_until = benefit_until(accepted, now) + _RETENTION
        return _conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            # The accepting request also claims publishing `Offer Accepted` (see claim_publish).
            UpdateExpression="SET #s = :accepted, accepted_at = :now, expires_at = :keep, publish_claimed_at = :now",
            ConditionExpression="#s = :active AND valid_until > :now",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":accepted": {"S": "accepted"},
                ":active": {"S": "active"},
                ":now": {"N": str(int(now))},
                ":keep": {"N": str(keep_until)},
            },
        )

    def claim_publish(self, offer: Offer, now: float, stale_after: int = 10) -> bool:
        """Take the right to publish `Offer Accepted` for an accepted offer whose event has not gone
        out: free, released after a failed publish, or held longer than `stale_after` (a crash)."""
        return _conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression="SET publish_claimed_at = :now",
            ConditionExpression=(
                "#s = :accepted AND (attribute_not_exists(accept_published) OR accept_published = :f) "
                "AND (attribute_not_exists(publish_claimed_at) OR publish_claimed_at < :stale)"
            ),
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":now": {"N": str(int(now))},
                ":stale": {"N": str(int(now) - stale_after)},
                ":accepted": {"S": "accepted"},
                ":f": {"BOOL": False},
            },
        )

    def release_publish(self, offer: Offer) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression="REMOVE publish_claimed_at",
        )

    def mark_accept_published(self, offer: Offer) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression="SET accept_published = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def dismiss(self, offer: Offer, now: float) -> bool:
        """Mark the offer dismissed and free its account lock so a later offer of that kind can come."""
        dismissed = _conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression="SET #s = :dismissed, dismissed_at = :now, expires_at = :keep",
            ConditionExpression="#s = :active",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":dismissed": {"S": "dismissed"},
                ":active": {"S": "active"},
                ":now": {"N": str(int(now))},
                ":keep": {"N": str(int(now) + _RETENTION)},
            },
        )
        if dismissed:  # the lock may already belong to a later offer: then it stays
            _conditional(
                self.client.delete_item,
                TableName=self.table,
                Key={"pk": {"S": f"A#{offer.account_id}"}, "sk": {"S": f"OFFER#LOCK#{offer.kind}"}},
                ConditionExpression="offer_id = :id",
                ExpressionAttributeValues={":id": {"S": offer.offer_id}},
            )
        return dismissed


class RepTaskStore(_TableStore):
    @staticmethod
    def _key(account_id: str, transition_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"TASK#{transition_id}"}}

    def _item(self, task: RepTask) -> dict[str, Any]:
        return _to_item(
            {"pk": f"A#{task.account_id}", "sk": f"TASK#{task.transition_id}", "kind": "rep_task"}
            | task.model_dump(mode="json")
        )

    def get(self, account_id: str, transition_id: str) -> RepTask | None:
        resp = self.client.get_item(TableName=self.table, Key=self._key(account_id, transition_id), ConsistentRead=True)
        item = resp.get("Item")
        if not item:
            return None
        doc = _from_item(item)
        return RepTask.model_validate({k: v for k, v in doc.items() if k not in _KEYS})

    def create(self, task: RepTask) -> RepTask:
        """Store the task once; a redelivery gets the stored one back."""
        put = {"TableName": self.table, "Item": self._item(task), "ConditionExpression": "attribute_not_exists(pk)"}
        if _conditional(self.client.put_item, **put):
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
        key = {"pk": {"S": f"ROSTER#{pool}"}, "sk": {"S": "COUNTER"}}
        tid = transition_id
        for _ in range(max_tries):
            item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
            counter = _from_item(item) if item else {}
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
        return _conditional(self.client.update_item, **kwargs)

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
            ExpressionAttributeValues={":d": _to_item({"d": delivery.model_dump(mode="json")})["d"]},
        )

    def set_status(self, task: RepTask, status: TaskStatus) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(task.account_id, task.transition_id),
            UpdateExpression="SET #s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": status}},
        )
