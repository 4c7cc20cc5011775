"""EventBridge Scheduler emulation: fire the one-time `at(...)` schedules handlers create, on pqlflow's clock.

Each pump lists the emulator's schedules; an enabled `at(...)` schedule whose time (in its
ScheduleExpressionTimezone) has been reached by `pqlflow.kernel.clock` fires once: an EventBridge bus target
becomes a PutEvents with the schedule's `Input` as detail and EventBridgeParameters' source and
detail-type (time = the schedule's time); a Lambda target an asynchronous invocation with `Input`;
an SQS target a message. Then the schedule is deleted when its ActionAfterCompletion is DELETE.
Recurring (`rate`/`cron`) schedules created at run time are not fired.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from pqlflow.kernel import clock
from pqlflow.local.aws import Clients
from pqlflow.local.names import parse_arn

log = logging.getLogger(__name__)

_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")


def due_time(expression: str, timezone: str | None) -> float | None:
    """Epoch seconds of a one-time `at(...)` expression, or None for other expressions."""
    match = _AT.match(expression.strip())
    if match is None:
        return None
    local = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=ZoneInfo(timezone or "UTC"))
    return local.timestamp()


class ScheduleRunner:
    """Fires due one-time schedules found in the emulator."""

    def __init__(
        self,
        clients: Clients,
        *,
        put_event: Callable[[dict[str, Any]], object],  # return values are not used
        invoke_async: Callable[[str, Any], None],
        send_message: Callable[[str, str], object],
        function_by_name: Callable[[str], str | None],
    ) -> None:
        self.client = clients.client("scheduler")
        self.put_event = put_event
        self.invoke_async = invoke_async
        self.send_message = send_message
        self.function_by_name = function_by_name
        self._fired: set[tuple[str, str]] = set()
        self.fired = 0

    def pump(self) -> int:
        """Fire every schedule due now; returns how many fired."""
        fired = 0
        now = clock.now()
        for group in self._groups():
            for summary in self._schedules(group):
                key = (group, summary["Name"])
                if key in self._fired or summary.get("State", "ENABLED") != "ENABLED":
                    continue
                schedule = self.client.get_schedule(Name=summary["Name"], GroupName=group)
                at = due_time(schedule.get("ScheduleExpression", ""), schedule.get("ScheduleExpressionTimezone"))
                if at is None or at > now:
                    continue
                self._fire(schedule, at)
                fired += 1
                if schedule.get("ActionAfterCompletion") == "DELETE":
                    self.client.delete_schedule(Name=summary["Name"], GroupName=group)
                else:
                    self._fired.add(key)
        self.fired += fired
        return fired

    def next_due(self) -> float | None:
        """When the earliest one-time schedule not yet fired is due (epoch seconds), if any."""
        times = []
        for group in self._groups():
            for summary in self._schedules(group):
                if (group, summary["Name"]) in self._fired or summary.get("State", "ENABLED") != "ENABLED":
                    continue
                schedule = self.client.get_schedule(Name=summary["Name"], GroupName=group)
                at = due_time(schedule.get("ScheduleExpression", ""), schedule.get("ScheduleExpressionTimezone"))
                if at is not None:
                    times.append(at)
        return min(times, default=None)

    def _groups(self) -> list[str]:
        groups: list[str] = []
        for page in self.client.get_paginator("list_schedule_groups").paginate():
            groups.extend(g["Name"] for g in page.get("ScheduleGroups", []))
        return groups

    def _schedules(self, group: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_schedules").paginate(GroupName=group):
            found.extend(page.get("Schedules", []))
        return found

    def _fire(self, schedule: dict[str, Any], at: float) -> None:
        target = schedule.get("Target") or {}
        arn = parse_arn(str(target.get("Arn", "")))
        payload = target.get("Input")
        if arn is not None and arn.service == "events" and arn.resource.startswith("event-bus/"):
            parameters = target.get("EventBridgeParameters") or {}
            self.put_event(
                {
                    "Source": parameters.get("Source", "aws.scheduler"),
                    "DetailType": parameters.get("DetailType", "Scheduled Event"),
                    "Detail": payload or "{}",
                    "EventBusName": arn.name,
                    "Time": dt.datetime.fromtimestamp(at, tz=dt.UTC),
                }
            )
        elif arn is not None and arn.service == "lambda" and self.function_by_name(arn.name):
            self.invoke_async(self.function_by_name(arn.name) or "", json.loads(payload) if payload else {})
        elif arn is not None and arn.service == "sqs":
            self.send_message(arn.name, payload or "")
        else:
            log.warning("schedule %s: target %s is not emulated", schedule.get("Name"), target.get("Arn"))
