"""Later work on the bus: quiet-hour emails and journey steps, as EventBridge Scheduler one-time schedules.

Scheduler rather than an SQS delay queue: SQS delays stop at 15 minutes and quiet-hour waits last up
to a weekend. Each schedule is `at(<send_after>)` in UTC with `ActionAfterCompletion: DELETE` and an
EventBridge PutEvents target that puts the same action, outcome `send`, on the bus at `send_after`.
Channel rules must therefore match `outcome: ["send"]`. Schedule names are deterministic, so a retried
delivery finds the schedule an earlier attempt created. A journey's next step is the same kind of
schedule putting `Journey Step Due` (`put_later`). A stopped journey deletes its pending step's
schedule (`cancel`; the step would find the journey stopped anyway) and the schedules of its emails
still waiting for the sending window (`unschedule`: nothing downstream checks the journey, so a waiting
email would otherwise go out after the stop).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any, Protocol

from pqlflow.contracts.emitted import SOURCE, NurtureAction, _Detail
from pqlflow.kernel.aws import AwsClient


class Deferrer(Protocol):
    def schedule(self, delivery: NurtureAction, at: datetime) -> None: ...

    def put_later(self, name: str, detail: _Detail, at: datetime, description: str) -> None: ...

    def cancel(self, name: str) -> None: ...

    def unschedule(self, delivery: NurtureAction) -> None: ...


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
        self.put_later(self.name(delivery), delivery, at,
                       f"pqlflow: deliver nurture action {delivery.action_id} after quiet hours")

    def put_later(self, name: str, detail: _Detail, at: datetime, description: str) -> None:
        """Put `detail` on the bus at `at`; a schedule of that name already there is this same one."""
        target: dict[str, Any] = {
            "Arn": self.bus_arn,
            "RoleArn": self.role_arn,
            "EventBridgeParameters": {"DetailType": detail.DETAIL_TYPE, "Source": SOURCE},
            "Input": json.dumps(detail.model_dump(mode="json"), separators=(",", ":")),
            "RetryPolicy": {"MaximumEventAgeInSeconds": 86_400, "MaximumRetryAttempts": 185},
        }
        if self.dlq_arn:
            target["DeadLetterConfig"] = {"Arn": self.dlq_arn}
        # An existing schedule was created by an earlier attempt of this same delivery.
        with contextlib.suppress(self.client.exceptions.ConflictException):
            self.client.create_schedule(
                Name=name,
                GroupName=self.group,
                ScheduleExpression=f"at({at.astimezone(UTC):%Y-%m-%dT%H:%M:%S})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target=target,
                Description=description,
            )

    def cancel(self, name: str) -> None:
        """Delete a pending schedule; one already fired (and deleted) or never made is fine."""
        with contextlib.suppress(self.client.exceptions.ResourceNotFoundException):
            self.client.delete_schedule(Name=name, GroupName=self.group)

    def unschedule(self, delivery: NurtureAction) -> None:
        """Delete a deferred action's schedule (`schedule`); one already fired or never made is fine."""
        self.cancel(self.name(delivery))
