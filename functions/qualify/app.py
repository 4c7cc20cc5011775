"""The qualify function: usage-state changes (the table stream) → PQL transitions, each emitted once.

Trigger: the table's stream, filtered at the source to usage-state items (kind `usage`), so its own
`PQL` items never invoke it. Per record: decode the old and new usage images (no read), evaluate the
active definition (cached by `DefinitionStore`, DEFINITION_CACHE_SECONDS), and for the few records
that may change the qualification state, write the transition conditionally and publish
`PQL Qualified` / `PQL Disqualified` / `Account Converted` (`pqlflow.qualify.transitions`). Failed records
are reported with Powertools' partial batch response; the mapping bisects and, after its retries,
sends the record pointer to the on-failure queue.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pqlflow.contracts.bus import EventPublisher
from pqlflow.ingest.item import decode_image
from pqlflow.kernel.observability import logger, metrics
from pqlflow.kernel.settings import from_environ
from pqlflow.qualify.store import DefinitionStore
from pqlflow.qualify.transitions import PqlStateStore, Qualifier
from pydantic import BaseModel, ConfigDict, Field


class QualifySettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    DEFINITION_CACHE_SECONDS: float = Field(default=60, ge=0, le=3600)


_qualifier: Qualifier | None = None


def build(settings: QualifySettings | None = None) -> Qualifier:
    """The qualifier with its real adapters (clients are created on first use)."""
    settings = settings or from_environ(QualifySettings)
    return Qualifier(
        definitions=DefinitionStore(settings.TABLE_NAME, cache_seconds=settings.DEFINITION_CACHE_SECONDS),
        states=PqlStateStore(settings.TABLE_NAME),
        publisher=EventPublisher(settings.EVENT_BUS_NAME),
        decode=decode_image,
    )


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
def handler(event: dict[str, Any], context: LambdaContext, *, qualifier: Qualifier | None = None) -> dict:
    qualifier = qualifier or _default()
    counts: dict[str, int] = {}

    def record_handler(record: DynamoDBRecord) -> None:
        outcome = qualifier.process(record.raw_event.get("dynamodb", {}))
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
        if outcome.published:
            # ids only: never personal data in logs
            logger.info(
                "transition",
                extra={
                    "result": outcome.result,
                    "published": outcome.published,
                    "definition_version": outcome.definition_version,
                    "event_id": record.event_id,
                },
            )

    # An all-failed batch is reported like a partial one: Lambda retries (and bisects) from the first failure.
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    for result, name in (
        ("qualified", "PqlQualified"),
        ("disqualified", "PqlDisqualified"),
        ("converted", "AccountConverted"),
        ("re_emitted", "TransitionsReEmitted"),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=counts.get(result, 0))
    metrics.add_metric(
        name="RecordsFailed", unit=MetricUnit.Count, value=len(response.get("batchItemFailures", []))
    )
    logger.info(
        "batch qualified",
        extra={
            "records": len(event.get("Records", [])),
            "results": counts,
            "failed": len(response.get("batchItemFailures", [])),
        },
    )
    return response
