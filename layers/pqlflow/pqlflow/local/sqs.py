"""SQS → function emulation: what Lambda's SQS event source mapping does, one poll at a time.

Per poll: receive up to BatchSize messages (ReceiveMessage calls of ≤10), drop (delete) those the
FilterCriteria reject, invoke the function once with the real SQS event shape, then delete the
messages that succeeded. A handler exception fails the whole batch; with `ReportBatchItemFailures`
only the reported `itemIdentifier`s fail (a malformed report fails the whole batch, as on AWS).
Failed messages are made visible again at once, standing in for their visibility timeout running
out; the queue's own RedrivePolicy (enforced by the emulator on receive) moves a message to the DLQ
once it has been received maxReceiveCount times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pqlflow.local.aws import Clients
from pqlflow.local.functions import Outcome
from pqlflow.local.model import REGION, SqsSource
from pqlflow.local.patterns import filter_criteria_match

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
    """The event source mapping of one function from one queue."""

    def __init__(self, source: SqsSource, queue_url: str, clients: Clients, invoke: Invoke) -> None:
        self.source = source
        self.queue_url = queue_url
        self.clients = clients
        self.invoke = invoke
        self.filtered_out = 0
        self.expired = 0
        self.last_failed: list[dict[str, Any]] = []

    def poll(self) -> int:
        """One batch; returns how many messages were taken from the queue (0 when it was empty)."""
        self.last_failed = []
        messages = self._receive()
        if not messages:
            return 0
        records = [sqs_record(m, self.source.queue_arn) for m in messages]
        kept = [r for r in records if filter_criteria_match(self.source.filters, r)]
        dropped = [r for r in records if r not in kept]
        self.filtered_out += len(dropped)
        self.delete(dropped)
        if kept:
            outcome = self.invoke(self.source.function, {"Records": kept})
            failed = failed_ids(outcome, kept, self.source.report_batch_item_failures)
            self.delete([r for r in kept if r["messageId"] not in failed])
            self.last_failed = [r for r in kept if r["messageId"] in failed]
            self._retry_later(self.last_failed)
        return len(messages)

    def _receive(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while len(messages) < self.source.batch_size:
            batch = self.clients.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.source.batch_size - len(messages)),
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            messages.extend(batch)
        return messages

    def delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            self.clients.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )

    def _retry_later(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            self.clients.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r["receiptHandle"], "VisibilityTimeout": 0}
                    for i, r in enumerate(chunk)
                ],
            )
