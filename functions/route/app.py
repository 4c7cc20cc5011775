"""The route function: nurture actions and journeys, each exactly once, from events on the bus.

Triggers: EventBridge rules (source `pqlflow`), one event per invocation, every one may be redelivered:
- `PQL Qualified`: decide the first action (and start the rule's journey);
- `Journey Step Due` (put by the journey's one-time schedule): run that step;
- `Account Converted`, `PQL Disqualified`, `Offer Accepted`, `Rep Task Closed`, `Email Complained`,
  `Email Bounced`: stop the journeys they end;
- `Email Delivered/Opened/Clicked`, `Offer Viewed/Dismissed`: record engagement for later steps.
The exactly-once protocols are `pqlflow.nurture.service`; schedules are `pqlflow.nurture.schedule`.
The nurture policy, policy.yaml, ships beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.contracts.emitted import JourneyStepDue, PqlQualified
from pqlflow.kernel.observability import log_id, logger, metrics, tracer
from pqlflow.nurture.journey import ENGAGEMENT_EVENTS, STOP_EVENTS
from pqlflow.nurture.service import RouteService, build

_service: RouteService | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, service: RouteService | None = None) -> dict[str, Any]:
    global _service
    if service is None:
        # A relative POLICY_FILE is next to this file: the deployed policy.yaml sits beside app.py.
        _service = _service or build(base_dir=Path(__file__).parent)
        service = _service
    detail_type = event.get("detail-type")
    if detail_type == JourneyStepDue.DETAIL_TYPE:
        return _step(service, JourneyStepDue.model_validate(event["detail"]))
    if detail_type in STOP_EVENTS:
        stops = service.handle_stop(detail_type, event.get("detail") or {})
        for stop in stops:
            logger.info("journey stopped", extra={"transition_id": stop.transition_id, "reason": stop.reason,
                                                  "after_step": stop.after_step})
            metrics.add_metric(name=f"JourneyStopped_{stop.reason}", unit=MetricUnit.Count, value=1)
        return {"stopped": len(stops)}
    if detail_type in ENGAGEMENT_EVENTS:
        return {"recorded": service.record_engagement(detail_type, event.get("detail") or {})}
    if detail_type != PqlQualified.DETAIL_TYPE:
        raise ValueError(f"route: unexpected detail-type {detail_type!r} (the rule's pattern is wrong)")
    qualification = PqlQualified.model_validate(event["detail"])
    stored, replayed = service.handle(qualification)
    for action in stored.actions:
        logger.info("nurture action", extra={
            "action_id": action.action_id, "transition_id": action.transition_id,
            "account_id": log_id(action.account_id), "channel": action.channel, "outcome": action.outcome,
            "replayed": replayed,
        })
        if not replayed:
            metrics.add_metric(name=f"NurtureOutcome_{action.outcome}", unit=MetricUnit.Count, value=1)
    if replayed:
        metrics.add_metric(name="NurtureRedeliveries", unit=MetricUnit.Count, value=1)
    primary = stored.actions[0]
    return {"action_id": primary.action_id, "channel": primary.channel, "outcome": primary.outcome,
            "actions": len(stored.actions), "replayed": replayed}


def _step(service: RouteService, due: JourneyStepDue) -> dict[str, Any]:
    result = service.handle_step(due)
    actions = result.stored.actions if result.stored else ()
    logger.info("journey step", extra={"transition_id": due.transition_id, "step": due.step, "ran": result.ran,
                                       "why": result.why, "replayed": result.replayed,
                                       "actions": [a.action_id for a in actions]})
    if not result.replayed:
        metrics.add_metric(name="JourneyStepsRun" if result.ran else "JourneyStepsNotRun", unit=MetricUnit.Count,
                           value=1)
        for action in actions:
            metrics.add_metric(name=f"NurtureOutcome_{action.outcome}", unit=MetricUnit.Count, value=1)
    return {"ran": result.ran, "why": result.why, "replayed": result.replayed,
            "actions": [{"action_id": a.action_id, "channel": a.channel, "outcome": a.outcome} for a in actions]}
