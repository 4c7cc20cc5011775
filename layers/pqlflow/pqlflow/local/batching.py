"""How Lambda's event source mappings cut arrivals into invocations, from arrival times alone (pure: no AWS).

This is the batching the cost model prices (`pqlflow.local.billing`, bench/cost_bench.py): a function is
billed per invocation, and ingest writes once per account per batch, so who shares a batch decides the bill.

The model, for an SQS queue and for a DynamoDB stream shard alike:

- A batch **opens** at the arrival of the first message waiting (no batch is open).
- It is **invoked** at the first of:
  * the batching window (`MaximumBatchingWindowInSeconds`) has elapsed since it opened — every message
    that arrived by then (arrival ≤ opened + window) is in it;
  * it holds `BatchSize` messages — invoked at the arrival of the last one;
  * the next message would take its payload past 6 MB (Lambda's synchronous invocation payload limit) —
    it is invoked with what it holds, at that message's arrival, and that message opens the next batch.
- Window 0 means every poll takes what has arrived: one message per batch, unless several arrive in the
  same millisecond (then up to `BatchSize` of them).
- Messages are taken in arrival order (arrivals must be given sorted); the batches are consecutive slices.

What the model leaves out, and in which direction:

- **One poller.** Lambda runs several pollers per SQS event source mapping in parallel (five to start
  with, more as the queue backs up), and each fills its own batch: real batches are split further and
  there are more of them. For a DynamoDB stream, each shard has its own batches (`ParallelizationFactor`
  up to 10 splits a shard further). This model is one poller on one queue or one shard, so its batches are
  as full as they can be: **it is the optimistic bound** — AWS bills at least this many invocations,
  and at least this many ingest writes where a write is per account per batch.
- Empty receives (the pollers' long polls on an idle queue), retries, redrives and bisection are not
  batches and are not modelled here.
- A stream with window 0 is really polled about four times a second per shard; this model takes only
  records of the same millisecond together there (pessimistic), but pqlflow's template sets a window.

`sqs_batches` and `stream_batches` take the whole list; `BatchWindow` does the same incrementally for a
driver that produces arrivals as it goes (the stream records of a table are only known once ingest ran).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024  # Lambda: 6 MB per synchronous invocation request
MAX_WINDOW_SECONDS = 300  # MaximumBatchingWindowInSeconds: 0..300
FIREHOSE_MAX_INTERVAL_SECONDS = 900  # BufferingHints.IntervalInSeconds: 0..900
FIREHOSE_SIZE_MB = (1, 128)  # BufferingHints.SizeInMBs: 1..128
SQS_MAX_BATCH_SIZE = 10_000  # standard queue
SQS_MAX_BATCH_WITHOUT_WINDOW = 10  # above this, AWS requires a batching window of at least 1 s
STREAM_MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True)
class Batch:
    """One invocation: messages `start` to `stop` (exclusive) of the arrival order."""

    start: int
    stop: int
    opened_ms: int  # the first message's arrival
    invoked_ms: int  # when the poller invokes the function
    closed_by: str  # "window", "size" or "payload"
    payload_bytes: int = 0  # the messages' payload, as given (0 when no sizes were given)

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def wait_ms(self) -> int:
        """How long the first message waited for the batch (the latency the window adds)."""
        return self.invoked_ms - self.opened_ms


class BatchWindow:
    """One poller's batching, fed one arrival at a time (in arrival order)."""

    def __init__(self, batch_size: int, window_seconds: float, payload_limit: int = PAYLOAD_LIMIT_BYTES,
                 max_window_seconds: float = MAX_WINDOW_SECONDS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size}: must be at least 1")
        if not 0 <= window_seconds <= max_window_seconds:
            raise ValueError(f"batching window {window_seconds:g} s: must be between 0 and {max_window_seconds:g}")
        if payload_limit < 1:
            raise ValueError(f"payload limit {payload_limit}: must be at least 1 byte")
        self.batch_size = batch_size
        self.window_ms = round(window_seconds * 1000)
        self.payload_limit = payload_limit
        self.count = 0  # messages offered so far
        self._start = 0  # first message of the open batch (valid while _opened is not None)
        self._opened: int | None = None
        self._payload = 0
        self._last: int | None = None

    @property
    def open(self) -> bool:
        return self._opened is not None

    @property
    def pending(self) -> int:
        """Messages waiting in the open batch."""
        return self.count - self._start if self._opened is not None else 0

    def _close(self, invoked_ms: int, closed_by: str) -> Batch:
        assert self._opened is not None
        batch = Batch(self._start, self.count, self._opened, invoked_ms, closed_by, self._payload)
        self._opened = None
        self._payload = 0
        self._start = self.count
        return batch

    def due(self, now_ms: int) -> list[Batch]:
        """The open batch, if its window ended before `now_ms` (an arrival at `now_ms` would miss it)."""
        if self._opened is not None and self._opened + self.window_ms < now_ms:
            return [self._close(self._opened + self.window_ms, "window")]
        return []

    def add(self, arrival_ms: int, payload_bytes: int = 0) -> list[Batch]:
        """Offer the next message; returns the batches invoked before or at its arrival (0, 1 or 2)."""
        if self._last is not None and arrival_ms < self._last:
            raise ValueError(
                f"message {self.count}: arrival {arrival_ms} ms is before the previous one ({self._last} ms); "
                "arrivals must be in order"
            )
        if payload_bytes < 0:
            raise ValueError(f"message {self.count}: payload {payload_bytes} bytes must not be negative")
        self._last = arrival_ms
        closed = self.due(arrival_ms)
        if self._opened is not None and self._payload + payload_bytes > self.payload_limit:
            closed.append(self._close(arrival_ms, "payload"))
        if self._opened is None:
            self._opened = arrival_ms
            self._start = self.count
        self.count += 1
        self._payload += payload_bytes
        if self.count - self._start >= self.batch_size:
            closed.append(self._close(arrival_ms, "size"))
        return closed

    def flush(self) -> list[Batch]:
        """The end of the input: the open batch is invoked when its window elapses."""
        if self._opened is None:
            return []
        return [self._close(self._opened + self.window_ms, "window")]


