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
