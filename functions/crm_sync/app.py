"""The crm_sync function: PQL transitions (`PQL Qualified`, `PQL Disqualified`, `Account Converted`) from
the bus, through CrmSyncQueue, onto the CRM company record (HubSpot) and the signed webhook.

SQS batches are answered with Powertools' partial batch response: a message whose target failed (or that
is not a PQL transition) is reported alone and redelivered, then kept in CrmSyncDeadLetterQueue; the rest
of the batch is done. The exactly-once and ordering protocol is `pqlflow.channels.crm.service`.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pqlflow.channels.crm.service import CrmSync, CrmSyncSettings
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ


@functools.cache
def settings() -> CrmSyncSettings:
    return from_environ(CrmSyncSettings)


@functools.cache
def _default() -> CrmSync:
    return CrmSync.from_settings(settings())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any, *, sync: CrmSync | None = None) -> PartialItemFailureResponse:
    service = sync or _default()

    def record_handler(record: SQSRecord) -> dict[str, str]:
        return service.record_handler(record.body)

    # A batch whose every message failed is answered like any other (each item reported), not raised.
    return process_partial_response(
        event=event, record_handler=record_handler,
        processor=BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False), context=context
    )
