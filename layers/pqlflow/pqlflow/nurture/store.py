"""DynamoDB adapter for routing: the stored nurture actions, the frequency-cap slots and the suppression reads.

Layout (the single table, `pk`/`sk`, TTL `expires_at`):
- nurture action   pk `A#<account_id>`   sk `NURTURE#<transition_id>`   kind `nurture_action`
- account cap      pk `A#<account_id>`   sk `NURTURE#CAP`               kind `nurture_cap`
- user cap         pk `U#<user_id>`      sk `NURTURE#CAP`               kind `nurture_cap`
- read only: account suppression (`A#<account_id>` / `SUPPRESSED`) and the email suppression list
  (`SUP#<sha256>` / `EMAIL`, `pqlflow.nurture.suppression`)

`read` is one consistent BatchGetItem; `commit` is one TransactWriteItems that stores the action and
claims the caps, or does nothing (`ActionExists`, `CapTaken`). The protocol around them is in
`pqlflow.nurture.service`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pqlflow.contracts.emitted import NurtureAction, PqlQualified
from pqlflow.kernel.aws import AwsClient
from pqlflow.nurture.policy import Policy
from pqlflow.nurture.routing import Decision, Lookups, NurtureState
from pqlflow.nurture.suppression import SORT_KEY as SUPPRESSION_SORT_KEY
from pqlflow.nurture.suppression import suppression_key

ACTION_KIND = "nurture_action"
CAP_KIND = "nurture_cap"
CAP_SK = "NURTURE#CAP"
ACTION_TTL_DAYS = 400
"""Kept for a year of conversion attribution; redeliveries come within hours or days."""


@dataclass(frozen=True)
class StoredAction:
    actions: tuple[NurtureAction, ...]
    emitted: bool
    later: Mapping[str, str] = field(default_factory=dict)
    """JSON of what emitting does besides publishing: `journey_next` (a step to schedule), `journey_stop`."""


@dataclass(frozen=True)
class Snapshot:
    stored: StoredAction | None
    state: NurtureState
    journey_item: dict[str, Any] | None = None
    """The subject's journey item as read (`pqlflow.nurture.journey_store.parse` reads it)."""


class ActionExists(Exception):
    """Another delivery of the same qualification stored its action first."""


class CapTaken(Exception):
    """A concurrent qualification claimed a frequency-cap slot first."""


class JourneyChanged(Exception):
    """The subject's journey changed between the read and the write (a stop, or another qualification)."""


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _typed(key: dict[str, str]) -> dict[str, Any]:
    return {name: {"S": value} for name, value in key.items()}


def action_key(account_id: str, transition_id: str) -> dict[str, Any]:
    return _key(f"A#{account_id}", f"NURTURE#{transition_id}")


def cap_key(scope: str, ident: str) -> dict[str, Any]:
    return _key(f"A#{ident}" if scope == "account" else f"U#{ident}", CAP_SK)


