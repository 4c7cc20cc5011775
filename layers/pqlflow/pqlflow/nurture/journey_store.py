"""DynamoDB adapter for journeys: the journey item of each subject, its steps' records, its stops.

Layout (the single table, beside `pqlflow.nurture.store`):
- journey       pk `A#<account_id>`  sk `JOURNEY` (or `JOURNEY#U#<user_id>`)   kind `nurture_journey`
  transition_id, qualified_at, rule, steps, next_step, status (active | stopped | completed), started_at,
  eng (string set of `<step>:<engagement>`), stop (the `Journey Stopped` JSON), stop_emitted
- step record   pk `A#<account_id>`  sk `NURTURE#<transition_id>#S<step>`       kind `nurture_action`
  the step's actions (none when its `when` did not hold), emitted, and `journey_next`: the next step

The journey item is small (of the qualification only its time, `qualified_at`, which orders it against
a disqualification or a qualification routed late; the rest is on the first action's item), so the
engagement updates and the step's conditional advance cost 1 WRU each.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pqlflow.contracts.emitted import JourneyStopped
from pqlflow.kernel.aws import AwsClient
from pqlflow.nurture.journey import Journey, subject_sk
from pqlflow.nurture.policy import Policy, Rule

JOURNEY_KIND = "nurture_journey"
JOURNEY_TTL_DAYS = 400


def journey_key(account_id: str, user_id: str | None) -> dict[str, Any]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": subject_sk(user_id)}}


def step_key(account_id: str, transition_id: str, step: int) -> dict[str, Any]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"NURTURE#{transition_id}#S{step}"}}


def parse(item: dict[str, Any] | None) -> Journey | None:
    if item is None:
        return None
    user = item.get("user_id", {}).get("S")
    seen = set()
    for entry in item.get("eng", {}).get("SS", []):
        step, _, kind = entry.partition(":")
        if step.isdigit() and kind:
            seen.add((int(step), kind))
    stop = item.get("stop", {}).get("S")
    return Journey(
        account_id=item["pk"]["S"].removeprefix("A#"), user_id=user,
        transition_id=item["transition_id"]["S"], rule=item["rule"]["S"], steps=int(item["steps"]["N"]),
        next_step=int(item["next_step"]["N"]), status=item["status"]["S"],
        started_at=float(item["started_at"]["N"]), engagement=frozenset(seen),
        stop=JourneyStopped.model_validate_json(stop) if stop else None,
        stop_emitted=bool(item.get("stop_emitted", {}).get("BOOL")),
        qualified_at=item.get("qualified_at", {}).get("S"),
    )


def _if_unchanged(old: Journey | None) -> tuple[str, dict[str, Any]]:
    """A condition that holds only if the journey item is still what was read."""
    if old is None:
        return "attribute_not_exists(pk)", {}
    return ("transition_id = :old_tid AND #status = :old_status AND next_step = :old_next",
            {":old_tid": {"S": old.transition_id}, ":old_status": {"S": old.status},
             ":old_next": {"N": str(old.next_step)}})


class JourneyStore:
    """Journey items and their updates (boto3 client API)."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None):
        self.table = table
        self.client = client

    # --- writes that go into a transaction of the nurture store -------------------------------------

    def start(self, *, account_id: str, user_id: str | None, transition_id: str, qualified_at: str, rule: Rule,
              policy: Policy, now: float, old: Journey | None) -> dict[str, Any]:
        """The Put that starts a journey (replacing `old`, if it is still as read)."""
        condition, values = _if_unchanged(old)
        item = {
            **journey_key(account_id, user_id), "kind": {"S": JOURNEY_KIND},
            "transition_id": {"S": transition_id}, "qualified_at": {"S": qualified_at}, "rule": {"S": rule.name},
            "policy": {"S": f"{policy.name}@{policy.version}"}, "steps": {"N": str(len(rule.steps))},
            "next_step": {"N": "1"}, "status": {"S": "active"}, "started_at": {"N": repr(now)},
            "expires_at": {"N": str(int(now) + JOURNEY_TTL_DAYS * 86_400)},
        }
        if user_id is not None:
            item["user_id"] = {"S": user_id}
        put: dict[str, Any] = {"TableName": self.table, "Item": item, "ConditionExpression": condition}
        if values:
            put |= {"ExpressionAttributeNames": {"#status": "status"}, "ExpressionAttributeValues": values}
        return {"Put": put}

    def end(self, journey: Journey, stop: JourneyStopped, *, published_elsewhere: bool = False) -> dict[str, Any]:
        """The Update that ends an active journey as read (a stop, or completion), keeping the stop to publish.

        `published_elsewhere`: an action item in the same transaction publishes the stop (its `emit`), so
        the journey item records it as published already.
        """
        condition, values = _if_unchanged(journey)
        return {"Update": {
            "TableName": self.table, "Key": journey_key(journey.account_id, journey.user_id),
            "UpdateExpression": "SET #status = :status, stop = :stop, stop_emitted = :f, stopped_at = :at",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                **values, ":status": {"S": "completed" if stop.reason == "completed" else "stopped"},
                ":stop": {"S": stop.model_dump_json()}, ":f": {"BOOL": published_elsewhere},
                ":at": {"S": stop.stopped_at},
            },
        }}

    def advance(self, journey: Journey, stop: JourneyStopped | None) -> dict[str, Any]:
        """The Update that moves an active journey past its next step (and completes it after the last)."""
        if stop is not None:
            write = self.end(journey, stop, published_elsewhere=True)
            update = write["Update"]
            update["UpdateExpression"] += ", next_step = :next"
            update["ExpressionAttributeValues"][":next"] = {"N": str(journey.next_step + 1)}
            return write
        condition, values = _if_unchanged(journey)
        return {"Update": {
            "TableName": self.table, "Key": journey_key(journey.account_id, journey.user_id),
            "UpdateExpression": "SET next_step = :next", "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {**values, ":next": {"N": str(journey.next_step + 1)}},
        }}

    # --- reads and single writes --------------------------------------------------------------------

    def of_account(self, account_id: str) -> list[Journey]:
        """Every journey of the account (one per subject), read consistently."""
        journeys: list[Journey] = []
        request: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": f"A#{account_id}"}, ":prefix": {"S": "JOURNEY"}},
        }
        while True:
            response = self.client.query(**request)
            journeys += [j for item in response.get("Items", []) if (j := parse(item))]
            if "LastEvaluatedKey" not in response:
                return journeys
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def stop(self, journey: Journey, stop: JourneyStopped) -> bool:
        """End the journey if it is still as read; False when something changed it first."""
        update = self.end(journey, stop)["Update"]
        try:
            self.client.update_item(**update)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def mark_stop_emitted(self, journey: Journey) -> None:
        self.client.update_item(
            TableName=self.table, Key=journey_key(journey.account_id, journey.user_id),
            UpdateExpression="SET stop_emitted = :t", ConditionExpression="transition_id = :tid",
            ExpressionAttributeValues={":t": {"BOOL": True}, ":tid": {"S": journey.transition_id}},
        )

    def engaged(self, journey: Journey, step: int, kind: str) -> None:
        """Record engagement with a step; a replaced journey (another qualification) is left alone."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table, Key=journey_key(journey.account_id, journey.user_id),
                UpdateExpression="ADD eng :e", ConditionExpression="transition_id = :tid",
                ExpressionAttributeValues={":e": {"SS": [f"{step}:{kind}"]},
                                           ":tid": {"S": journey.transition_id}},
            )
