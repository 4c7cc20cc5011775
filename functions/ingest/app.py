"""Ingest function: batches of Segment usage events → per-account usage state in DynamoDB.

Two transports invoke it (template parameter IngestTransport):
- sqs (the default): SQS batches, answered with Powertools' partial batch response;
- firehose: the Object Created event (S3 → EventBridge) of an object the usage Firehose stream wrote, one
  object per batch; a failure raises, so that Lambda's asynchronous retries deliver the object again.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pqlflow.ingest.batch import BatchOutcome, IngestConfig, UsageBatchProcessor
from pqlflow.ingest.objects import UsageObjects, fold_object
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics
from pqlflow.kernel.settings import ingest_settings
from pqlflow.qualify.tracking import tracking_spec

_processor: UsageBatchProcessor | None = None
_objects = UsageObjects()  # its S3 client is created on first use


class ObjectNotIngested(RuntimeError):
    """Some events of a delivered object could not be written: the invocation fails, Lambda retries it (every
    event of the object again: the ones already counted are recognised and count once)."""


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
    event: dict[str, Any], context: LambdaContext, processor: UsageBatchProcessor | None = None, s3: Any = None
) -> PartialItemFailureResponse | dict[str, int]:
    processor = processor or _default_processor()
    if event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
        return _ingest_object(S3EventBridgeNotificationEvent(event), processor, s3)
    response = process_partial_response(event=event, record_handler=processor.record_handler,
                                        processor=processor, context=context)
    _report(processor.outcome, len(event.get("Records", [])), "batch ingested")
    return response


def _ingest_object(event: S3EventBridgeNotificationEvent, processor: UsageBatchProcessor,
                   s3: Any) -> dict[str, int]:
    """The object is one batch (`pqlflow.ingest.objects.fold_object`); any write that failed raises."""
    bucket, key = event.detail.bucket.name, event.detail.object.key  # the key decoded (unquote_plus)
    text = (UsageObjects(s3) if s3 is not None else _objects).text(bucket, key)
    result = fold_object(text, processor.config, processor.store, clock.now_ms())
    _report(result.outcome, result.events, "object ingested", {"object_bytes": event.detail.object.size})
    if result.failures:
        first = result.failures[0]
        raise ObjectNotIngested(f"{len(result.failures)} of {result.events} events of s3://{bucket}/{key} were not "
                                f"written ({type(first).__name__}); the object is retried") from first
    return {"objects": 1, "events": result.events}


def _report(outcome: BatchOutcome, records: int, message: str, extra: dict[str, Any] | None = None) -> None:
    metrics.add_metric(name="EventsIngested", unit=MetricUnit.Count, value=outcome.accepted)
    metrics.add_metric(name="DuplicatesInBatch", unit=MetricUnit.Count, value=outcome.duplicates_in_batch)
    metrics.add_metric(name="EventsQuarantined", unit=MetricUnit.Count, value=sum(outcome.quarantined.values()))
    metrics.add_metric(name="UsageWrites", unit=MetricUnit.Count, value=outcome.write_requests)
    metrics.add_metric(name="Compactions", unit=MetricUnit.Count, value=outcome.compactions)
    if outcome.validation_errors:  # never bad input: a pqlflow bug some body met (see docs/ingest.md)
        metrics.add_metric(name="IngestValidationErrors", unit=MetricUnit.Count, value=outcome.validation_errors)
    if outcome.quarantine_dropped:  # bad records DynamoDB refused to keep even reduced: lost, so alarmed
        metrics.add_metric(name="QuarantineDropped", unit=MetricUnit.Count, value=outcome.quarantine_dropped)
    logger.info(message, extra={
        "records": records, "accepted": outcome.accepted,
        "duplicates_in_batch": outcome.duplicates_in_batch, "quarantined_by_field": outcome.quarantined_by_field(),
        "subjects": outcome.subjects_written, "failed_subjects": outcome.failed_subjects,
        "write_requests": outcome.write_requests, "compactions": outcome.compactions,
        "quarantine_reduced": outcome.quarantine_reduced, **(extra or {}),
    })
    if outcome.validation_errors or outcome.quarantine_dropped:  # a pqlflow bug, never bad input: say so
        logger.error("ingest could not judge or keep some records", extra={
            "validation_errors": outcome.validation_errors, "quarantine_dropped": outcome.quarantine_dropped,
        })
