"""SQS → function emulation: what Lambda's SQS event source mapping does, one poll at a time.

Per poll: receive up to BatchSize messages (receives of ≤10) from the local queue
(`pqlflow.local.queues`), drop (delete) those the FilterCriteria reject, invoke the function once
with the real SQS event shape, then delete the messages that succeeded. A handler exception fails
the whole batch; with `ReportBatchItemFailures` only the reported `itemIdentifier`s fail (a
malformed report fails the whole batch, as on AWS). Failed messages are made visible again at once,
standing in for their visibility timeout running out; the queue's RedrivePolicy moves a message to
the DLQ once it has been received maxReceiveCount times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pqlflow.local.functions import Outcome
from pqlflow.local.model import REGION, SqsSource
from pqlflow.local.patterns import filter_criteria_match
from pqlflow.local.queues import LocalQueue

log = logging.getLogger(__name__)

Invoke = Callable[[str, Any], Outcome]


def sqs_record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """A ReceiveMessage message as a record of Lambda's SQS event."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": list(value.get("StringListValues") or []),
                "binaryListValues": list(value.get("BinaryListValues") or []),
                "dataType": value.get("DataType", "String"),
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def failed_ids(outcome: Outcome, records: list[dict[str, Any]], report_item_failures: bool) -> set[str]:
    """The messageIds Lambda would consider failed after this invocation."""
    every = {r["messageId"] for r in records}
    if not outcome.ok:
        return every
    if not report_item_failures or not isinstance(outcome.result, Mapping):
        return set()
    failures = outcome.result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return every
    ids = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not identifier or identifier not in every:
            return every
        ids.add(identifier)
    return ids


class SqsPoller:
    """The event source mapping of one function from one (local) queue."""

    def __init__(self, source: SqsSource, queue: LocalQueue, invoke: Invoke, *, expire_after: int = 10) -> None:
        """`expire_after`: receives after which a message of a queue without a DLQ is dropped, standing in
        for "retried until the retention period ends"."""
        self.source = source
        self.queue = queue
        self.invoke = invoke
        self.expire_after = expire_after
        self.filtered_out = 0
        self.expired = 0
        self.last_failed: list[dict[str, Any]] = []

    def poll(self) -> int:
        """One batch; returns how many messages were taken from the queue (0 when it was empty)."""
        self.last_failed = []
        messages: list[dict[str, Any]] = []
        while len(messages) < self.source.batch_size:  # ReceiveMessage returns at most 10
            batch = self.queue.receive(min(10, self.source.batch_size - len(messages)))
            if not batch:
                break
            messages.extend(batch)
        if not messages:
            return 0
        records = [sqs_record(m, self.source.queue_arn) for m in messages]
        kept = [r for r in records if filter_criteria_match(self.source.filters, r)]
        self.filtered_out += len(records) - len(kept)
        self.delete([r for r in records if r not in kept])
        if kept:
            outcome = self.invoke(self.source.function, {"Records": kept})
            failed = failed_ids(outcome, kept, self.source.report_batch_item_failures)
            self.delete([r for r in kept if r["messageId"] not in failed])
            self.last_failed = [r for r in kept if r["messageId"] in failed]
            expired = [r for r in self.last_failed if self._expired(r)]
            if expired:
                log.warning("%d message(s) on %s failed %d times; dropped as expired", len(expired), self.queue.name,
                            self.expire_after)  # fmt: skip
                self.expired += len(expired)
                self.delete(expired)
            self.queue.release(r["receiptHandle"] for r in self.last_failed if r not in expired)
        return len(messages)

    def _expired(self, record: dict[str, Any]) -> bool:
        if self.queue.dead_letter is not None:
            return False
        return int(record["attributes"].get("ApproximateReceiveCount", "1")) >= self.expire_after

    def delete(self, records: list[dict[str, Any]]) -> None:
        self.queue.delete(r["receiptHandle"] for r in records)
