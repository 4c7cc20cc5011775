"""Ingest from S3 objects: what a Firehose stream delivers, split back into the EventBridge events it holds.

The low-cost transport (docs/ingest.md, "Transports"): the usage rule's target is a Firehose stream; Firehose
buffers the events (BufferingHints: an interval up to 15 minutes, a size up to 128 MB) and writes each buffer
to the bucket as one object, which notifies the ingest function. One object is one ingest batch: the events of
every account in the buffer, so an account active twice in the interval is written once.

An object holds the events as Firehose received them from EventBridge, each one JSON object: one per line when
the stream appends a delimiter (the template's `AppendDelimiterToRecord`), or back to back without one; either
way optionally gzip-compressed. `bodies` yields each event's text, which goes through the same validation,
quarantine and fold as an SQS message's body (`pqlflow.ingest.batch.IngestBatch`): nothing here judges an
event. A fragment that is not a JSON object (a corrupted object) is yielded as it is, so that the quarantine
keeps it with its reason, and the events after it are still found.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pqlflow.ingest.batch import BatchOutcome, IngestBatch, IngestConfig, UsageStore
from pqlflow.kernel.aws import AwsClient

GZIP_MAGIC = b"\x1f\x8b"
_DECODER = json.JSONDecoder()
_EVENT_START = '{"version"'  # how an EventBridge event's JSON begins: where to look again after a bad fragment
_WHITESPACE = " \t\r\n"


def object_text(data: bytes) -> str:
    """The object's text: gunzipped when it is gzip (Firehose's `CompressionFormat: GZIP`), UTF-8.

    Bytes that are not UTF-8 become U+FFFD, so that the events they are in are quarantined as bad input instead
    of failing the whole object."""
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def bodies(text: str) -> Iterator[str]:
    """Each event's JSON text, in the order Firehose wrote them (lines, or objects back to back)."""
    if "\n" in text:  # delimited: an EventBridge event's JSON never holds a raw newline (JSON escapes it)
        for line in text.split("\n"):  # one event per line: each is parsed once, by the validation
            if line.strip(_WHITESPACE):
                yield line
    else:
        yield from _concatenated(text)


def _concatenated(text: str) -> Iterator[str]:
    """JSON objects back to back (`{...}{...}`); a bad fragment up to the next event's start is yielded alone."""
    at, end = 0, len(text)
    while at < end:
        while at < end and text[at] in _WHITESPACE:
            at += 1
        if at >= end:
            return
        try:
            _, stop = _DECODER.raw_decode(text, at)
        except ValueError:
            resume = text.find(_EVENT_START, at + 1)
            stop = end if resume < 0 else resume
        yield text[at:stop]
        at = stop


class UsageObjects:
    """Where the stream's objects are read (S3)."""

    client = AwsClient("s3")

    def __init__(self, client: Any = None) -> None:
        self.client = client

    def text(self, bucket: str, key: str) -> str:
        return object_text(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())


@dataclass
class ObjectOutcome:
    """One object folded as one batch: its events, the batch's outcome, and the writes that failed."""

    events: int = 0
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    failures: list[BaseException] = field(default_factory=list)


def fold_object(text: str, config: IngestConfig, store: UsageStore, now_ms: int) -> ObjectOutcome:
    """Every event of the object in one `IngestBatch`: validated, quarantined or folded, written per account.
    A failed write is collected, not raised: the caller retries the whole object (its counted events count once)."""
    batch = IngestBatch(config, now_ms)
    result = ObjectOutcome()
    for result.events, body in enumerate(bodies(text), start=1):
        batch.add(result.events, body)
    result.outcome = batch.commit(store, lambda _record, exc: result.failures.append(exc))
    return result
