"""The qualify function: usage-state changes (the table stream) → PQL transitions, each emitted once.

Trigger: the table's stream, filtered at the source to usage-state items (kind `usage`), so its own
`PQL` items never invoke it. Per record: decode the old and new usage images (no read), evaluate the
active definition (cached by `DefinitionStore`, DEFINITION_CACHE_SECONDS), and for the few records
that may change the qualification state, write the transition conditionally and publish
`PQL Qualified` / `PQL Disqualified` / `Account Converted` (`pqlflow.qualify.transitions`; settings,
wiring and the per-record handler are `pqlflow.qualify.service`). Failed records are reported with
Powertools' partial batch response; the mapping bisects and, after its retries, sends the record
pointer to the on-failure queue.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pqlflow.kernel.observability import logger, metrics
from pqlflow.qualify.service import RESULT_METRICS, QualifyBatch, build
from pqlflow.qualify.transitions import Qualifier

_qualifier: Qualifier | None = None


def _default() -> Qualifier:
    global _qualifier
    if _qualifier is None:
        _qualifier = build()
    return _qualifier


def reset() -> None:
    """Forget the warm qualifier (tests change the environment between cases)."""
    global _qualifier
    _qualifier = None


@logger.inject_lambda_context
@metrics.log_metrics
def handler(
    event: dict[str, Any], context: LambdaContext, *, qualifier: Qualifier | None = None
) -> PartialItemFailureResponse:
    batch = QualifyBatch(qualifier or _default())
    # An all-failed batch is reported like a partial one: Lambda retries (and bisects) from the first failure.
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
    response = process_partial_response(
        event=event, record_handler=batch.record_handler, processor=processor, context=context
    )
    for result, name in RESULT_METRICS:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=batch.counts.get(result, 0))
    metrics.add_metric(
        name="RecordsFailed", unit=MetricUnit.Count, value=len(response.get("batchItemFailures", []))
    )
    logger.info(
        "batch qualified",
        extra={
            "records": len(event.get("Records", [])),
            "results": batch.counts,
            "failed": len(response.get("batchItemFailures", [])),
        },
    )
    return response
