"""Putting events on EventBridge: PutEvents in valid chunks, failed entries retried.

Used by every function that emits pqlflow events (`EventPublisher`) and by product teams' code to
send usage events (`pqlflow.emitter`). A PutEvents call takes at most 10 entries and 256 KB; an
entry that fails (throttled, internal error) is retried with backoff; entries that never go raise
`PublishError` naming how many and why, so the caller's trigger retries (downstream consumers dedupe
by the ids the details carry).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pqlflow.contracts.emitted import SOURCE, _Detail
from pqlflow.kernel.aws import AwsClient

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
MAX_ATTEMPTS = 5


class PublishError(Exception):
    """Some entries were not accepted by EventBridge after every retry."""

    def __init__(self, failed: list[dict[str, Any]], codes: list[str]):
        self.failed = failed
        self.codes = codes
        summary = ", ".join(sorted(set(codes)))
        super().__init__(f"{len(failed)} event(s) not accepted by EventBridge after {MAX_ATTEMPTS} attempts: {summary}")


def entry_size(entry: dict[str, Any]) -> int:
    """An entry's size as EventBridge counts it (Source, DetailType, Detail, Resources, Time)."""
    size = len(entry.get("Source", "").encode()) + len(entry.get("DetailType", "").encode())
    size += len(entry.get("Detail", "").encode())
    size += sum(len(r.encode()) for r in entry.get("Resources", []))
    if "Time" in entry:
        size += 14
    return size


def chunk_entries(entries: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Group entries into PutEvents requests of at most 10 entries and 256 KB."""
    chunk: list[dict[str, Any]] = []
    chunk_bytes = 0
    for entry in entries:
        size = entry_size(entry)
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"event of {size:,} bytes exceeds EventBridge's 256 KB entry limit "
                             f"(detail-type {entry.get('DetailType')!r})")
        if chunk and (len(chunk) == MAX_ENTRIES or chunk_bytes + size > MAX_REQUEST_BYTES):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(entry)
        chunk_bytes += size
    if chunk:
        yield chunk


@dataclass
class PutEventsSender:
    """Sends entries with PutEvents, retrying the failed entries of each response with jittered backoff."""

    client: Any
    sleep: Callable[[float], None] = time.sleep
    base_delay: float = 0.05

    def send(self, entries: Sequence[dict[str, Any]]) -> int:
        failed: list[dict[str, Any]] = []
        codes: list[str] = []
        sent = 0
        for chunk in chunk_entries(entries):
            pending = chunk
            for attempt in range(MAX_ATTEMPTS):
                response = self.client.put_events(Entries=pending)
                if not response.get("FailedEntryCount"):
                    sent += len(pending)
                    pending = []
                    break
                results = response["Entries"]
                retry = [e for e, r in zip(pending, results, strict=True) if "ErrorCode" in r]
                last_codes = [r["ErrorCode"] for r in results if "ErrorCode" in r]
                sent += len(pending) - len(retry)
                pending = retry
                if attempt < MAX_ATTEMPTS - 1:
                    self.sleep(self.base_delay * (2**attempt) * (1 + random.random()))
            if pending:
                failed.extend(pending)
                codes.extend(last_codes)
        if failed:
            raise PublishError(failed, codes)
        return sent


class EventPublisher:
    """Publishes pqlflow's own events (`contracts` models) on the bus with source `pqlflow`."""

    client = AwsClient("events")

    def __init__(self, bus_name: str, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.bus_name = bus_name
        self.client = client
        self._sleep = sleep

    def entry(self, detail: _Detail) -> dict[str, Any]:
        return {
            "Source": SOURCE,
            "DetailType": detail.DETAIL_TYPE,
            "Detail": json.dumps(detail.model_dump(mode="json"), separators=(",", ":")),
            "EventBusName": self.bus_name,
        }

    def publish(self, details: Sequence[_Detail]) -> int:
        if not details:
            return 0
        return PutEventsSender(self.client, self._sleep).send([self.entry(d) for d in details])