class DynamoNurtureStore:
    """Nurture actions, frequency caps and the suppression reads in the single table (boto3 client API)."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None):
        self.table = table
        self.client = client

    def read(self, q: PqlQualified, look: Lookups, *, journey_sk: str | None = None,
             extra: tuple[dict[str, Any], ...] = ()) -> Snapshot:
        """The stored action, the subject's journey item (at `journey_sk`) and the state `route` decides on.

        `extra` keys are read in the same request; their items are in `found` of `read_state`.
        """
        found = self.read_state_items(q, look, journey_sk=journey_sk, extra=extra)
        action = found.get((f"A#{q.account_id}", f"NURTURE#{q.transition_id}"))
        journey = found.get((f"A#{q.account_id}", journey_sk)) if journey_sk else None
        return Snapshot(self.stored(action) if action else None, self.state_of(q, look, found), journey)

    def read_state_items(self, q: PqlQualified, look: Lookups, *, journey_sk: str | None = None,
                         extra: tuple[dict[str, Any], ...] = ()) -> dict[tuple[str, str], dict[str, Any]]:
        keys = [action_key(q.account_id, q.transition_id), _key(f"A#{q.account_id}", "SUPPRESSED"),
                cap_key("account", q.account_id)]
        if journey_sk:
            keys.append(_key(f"A#{q.account_id}", journey_sk))
        keys += [cap_key("user", u) for u in look.user_ids]
        keys += [_typed(suppression_key(h)) for h in look.address_hashes]
        keys += [k for k in extra if k not in keys]
        return self.get_items(keys)

    @staticmethod
    def state_of(q: PqlQualified, look: Lookups, found: dict[tuple[str, str], dict[str, Any]]) -> NurtureState:
        account_cap = found.get((f"A#{q.account_id}", CAP_SK))
        state = NurtureState(
            account_suppressed=(f"A#{q.account_id}", "SUPPRESSED") in found,
            suppressed_addresses=frozenset(
                h for h in look.address_hashes if (f"SUP#{h}", SUPPRESSION_SORT_KEY) in found
            ),
            account_last_nudge_at=float(account_cap["last_at"]["N"]) if account_cap else None,
            user_last_nudge_at={u: float(item["last_at"]["N"]) for u in look.user_ids
                                if (item := found.get((f"U#{u}", CAP_SK)))},
        )
        return state

    def get_items(self, keys: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The items of `keys` that exist, by (pk, sk), in one consistent BatchGetItem."""
        return {(i["pk"]["S"], i["sk"]["S"]): i for i in self._batch_get(keys)}

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
        for _ in range(8):
            response = self.client.batch_get_item(RequestItems=request)
            items += response.get("Responses", {}).get(self.table, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return items
        raise RuntimeError(f"DynamoDB left {len(request[self.table]['Keys'])} key(s) unprocessed; will retry")

    @staticmethod
    def stored(item: dict[str, Any]) -> StoredAction:
        actions = tuple(NurtureAction.model_validate(a) for a in json.loads(item["actions"]["S"]))
        later: dict[str, str] = {name: item[name]["S"] for name in ("journey_next", "journey_stop") if name in item}
        return StoredAction(actions, bool(item.get("emitted", {}).get("BOOL")), later)

    def commit(self, q: PqlQualified, decision: Decision, policy: Policy, now: float, *,
               key: dict[str, Any] | None = None, later: dict[str, str] | None = None,
               journey_write: dict[str, Any] | None = None) -> StoredAction:
        """Store the actions and claim the caps in one transaction; raises ActionExists, CapTaken or
        JourneyChanged.

        `key` is the action item's key (default: the qualification's; journey steps have their own);
        `later` is what `emit` does besides publishing (`journey_next`: the next step to schedule,
        `journey_stop`: a stop to publish), as JSON; `journey_write` is the journey item's write.
        """
        primary = decision.primary if decision.actions else None
        item = {
            **(key or action_key(q.account_id, q.transition_id)),
            "kind": {"S": ACTION_KIND},
            "transition_id": {"S": q.transition_id},
            "policy": {"S": f"{policy.name}@{policy.version}"},
            "definition": {"S": f"{q.definition.name}@{q.definition.version}"},
            "actions": {"S": json.dumps([a.model_dump(mode="json") for a in decision.actions],
                                        separators=(",", ":"))},
            "emitted": {"BOOL": False},
            "decided_at": {"N": repr(now)},
            "expires_at": {"N": str(int(now) + ACTION_TTL_DAYS * 86_400)},
        }
        if primary is not None:
            item |= {"action_id": {"S": primary.action_id}, "channel": {"S": primary.channel},
                     "outcome": {"S": primary.outcome}}
        if decision.rule:
            item["rule"] = {"S": decision.rule}
        item |= {name: {"S": value} for name, value in (later or {}).items()}
        writes: list[dict[str, Any]] = [{"Put": {
            "TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)",
        }}]
        if journey_write is not None:
            writes.append(journey_write)
        for claim in decision.cap_claims:
            window = claim.days * 86_400
            writes.append({"Update": {
                "TableName": self.table,
                "Key": cap_key(claim.scope, claim.id),
                "UpdateExpression": "SET #kind = :kind, last_at = :now, transition_id = :tid, "
                                    "expires_at = :exp",
                "ConditionExpression": "attribute_not_exists(last_at) OR last_at <= :cutoff",
                "ExpressionAttributeNames": {"#kind": "kind"},
                "ExpressionAttributeValues": {
                    ":kind": {"S": CAP_KIND}, ":now": {"N": repr(now)}, ":tid": {"S": q.transition_id},
                    ":exp": {"N": str(int(now + window) + 1)}, ":cutoff": {"N": repr(now - window)},
                },
            }})
        try:
            self.client.transact_write_items(TransactItems=writes)
        except self.client.exceptions.TransactionCanceledException as exc:
            codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if codes and codes[0] == "ConditionalCheckFailed":
                raise ActionExists from None
            if journey_write is not None and len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                raise JourneyChanged from None
            if "ConditionalCheckFailed" in codes[1:]:
                raise CapTaken from None
            raise
        return StoredAction(decision.actions, emitted=False, later=dict(later or {}))

    def mark_emitted(self, q: PqlQualified, now: float, *, key: dict[str, Any] | None = None) -> None:
        self.client.update_item(
            TableName=self.table, Key=key or action_key(q.account_id, q.transition_id),
            UpdateExpression="SET emitted = :t, emitted_at = :now",
            ExpressionAttributeValues={":t": {"BOOL": True}, ":now": {"N": repr(now)}},
        )
