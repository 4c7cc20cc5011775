"""EventBridge emulation: see every event put on the template's buses; deliver it to matching rules' targets.

How events come in, two ways:
- PutEvents calls made in-process (by the runtime, or by a handler while it runs: the botocore hook in
  `pqlflow.local.calls` hands the request here) are validated and stamped by `pqlflow.local.putevents`
  and queued for routing. They do not go through moto's EventBridge, which parses JSONPath templates
  for every event and rule (~25 ms each): far too slow for a replay.
- Anything else (a product team's SDK pointed at a dev stack's endpoint) goes through the emulator's
  PutEvents: on each bus the template's rules listen to, the runtime adds one catch-all rule whose
  target is a capture SQS queue, which `pump` drains.

`pump` matches each event against the template's rules with `pqlflow.local.patterns` (the
emulator's rules are never given the template's patterns) and delivers it: into the target SQS queue
(held by the runtime, see `pqlflow.local.queues`), or to the target function (an asynchronous
invocation, run in-process). Events handlers emit are delivered on the next pump, not during the call.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from pqlflow.local.aws import Clients
from pqlflow.local.model import Rule, RuleTarget, Wiring
from pqlflow.local.names import queue_arn, rule_arn
from pqlflow.local.patterns import matches
from pqlflow.local.putevents import accept
from pqlflow.local.queues import Queues
from pqlflow.local.quirks import eventbridge_envelope
from pqlflow.local.targets import render_input

log = logging.getLogger(__name__)

CAPTURE_RULE = "pqlflow-local-capture"
# The catch-all input template keeps the whole envelope (moto's default one drops `account`).
_CAPTURE_TARGET_INPUT = {"InputTemplate": "<aws.events.event.json>"}


class EventRouter:
    """Captures events on the buses the template's rules use and routes them to rule targets."""

    def __init__(
        self,
        wiring: Wiring,
        clients: Clients,
        queues: Queues,
        invoke_async: Callable[[str, Any], None],
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.wiring = wiring
        self.clients = clients
        self.queues = queues
        self.invoke_async = invoke_async
        self.on_event = on_event
        self.capture_urls: dict[str, str] = {}
        self.delivered: dict[str, int] = {}
        self.events_seen = 0
        self.pending: deque[tuple[str, dict[str, Any]]] = deque()
        self.buses = {bus.name for bus in wiring.buses.values()} | {"default"}

    def put_events(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """A PutEvents request made in-process: its API response; accepted events wait for `pump`."""
        results, accepted = accept(entries, self.buses)
        self.pending.extend(accepted)
        return {"FailedEntryCount": sum(1 for r in results if "ErrorCode" in r), "Entries": results}

    def setup(self) -> None:
        buses = sorted({rule.bus_name for rule in self.wiring.rules})
        for bus in buses:
            if "/" in bus:
                # The emulator cannot put rules on partner buses; in-process PutEvents still reach them.
                log.warning("events put on %s through the emulator's endpoint are not seen locally", bus)
                continue
            name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.wiring.stack_name}-capture-{bus}")[:80]
            url = self.clients.sqs.create_queue(QueueName=name)["QueueUrl"]
            self.clients.events.put_rule(
                Name=CAPTURE_RULE,
                EventBusName=bus,
                EventPattern=json.dumps({"source": [{"exists": True}]}),
                State="ENABLED",
            )
            self.clients.events.put_targets(
                Rule=CAPTURE_RULE,
                EventBusName=bus,
                Targets=[{"Id": "capture", "Arn": queue_arn(name), "InputTransformer": _CAPTURE_TARGET_INPUT}],
            )
            self.capture_urls[bus] = url

    def pump(self) -> int:
        """Route the events put before this pump; returns how many there were.

        Events the targets put meanwhile wait for the next pump, so a loop between functions shows up
        as rounds that never end (see `LocalRuntime.run_until_idle(max_rounds)`).
        """
        taken = 0
        for _ in range(len(self.pending)):
            bus, event = self.pending.popleft()
            self.route(bus, event)
            taken += 1
        for bus, url in self.capture_urls.items():
            while True:
                messages = self.clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    self.route(bus, eventbridge_envelope(json.loads(message["Body"])))
                self.clients.sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
                )
                taken += len(messages)
        return taken

    def route(self, bus: str, event: dict[str, Any]) -> int:
        """Deliver `event` to the targets of every enabled rule on `bus` that matches it."""
        self.events_seen += 1
        if self.on_event is not None:
            self.on_event(bus, event)
        deliveries = 0
        for rule in self.wiring.rules:
            if rule.bus_name != bus or not rule.enabled or not matches(rule.pattern, event):
                continue
            for target in rule.targets:
                self._deliver(rule, target, event)
                deliveries += 1
            self.delivered[rule.logical_id] = self.delivered.get(rule.logical_id, 0) + 1
        return deliveries

    def _deliver(self, rule: Rule, target: RuleTarget, event: dict[str, Any]) -> None:
        payload = render_input(target, event, rule_name=rule.name, rule_arn=rule_arn(rule.name, rule.bus_name))
        if target.kind == "sqs":
            fifo = target.name.endswith(".fifo")
            self.queues[target.name].send(
                payload,
                group_id=(target.message_group_id or rule.name) if fifo else None,
                dedup_id=event.get("id") if fifo else None,
            )
        elif target.kind == "function":
            try:
                value = json.loads(payload)
            except ValueError:
                value = payload
            self.invoke_async(target.name, value)
        else:
            log.debug("rule %s: target %s is not emulated; event dropped", rule.name, target.arn)
