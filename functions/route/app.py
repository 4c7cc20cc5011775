"""The route function: on `PQL Qualified`, decide the one nurture action and put it on the bus, exactly once.

Trigger: an EventBridge rule on detail-type `PQL Qualified` (source `pqlflow`), so each invocation
carries one qualification and every trigger may be redelivered. The decision is the pure
`pqlflow.nurture.routing.route`; this module only reads its inputs, stores the result and emits it:

1. One consistent BatchGetItem reads the stored action (`A#<account>` / `NURTURE#<transition_id>`),
   account suppression (`A#<account>` / `SUPPRESSED`), the frequency-cap items (`A#<account>` and
   `U#<user>` / `NURTURE#CAP`) and the candidate recipients' suppression entries (`SUP#<sha256>` /
   `EMAIL`). A stored action means this trigger is a redelivery: go to step 4.
2. `route(...)` decides, on `pqlflow.kernel.clock` time (replay runs on simulated time).
3. One TransactWriteItems stores the action item (condition: not there yet) and claims the cap slots
   (condition: no nudge within the cap). Either all of it happens or none: a lost race on the action
   item means another delivery stored it (go to 4); a lost race on a cap means a concurrent
   qualification nudged first, so the state is re-read and the decision made again (now `capped`).
4. If the stored action is not marked emitted: create the EventBridge Scheduler one-time schedules of
   deferred emails (idempotent: deterministic names, an existing one is fine), publish the actions as
   `Nurture Action`, then mark the item emitted. A crash anywhere before the mark is repaired by the
   redelivery; a crash between publish and mark publishes the same action again, with the same
   `action_id`, so consumers dedupe on `action_id` (they must anyway: EventBridge delivers at least once).

Deferral (quiet hours) uses EventBridge Scheduler rather than an SQS delay queue: SQS delays stop at
15 minutes and quiet-hour waits last up to a weekend. Each schedule is `at(<send_after>)` in UTC with
`ActionAfterCompletion: DELETE` and an EventBridge PutEvents target that puts the same action, outcome
`send`, on the bus at `send_after`. Channel rules must therefore match `outcome: ["send"]`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import SOURCE, NurtureAction, PqlQualified
from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.policy import Policy, load_policy
from pqlflow.nurture.routing import Decision, Lookups, NurtureState, lookups, route, scheduled_delivery
from pqlflow.nurture.suppression import SORT_KEY as SUPPRESSION_SORT_KEY
from pqlflow.nurture.suppression import suppression_key
from pydantic import BaseModel, ConfigDict, Field

ACTION_KIND = "nurture_action"
CAP_KIND = "nurture_cap"
CAP_SK = "NURTURE#CAP"
ACTION_TTL_DAYS = 400
"""Kept for a year of conversion attribution; redeliveries come within hours or days."""
MAX_DECIDE_ATTEMPTS = 3
MIN_SCHEDULE_LEAD = timedelta(minutes=1)


class RouteSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    EVENT_BUS_ARN: str = Field(min_length=1, description="target of the deferral schedules")
    SCHEDULER_ROLE_ARN: str = Field(min_length=1, description="role Scheduler assumes to put on the bus")
    SCHEDULE_GROUP: str = "default"
    SCHEDULE_DLQ_ARN: str | None = Field(default=None, description="SQS queue: schedules that never deliver")
    POLICY_FILE: str = Field(default="policy.yaml", description="relative paths are next to this file")

    def policy_path(self) -> Path:
        path = Path(self.POLICY_FILE)
        return path if path.is_absolute() else Path(__file__).parent / path


# --- adapters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAction:
    actions: tuple[NurtureAction, ...]
    emitted: bool


@dataclass(frozen=True)
class Snapshot:
    stored: StoredAction | None
    state: NurtureState


class ActionExists(Exception):
    """Another delivery of the same qualification stored its action first."""


class CapTaken(Exception):
    """A concurrent qualification claimed a frequency-cap slot first."""


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

    def read(self, q: PqlQualified, look: Lookups) -> Snapshot:
        keys = [action_key(q.account_id, q.transition_id), _key(f"A#{q.account_id}", "SUPPRESSED"),
                cap_key("account", q.account_id)]
        keys += [cap_key("user", u) for u in look.user_ids]
        keys += [_typed(suppression_key(h)) for h in look.address_hashes]
        found = {(i["pk"]["S"], i["sk"]["S"]): i for i in self._batch_get(keys)}
        action = found.get((f"A#{q.account_id}", f"NURTURE#{q.transition_id}"))
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
        return Snapshot(self._stored(action) if action else None, state)

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
    def _stored(item: dict[str, Any]) -> StoredAction:
        actions = tuple(NurtureAction.model_validate(a) for a in json.loads(item["actions"]["S"]))
        return StoredAction(actions, bool(item.get("emitted", {}).get("BOOL")))

    def commit(self, q: PqlQualified, decision: Decision, policy: Policy, now: float) -> StoredAction:
        """Store the actions and claim the caps in one transaction; raises ActionExists or CapTaken."""
        primary = decision.primary
        item = {
            **action_key(q.account_id, q.transition_id),
            "kind": {"S": ACTION_KIND},
            "action_id": {"S": primary.action_id},
            "transition_id": {"S": q.transition_id},
            "channel": {"S": primary.channel},
            "outcome": {"S": primary.outcome},
            "policy": {"S": f"{policy.name}@{policy.version}"},
            "definition": {"S": f"{q.definition.name}@{q.definition.version}"},
            "actions": {"S": json.dumps([a.model_dump(mode="json") for a in decision.actions],
                                        separators=(",", ":"))},
            "emitted": {"BOOL": False},
            "decided_at": {"N": repr(now)},
            "expires_at": {"N": str(int(now) + ACTION_TTL_DAYS * 86_400)},
        }
        if decision.rule:
            item["rule"] = {"S": decision.rule}
        writes: list[dict[str, Any]] = [{"Put": {
            "TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)",
        }}]
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
            if "ConditionalCheckFailed" in codes[1:]:
                raise CapTaken from None
            raise
        return StoredAction(decision.actions, emitted=False)

    def mark_emitted(self, q: PqlQualified, now: float) -> None:
        self.client.update_item(
            TableName=self.table, Key=action_key(q.account_id, q.transition_id),
            UpdateExpression="SET emitted = :t, emitted_at = :now",
            ExpressionAttributeValues={":t": {"BOOL": True}, ":now": {"N": repr(now)}},
        )


class Deferrer(Protocol):
    def schedule(self, delivery: NurtureAction, at: datetime) -> None: ...


class SchedulerDeferrer:
    """Puts a deferred action on the bus later through an EventBridge Scheduler one-time schedule."""

    client = AwsClient("scheduler")

    def __init__(
        self, *, group: str, bus_arn: str, role_arn: str, dlq_arn: str | None = None, client: Any = None
    ):
        self.group, self.bus_arn, self.role_arn, self.dlq_arn = group, bus_arn, role_arn, dlq_arn
        self.client = client

    @staticmethod
    def name(delivery: NurtureAction) -> str:
        return f"pqlflow-{delivery.action_id}"  # deterministic: a retry finds its own schedule

    def schedule(self, delivery: NurtureAction, at: datetime) -> None:
        target: dict[str, Any] = {
            "Arn": self.bus_arn,
            "RoleArn": self.role_arn,
            "EventBridgeParameters": {"DetailType": NurtureAction.DETAIL_TYPE, "Source": SOURCE},
            "Input": json.dumps(delivery.model_dump(mode="json"), separators=(",", ":")),
            "RetryPolicy": {"MaximumEventAgeInSeconds": 86_400, "MaximumRetryAttempts": 185},
        }
        if self.dlq_arn:
            target["DeadLetterConfig"] = {"Arn": self.dlq_arn}
        # An existing schedule was created by an earlier attempt of this same delivery.
        with contextlib.suppress(self.client.exceptions.ConflictException):
            self.client.create_schedule(
                Name=self.name(delivery),
                GroupName=self.group,
                ScheduleExpression=f"at({at.astimezone(UTC):%Y-%m-%dT%H:%M:%S})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target=target,
                Description=f"pqlflow: deliver nurture action {delivery.action_id} after quiet hours",
            )


class Publisher(Protocol):
    def publish(self, details: Sequence[NurtureAction]) -> int: ...


# --- the route service ------------------------------------------------------------------------------


@dataclass
class RouteService:
    policy: Policy
    store: DynamoNurtureStore
    publisher: Publisher
    deferrer: Deferrer

    def handle(self, q: PqlQualified) -> tuple[StoredAction, bool]:
        """Decide (or find) the qualification's actions and make sure they are on the bus.

        Returns the stored actions and whether they had been decided by an earlier delivery.
        """
        now = clock.now()
        look = lookups(q)
        snapshot = self.store.read(q, look)
        replayed = snapshot.stored is not None
        for _ in range(MAX_DECIDE_ATTEMPTS):
            if snapshot.stored is not None:
                break
            decision = route(q, self.policy, snapshot.state, now)
            try:
                snapshot = Snapshot(self.store.commit(q, decision, self.policy, now), snapshot.state)
            except ActionExists:
                replayed = True
                snapshot = self.store.read(q, look)
            except CapTaken:
                snapshot = self.store.read(q, look)  # a concurrent nudge won: decide again, now capped
        stored = snapshot.stored
        if stored is None:
            raise RuntimeError(f"transition {q.transition_id}: caps kept changing; the trigger will retry")
        if not stored.emitted:
            self.emit(q, stored, now)
        return stored, replayed

    def emit(self, q: PqlQualified, stored: StoredAction, now: float) -> None:
        earliest = datetime.fromtimestamp(now, UTC) + MIN_SCHEDULE_LEAD
        for action in stored.actions:
            if action.outcome == "deferred" and action.send_after:
                send_after = datetime.fromisoformat(action.send_after)
                self.deferrer.schedule(scheduled_delivery(action), max(send_after, earliest))
        self.publisher.publish(list(stored.actions))
        self.store.mark_emitted(q, now)


_service: RouteService | None = None


def build(settings: RouteSettings | None = None) -> RouteService:
    """The service with real adapters; built once per cold start, on the first invocation."""
    settings = settings or from_environ(RouteSettings)
    return RouteService(
        policy=load_policy(settings.policy_path()),
        store=DynamoNurtureStore(settings.TABLE_NAME),
        publisher=EventPublisher(settings.EVENT_BUS_NAME),
        deferrer=SchedulerDeferrer(group=settings.SCHEDULE_GROUP, bus_arn=settings.EVENT_BUS_ARN,
                                   role_arn=settings.SCHEDULER_ROLE_ARN, dlq_arn=settings.SCHEDULE_DLQ_ARN),
    )


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, service: RouteService | None = None) -> dict[str, Any]:
    global _service
    if service is None:
        _service = _service or build()
        service = _service
    qualification = PqlQualified.model_validate(event["detail"])
    stored, replayed = service.handle(qualification)
    for action in stored.actions:
        logger.info("nurture action", extra={
            "action_id": action.action_id, "transition_id": action.transition_id,
            "account_id": action.account_id, "channel": action.channel, "outcome": action.outcome,
            "replayed": replayed,
        })
        if not replayed:
            metrics.add_metric(name=f"NurtureOutcome_{action.outcome}", unit=MetricUnit.Count, value=1)
    if replayed:
        metrics.add_metric(name="NurtureRedeliveries", unit=MetricUnit.Count, value=1)
    primary = stored.actions[0]
    return {"action_id": primary.action_id, "channel": primary.channel, "outcome": primary.outcome,
            "actions": len(stored.actions), "replayed": replayed}
