"""The rep-task function's work: its settings, the connectors wired from them, and `process`, which on a
`Nurture Action` with channel `rep_task` stores one task for the account's owner (or the next rep in the
round-robin), emits `Rep Task Created` once, and delivers it through the configured connectors.

A delivery that still fails leaves the task stored as `delivery_failed` and raises `TaskDeliveryFailed` so
the trigger retries; connectors already delivered are not called again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pqlflow.channels.rep_tasks.connectors import Connector, build_connectors, parse_names
from pqlflow.channels.rep_tasks.http import Backoff, DeliveryError, Http
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.channels.rep_tasks.task import (
    Delivery,
    RepTask,
    Roster,
    build_task,
    choose_owner,
    load_roster,
    pick_round_robin,
    settle,
)
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import NurtureAction, PqlQualified
from pqlflow.kernel import clock
from pqlflow.kernel.observability import log_id, logger, metrics


class RepTaskSettings(BaseModel):
    """The rep-task function's environment; the function's own subclass sets `function_dir`."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    function_dir: ClassVar[Path]  # relative files are read from here (the handler's folder, Lambda's task root)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    ROSTER_FILE: str = Field(default="roster.yaml", description="relative paths are next to the handler file")
    CONNECTORS: str = Field(default="", description="e.g. 'hubspot,slack,webhook'")
    CONNECTOR_SECRET_ARN: str = ""
    # Worst case with the defaults (HubSpot search+create, Slack, webhook; 3 tries of 4 s each) stays
    # under the 60 s function timeout.
    CONNECTOR_TIMEOUT_SECONDS: float = Field(default=4.0, gt=0, le=30)
    CONNECTOR_ATTEMPTS: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _secret_when_connectors(self) -> RepTaskSettings:
        if parse_names(self.CONNECTORS) and not self.CONNECTOR_SECRET_ARN:
            raise ValueError("CONNECTOR_SECRET_ARN is required when CONNECTORS is set")
        return self

    def roster_path(self) -> Path:
        path = Path(self.ROSTER_FILE)
        return path if path.is_absolute() else self.function_dir / path


_secrets: dict[str, dict[str, Any]] = {}


def connector_secret(arn: str, client: Any = None) -> dict[str, Any]:
    """The connectors' credentials (JSON in Secrets Manager), fetched once per cold start."""
    if arn not in _secrets:
        if client is None:
            import boto3  # created on first use only

            client = boto3.client("secretsmanager")
        doc = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
        if not isinstance(doc, dict):
            raise RuntimeError("connector secret: expected a JSON object")
        _secrets[arn] = doc
    return _secrets[arn]


@dataclass
class Collaborators:
    store: RepTaskStore
    publisher: EventPublisher
    roster: Roster
    connectors: list[Connector]

    @classmethod
    def from_settings(cls, s: RepTaskSettings) -> Collaborators:
        """The deployed collaborators: the table, the bus, the roster file and the configured connectors."""
        names = parse_names(s.CONNECTORS)
        http = Http(timeout=s.CONNECTOR_TIMEOUT_SECONDS, backoff=Backoff(attempts=s.CONNECTOR_ATTEMPTS))
        connectors = build_connectors(names, connector_secret(s.CONNECTOR_SECRET_ARN), http) if names else []
        return cls(
            store=RepTaskStore(s.TABLE_NAME),
            publisher=EventPublisher(s.EVENT_BUS_NAME),
            roster=load_roster(s.roster_path()),
            connectors=connectors,
        )


class TaskDeliveryFailed(Exception):
    """Raised after the task is stored, so the trigger retries the delivery later."""


def _create(action: NurtureAction, q: PqlQualified, c: Collaborators) -> RepTask:
    existing = c.store.get(q.account_id, q.transition_id, action.step)
    if existing is not None:
        return existing
    now = datetime.fromtimestamp(clock.now(), tz=UTC)
    choice = choose_owner(q, c.roster)
    if choice.source == "trait":
        assert choice.owner is not None
        return c.store.create(build_task(action, q, choice.owner, "trait", c.roster, now))
    assert choice.pool is not None

    def for_slot(slot: int) -> RepTask:
        return build_task(action, q, pick_round_robin(choice.eligible, slot), "round_robin", c.roster, now)

    return c.store.create_round_robin(choice.pool, q.transition_id, for_slot, step=action.step)


def process(action: NurtureAction, c: Collaborators) -> dict[str, Any]:
    if action.channel != "rep_task" or action.outcome != "send":
        metrics.add_metric(name="RepTaskActionsIgnored", unit=MetricUnit.Count, value=1)
        return {"outcome": "ignored", "action_id": action.action_id}
    q = PqlQualified.model_validate(action.context)
    task = _create(action, q, c)
    log = {"task_id": task.task_id, "account_id": log_id(task.account_id), "owner_source": task.owner_source}

    if not task.created_published:
        c.store.put_pointer(task)  # before the event: callbacks can find every task announced
        c.publisher.publish([task.created_event()])
        c.store.mark_published(task)
        metrics.add_metric(name="RepTasksCreated", unit=MetricUnit.Count, value=1)
        logger.info("rep task created", extra=log)

    failed: list[str] = []
    for connector in c.connectors:
        done = task.deliveries.get(connector.name)
        if done is not None and done.status == "delivered":
            continue
        try:
            ref, attempts = connector.deliver(task)
            delivery = Delivery(status="delivered", ref=ref, attempts=attempts)
            if connector.name == "hubspot" and ref:
                c.store.put_pointer(task, hubspot_id=ref)  # HubSpot's webhooks name its own task id
        except DeliveryError as exc:
            delivery = Delivery(status="failed", error=str(exc), attempts=exc.attempts)
            failed.append(connector.name)
            logger.warning(
                "rep task delivery failed",
                extra=log | {"connector": connector.name, "error": str(exc), "transient": exc.transient},
            )
            metrics.add_metric(name="RepTaskDeliveryFailures", unit=MetricUnit.Count, value=1)
        c.store.record_delivery(task, connector.name, delivery)
        task.deliveries[connector.name] = delivery

    status = settle(task, [x.name for x in c.connectors])
    if status != task.status:
        c.store.set_status(task, status)
    if failed:
        raise TaskDeliveryFailed(f"task {task.task_id}: delivery failed for {', '.join(failed)}; kept for retry")
    return {"outcome": status, "task_id": task.task_id, "owner": task.owner, "action_id": action.action_id}
