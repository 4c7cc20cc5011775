"""DynamoDB adapter for the offer channel: offer items and their per-account-per-type locks. Every
write that must happen once is conditional.

Layout (the shared table, `pk`/`sk`, TTL `expires_at`):
- offer            pk `U#<user_id>`      sk `OFFER#<offer_id>`           kind `offer`
- offer lock       pk `A#<account_id>`   sk `OFFER#LOCK#<offer kind>`    kind `offer_lock`
"""

from __future__ import annotations

from typing import Any, Literal

from botocore.exceptions import ClientError

from pqlflow.channels.offers.offer import Offer, benefit_until
from pqlflow.kernel.items import ITEM_KEYS, TableStore, cancel_codes, conditional, from_item, is_error, to_item

OfferEvent = Literal["accept", "dismiss", "view"]
# Each event an offer publishes once: the attribute set once it is out, the attribute naming who claimed
# publishing it (and since when), and the state the offer must be in. `Offer Accepted` keeps its names.
_EVENTS: dict[OfferEvent, tuple[str, str, str]] = {
    "accept": ("accept_published", "publish_claimed_at", "#s = :accepted"),
    "dismiss": ("dismiss_published", "dismiss_claimed_at", "#s = :dismissed"),
    "view": ("view_published", "view_claimed_at", "attribute_exists(viewed_at)"),
}


def _state_values(event: OfferEvent, values: dict[str, Any]) -> dict[str, Any]:
    """The names and values `_EVENTS[event]`'s state condition needs, with `values`."""
    if event == "view":
        return {"ExpressionAttributeValues": values}
    status = "accepted" if event == "accept" else "dismissed"
    return {
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": values | {f":{status}": {"S": status}},
    }


_RETENTION = 30 * 86_400  # keep settled offers a while for support and analytics
_KEYS = (*ITEM_KEYS, "offer_kind")  # the offer's own `kind` is stored as `offer_kind`


class OfferStore(TableStore):
    @staticmethod
    def _key(user_id: str, offer_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"U#{user_id}"}, "sk": {"S": f"OFFER#{offer_id}"}}

    @staticmethod
    def lock_key(account_id: str, offer_kind: str) -> dict[str, Any]:
        return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"OFFER#LOCK#{offer_kind}"}}

    @staticmethod
    def _item(offer: Offer, expires_at: int) -> dict[str, Any]:
        doc = offer.model_dump(mode="json")
        doc["offer_kind"] = doc.pop("kind")
        return to_item(
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
        doc = from_item(item)
        fields = {k: v for k, v in doc.items() if k not in _KEYS}
        return Offer.model_validate(fields | {"kind": doc["offer_kind"]})

    def create(self, offer: Offer, now: float) -> Literal["created", "duplicate", "locked"]:
        """Put the offer and take the account's lock for its kind, atomically. A redelivered action
        finds its own offer (`duplicate`); another live offer of that kind holds the lock (`locked`)."""
        lock = self.lock_key(offer.account_id, offer.kind) | {
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
            if not is_error(exc, "TransactionCanceledException"):
                raise
            codes = cancel_codes(exc)
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
        return conditional(
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

    def claim_publish(self, offer: Offer, now: float, stale_after: int = 10, event: OfferEvent = "accept") -> bool:
        """Take the right to publish the offer's `event` (`Offer Accepted`, `Offer Dismissed`, `Offer
        Viewed`) when it has not gone out: free, released after a failed publish, or held longer than
        `stale_after` (a crash). The offer must be in the state the event reports."""
        published, claimed, state = _EVENTS[event]
        return conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression=f"SET {claimed} = :now",
            ConditionExpression=(
                f"{state} AND (attribute_not_exists({published}) OR {published} = :f) "
                f"AND (attribute_not_exists({claimed}) OR {claimed} < :stale)"
            ),
            **_state_values(event, {
                ":now": {"N": str(int(now))},
                ":stale": {"N": str(int(now) - stale_after)},
                ":f": {"BOOL": False},
            }),
        )

    def release_publish(self, offer: Offer, event: OfferEvent = "accept") -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression=f"REMOVE {_EVENTS[event][1]}",
        )

    def mark_published(self, offer: Offer, event: OfferEvent = "accept") -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression=f"SET {_EVENTS[event][0]} = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def view(self, offer: Offer, now: float) -> bool:
        """Record the offer's first view, while it is active and unexpired, claiming `Offer Viewed`'s
        publication with it; False when it was viewed already or no longer can be (caller re-reads)."""
        return conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            UpdateExpression="SET viewed_at = :now, view_claimed_at = :now",
            ConditionExpression="#s = :active AND valid_until > :now AND attribute_not_exists(viewed_at)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":active": {"S": "active"}, ":now": {"N": str(int(now))}},
        )

    def dismiss(self, offer: Offer, now: float) -> bool:
        """Mark the offer dismissed and free its account lock so a later offer of that kind can come."""
        dismissed = conditional(
            self.client.update_item,
            TableName=self.table,
            Key=self._key(offer.user_id, offer.offer_id),
            # The dismissing request also claims publishing `Offer Dismissed` (see claim_publish).
            UpdateExpression="SET #s = :dismissed, dismissed_at = :now, expires_at = :keep, dismiss_claimed_at = :now",
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
            conditional(
                self.client.delete_item,
                TableName=self.table,
                Key=self.lock_key(offer.account_id, offer.kind),
                ConditionExpression="offer_id = :id",
                ExpressionAttributeValues={":id": {"S": offer.offer_id}},
            )
        return dismissed
