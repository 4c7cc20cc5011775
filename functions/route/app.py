"""The route function: on `PQL Qualified`, decide the one nurture action and put it on the bus, exactly once.

Trigger: an EventBridge rule on detail-type `PQL Qualified` (source `pqlflow`), so each invocation
carries one qualification and every trigger may be redelivered. The exactly-once protocol (read,
decide, one transaction, emit, mark) is `pqlflow.nurture.service`; quiet-hour deferral is
`pqlflow.nurture.schedule`. The nurture policy, policy.yaml, ships beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.contracts.emitted import PqlQualified
from pqlflow.kernel.observability import log_id, logger, metrics, tracer
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
