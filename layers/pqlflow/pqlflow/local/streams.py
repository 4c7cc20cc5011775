"""DynamoDB stream → function emulation: what Lambda's stream event source mapping does, one poll at a time.

Per poll: read the records written since the last checkpoint from the emulator's stream
(dynamodbstreams GetRecords), normalize them (`pqlflow.local.quirks`), drop the ones FilterCriteria
reject (they never invoke the function), and deliver the rest in batches of BatchSize, in order.
A failed batch (handler exception, or `batchItemFailures` with `ReportBatchItemFailures`, where
`itemIdentifier` is the record's SequenceNumber and the batch resumes from the lowest one) is retried;
with BisectBatchOnFunctionError it is split in two first (splits are not counted as retries). After
MaximumRetryAttempts the failing records go to the OnFailure destination (SQS) with Lambda's
invocation-record shape, and processing moves on. MaximumRetryAttempts -1 means "until the record
expires", which locally is `unbounded_retry_limit` attempts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from pqlflow.kernel import clock
from pqlflow.local.aws import Clients
from pqlflow.local.functions import Outcome
from pqlflow.local.model import StreamSource
from pqlflow.local.patterns import filter_criteria_match
from pqlflow.local.quirks import collapse_double_inserts, stream_record

Invoke = Callable[[str, Any], Outcome]
SendOnFailure = Callable[[str, dict[str, Any]], None]


def first_failed(outcome: Outcome, records: list[dict[str, Any]], report_item_failures: bool) -> int | None:
    """Index of the first record to retry from, or None when the whole batch succeeded."""
    if not outcome.ok:
        return 0
    if not report_item_failures or not isinstance(outcome.result, Mapping):
        return None
    failures = outcome.result.get("batchItemFailures")
    if failures is None or failures == []:
        return None
    if not isinstance(failures, list):
        return 0
    positions = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
    indexes = []
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if identifier not in positions:
            return 0
        indexes.append(positions[identifier])
    return min(indexes)


class StreamPoller:
    """The event source mapping of one function from one table's stream."""

    def __init__(
        self,
        source: StreamSource,
        stream_arn: str,
        function_arn: str,
        clients: Clients,
        invoke: Invoke,
        send_on_failure: SendOnFailure,
        *,
        unbounded_retry_limit: int = 10,
    ) -> None:
        self.source = source
        self.stream_arn = stream_arn
        self.function_arn = function_arn
        self.clients = clients
        self.invoke = invoke
        self.send_on_failure = send_on_failure
        self.unbounded_retry_limit = unbounded_retry_limit
        self.checkpoints: dict[str, str] = {}
        self.filtered_out = 0
        self.discarded = 0

    def skip_existing(self) -> None:
        """StartingPosition LATEST: records already in the stream are never delivered."""
        self._read()

    def poll(self) -> int:
        """Deliver everything new; returns how many stream records were read (0 when none)."""
        records = self._read()
        kept = [r for r in records if filter_criteria_match(self.source.filters, r)]
        self.filtered_out += len(records) - len(kept)
        size = max(1, self.source.batch_size)
        for start in range(0, len(kept), size):
            self._deliver(kept[start : start + size])
        return len(records)

    def _read(self) -> list[dict[str, Any]]:
        raw: list[dict[str, Any]] = []
        description = self.clients.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        for shard in description.get("Shards", []):
            shard_id = shard["ShardId"]
            after = self.checkpoints.get(shard_id)
            request: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
            if after:
                request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
            else:
                request.update(ShardIteratorType="TRIM_HORIZON")
            iterator = self.clients.streams.get_shard_iterator(**request)["ShardIterator"]
            while iterator:
                response = self.clients.streams.get_records(ShardIterator=iterator, Limit=1000)
                records = response.get("Records", [])
                if not records:
                    break
                raw.extend(records)
                self.checkpoints[shard_id] = records[-1]["dynamodb"]["SequenceNumber"]
                iterator = response.get("NextShardIterator")
        return collapse_double_inserts([stream_record(r, self.stream_arn) for r in raw])

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        pending: deque[tuple[list[dict[str, Any]], int]] = deque([(batch, 0)])
        limit = self.source.maximum_retry_attempts
        if limit < 0:
            limit = self.unbounded_retry_limit
        while pending:
            records, retries = pending.popleft()
            outcome = self.invoke(self.source.function, {"Records": records})
            index = first_failed(outcome, records, self.source.report_batch_item_failures)
            if index is None:
                continue
            remaining = records[index:]
            if self.source.bisect_on_error and len(remaining) > 1:
                half = len(remaining) // 2
                pending.appendleft((remaining[half:], retries))
                pending.appendleft((remaining[:half], retries))
            elif retries >= limit:
                self._give_up(remaining, retries + 1, outcome)
            else:
                pending.appendleft((remaining, retries + 1))

    def _give_up(self, records: list[dict[str, Any]], attempts: int, outcome: Outcome) -> None:
        self.discarded += len(records)
        destination = self.source.on_failure_arn
        if not destination:
            return
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        now = dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC)
        self.send_on_failure(
            destination,
            {
                "requestContext": {
                    "requestId": str(uuid.uuid4()),
                    "functionArn": self.function_arn,
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": attempts,
                },
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled" if not outcome.ok else "",
                },
                "version": "1.0",
                "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "DDBStreamBatchInfo": {
                    "shardId": next(iter(self.checkpoints), ""),
                    "startSequenceNumber": first["SequenceNumber"],
                    "endSequenceNumber": last["SequenceNumber"],
                    "approximateArrivalOfFirstRecord": _iso(first.get("ApproximateCreationDateTime")),
                    "approximateArrivalOfLastRecord": _iso(last.get("ApproximateCreationDateTime")),
                    "batchSize": len(records),
                    "streamArn": self.stream_arn,
                },
            },
        )


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
