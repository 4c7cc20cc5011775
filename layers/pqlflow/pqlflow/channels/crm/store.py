"""DynamoDB adapter for CRM sync: one sync record per (account, target, transition) and, per (account,
target), the newest transition claimed for the record, so an older one arriving later never overwrites it.

Layout (the shared table, `pk`/`sk`):
- sync record   pk `A#<account_id>`   sk `CRM#<target>#<transition_id>`   kind `crm_sync`
- record state  pk `A#<account_id>`   sk `CRM#<target>`                   kind `crm_state`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pqlflow.kernel import clock
from pqlflow.kernel.items import TableStore, conditional, from_item, to_item

SyncStatus = Literal["written", "skipped", "superseded", "failed"]
FINAL: frozenset[str] = frozenset({"written", "skipped", "superseded"})


@dataclass(frozen=True)
class SyncRecord:
    status: SyncStatus
    reason: str | None = None
    ref: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Claim:
    sequence: int
    transition_id: str | None
    record: str | None  # the claiming transition's record, as JSON (claims made before it was kept: None)


def sync_key(account_id: str, target: str, transition_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"CRM#{target}#{transition_id}"}}


def state_key(account_id: str, target: str) -> dict[str, Any]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"CRM#{target}"}}


class CrmSyncStore(TableStore):
    def get(self, account_id: str, target: str, transition_id: str) -> SyncRecord | None:
        item = self.client.get_item(
            TableName=self.table, Key=sync_key(account_id, target, transition_id), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        doc = from_item(item)
        return SyncRecord(doc["status"], doc.get("reason"), doc.get("ref"), int(doc.get("attempts", 0)))

    def claim(self, account_id: str, target: str, sequence: int, transition_id: str, record: str) -> bool:
        """Make this transition the newest for the record, unless a newer one (higher sequence) already is;
        the same transition may claim again (its redelivery). `record` (its JSON) is kept with the claim, so
        that an older transition whose write lands after the newer one's can write the newer one again."""
        return conditional(
            self.client.update_item,
            TableName=self.table,
            Key=state_key(account_id, target),
            UpdateExpression="SET kind = :kind, #seq = :seq, transition_id = :tid, #record = :record",
            ConditionExpression="attribute_not_exists(#seq) OR #seq < :seq OR (#seq = :seq AND transition_id = :tid)",
            ExpressionAttributeNames={"#seq": "sequence", "#record": "record"},
            ExpressionAttributeValues={
                ":kind": {"S": "crm_state"}, ":seq": {"N": str(sequence)}, ":tid": {"S": transition_id},
                ":record": {"S": record},
            },
        )

    def claimed(self, account_id: str, target: str) -> Claim:
        """The newest claim for the record (a zero sequence before any)."""
        item = self.client.get_item(TableName=self.table, Key=state_key(account_id, target), ConsistentRead=True)
        doc = from_item(item["Item"]) if item.get("Item") else {}
        return Claim(int(doc.get("sequence", 0)), doc.get("transition_id"), doc.get("record"))

    def finish(self, account_id: str, target: str, transition_id: str, record: SyncRecord) -> None:
        doc: dict[str, Any] = {
            "pk": f"A#{account_id}", "sk": f"CRM#{target}#{transition_id}", "kind": "crm_sync",
            "status": record.status, "attempts": record.attempts, "updated_at": int(clock.now()),
        }
        doc |= {k: v for k, v in (("reason", record.reason), ("ref", record.ref)) if v is not None}
        self.client.put_item(TableName=self.table, Item=to_item(doc))