def _batches(
    arrivals_ms: Sequence[int], window: BatchWindow, payload_bytes: Sequence[int] | None
) -> list[Batch]:
    if payload_bytes is not None and len(payload_bytes) != len(arrivals_ms):
        raise ValueError(f"{len(payload_bytes)} payload sizes for {len(arrivals_ms)} arrivals")
    out: list[Batch] = []
    for i, arrival in enumerate(arrivals_ms):
        out += window.add(int(arrival), payload_bytes[i] if payload_bytes is not None else 0)
    return out + window.flush()


def sqs_batches(
    arrivals_ms: Sequence[int],
    batch_size: int,
    window_seconds: float,
    payload_bytes: Sequence[int] | None = None,
) -> list[Batch]:
    """The invocations an SQS event source mapping makes for messages arriving at `arrivals_ms` (sorted).

    `payload_bytes`: each message's size in the invocation payload, for the 6 MB limit (None: no limit
    applies). AWS's own constraints are checked: BatchSize 1..10,000, and above 10 a window of ≥ 1 s.
    """
    if not 1 <= batch_size <= SQS_MAX_BATCH_SIZE:
        raise ValueError(f"SQS batch size {batch_size}: must be between 1 and {SQS_MAX_BATCH_SIZE}")
    if batch_size > SQS_MAX_BATCH_WITHOUT_WINDOW and window_seconds < 1:
        raise ValueError(
            f"SQS batch size {batch_size} with a {window_seconds:g} s window: above "
            f"{SQS_MAX_BATCH_WITHOUT_WINDOW} messages AWS requires MaximumBatchingWindowInSeconds of at least 1"
        )
    limit = PAYLOAD_LIMIT_BYTES if payload_bytes is not None else 2**62
    return _batches(arrivals_ms, BatchWindow(batch_size, window_seconds, limit), payload_bytes)


def stream_batches(
    arrivals_ms: Sequence[int],
    batch_size: int,
    window_seconds: float,
    payload_bytes: Sequence[int] | None = None,
) -> list[Batch]:
    """The invocations a DynamoDB stream event source mapping makes for records of ONE shard.

    Records are delivered in the order they were written (`arrivals_ms`: their write times, sorted).
    The table's records are assumed to be on one shard; a busy table has several shards, each batched on
    its own, which again only splits batches further (see the module docstring).
    """
    if not 1 <= batch_size <= STREAM_MAX_BATCH_SIZE:
        raise ValueError(f"stream batch size {batch_size}: must be between 1 and {STREAM_MAX_BATCH_SIZE}")
    limit = PAYLOAD_LIMIT_BYTES if payload_bytes is not None else 2**62
    return _batches(arrivals_ms, BatchWindow(batch_size, window_seconds, limit), payload_bytes)


def firehose_batches(
    arrivals_ms: Sequence[int],
    interval_seconds: float,
    size_mb: int,
    payload_bytes: Sequence[int],
) -> list[Batch]:
    """The objects a Firehose stream delivers to S3 for records arriving at `arrivals_ms` (sorted), one
    invocation each of the function the bucket notifies.

    Firehose's buffering hints work like a batching window without a record count: a buffer opens at its
    first record and is delivered when `interval_seconds` (BufferingHints.IntervalInSeconds, 0..900) have
    passed or it holds `size_mb` MB (SizeInMBs, 1..128) — here a record that would take it past the size
    opens the next buffer. One buffer per stream: Firehose's delivery time after the interval (seconds)
    and its parallel buffers at high throughput are not modelled, so, as for SQS, this is the fullest
    batching (the optimistic bound).
    """
    if not 0 <= interval_seconds <= FIREHOSE_MAX_INTERVAL_SECONDS:
        raise ValueError(f"Firehose buffer interval {interval_seconds:g} s: must be between 0 and "
                         f"{FIREHOSE_MAX_INTERVAL_SECONDS}")
    low, high = FIREHOSE_SIZE_MB
    if not low <= size_mb <= high:
        raise ValueError(f"Firehose buffer size {size_mb} MB: must be between {low} and {high}")
    window = BatchWindow(2**62, interval_seconds, size_mb * 1024 * 1024, FIREHOSE_MAX_INTERVAL_SECONDS)
    return _batches(arrivals_ms, window, payload_bytes)
