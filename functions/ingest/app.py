"""Ingest function: SQS batches of Segment usage events → per-account usage state in DynamoDB."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics
from pqlflow.kernel.settings import ingest_settings
from pqlflow.qualify.tracking import tracking_spec

_processor: UsageBatchProcessor | None = None


def _default_processor() -> UsageBatchProcessor:
    global _processor
    if _processor is None:
        settings = ingest_settings()
        _processor = UsageBatchProcessor(DynamoUsageStore(settings.TABLE_NAME), _config(), clock.now_ms)
    _processor.config = _config()
    return _processor


def _config() -> IngestConfig:
    settings = ingest_settings()
    return IngestConfig(
        spec=tracking_spec(settings),
        quarantine_days=settings.QUARANTINE_DAYS,
        pending_hours=settings.PENDING_WINDOW_HOURS,
    )


@logger.inject_lambda_context
@metrics.log_metrics
def handler(
    event: dict[str, Any], context: LambdaContext, processor: UsageBatchProcessor | None = None
) -> PartialItemFailureResponse:
    processor = processor or _default_processor()
    response = process_partial_response(event=event, record_handler=processor.record_handler,
                                        processor=processor, context=context)
    outcome = processor.outcome
    metrics.add_metric(name="EventsIngested", unit=MetricUnit.Count, value=outcome.accepted)
    metrics.add_metric(name="DuplicatesInBatch", unit=MetricUnit.Count, value=outcome.duplicates_in_batch)
    metrics.add_metric(name="EventsQuarantined", unit=MetricUnit.Count, value=sum(outcome.quarantined.values()))
    metrics.add_metric(name="UsageWrites", unit=MetricUnit.Count, value=outcome.write_requests)
    metrics.add_metric(name="Compactions", unit=MetricUnit.Count, value=outcome.compactions)
    if outcome.validation_errors:  # never bad input: a pqlflow bug some body met (see docs/ingest.md)
        metrics.add_metric(name="IngestValidationErrors", unit=MetricUnit.Count, value=outcome.validation_errors)
    if outcome.quarantine_dropped:  # bad records DynamoDB refused to keep even reduced: lost, so alarmed
        metrics.add_metric(name="QuarantineDropped", unit=MetricUnit.Count, value=outcome.quarantine_dropped)
    logger.info("batch ingested", extra={
        "records": len(event.get("Records", [])), "accepted": outcome.accepted,
        "duplicates_in_batch": outcome.duplicates_in_batch, "quarantined_by_field": outcome.quarantined_by_field(),
        "subjects": outcome.subjects_written, "failed_subjects": outcome.failed_subjects,
        "write_requests": outcome.write_requests, "compactions": outcome.compactions,
        "quarantine_reduced": outcome.quarantine_reduced,
    })
    if outcome.validation_errors or outcome.quarantine_dropped:  # a pqlflow bug, never bad input: say so
        logger.error("ingest could not judge or keep some records", extra={
            "validation_errors": outcome.validation_errors, "quarantine_dropped": outcome.quarantine_dropped,
        })
    return response
