"""Ingest: one SQS batch of usage events → validated events → one idempotent write per account.

Bad events are quarantined (raw body + a reason naming the field) and never retried; the rest of the
batch goes through. Only records whose account write failed (a transient AWS error) are reported
back to SQS for retry, through Powertools' partial batch response. See docs/ingest.md for the design.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from pqlflow.contracts.usage_events import MAX_MESSAGE_BYTES, Rejection, parse_body
from pqlflow.ingest.item import (
    DEFAULT_DEDUPE_WINDOW_MS,
    SubjectDelta,
    compaction_request,
    update_requests,
)
from pqlflow.ingest.usage import GaugeError, TrackingSpec, fingerprint

QUARANTINE_KIND = "quarantine"
RAW_LIMIT = MAX_MESSAGE_BYTES + 4096  # what a quarantine item keeps of an oversized body


class UsageStore(Protocol):
    """Where usage state and the quarantine live (pqlflow.ingest.store.DynamoUsageStore in AWS)."""

    table: str

    def update(self, request: dict[str, Any]) -> dict[str, Any] | None: ...

    def compact(self, request: dict[str, Any]) -> bool: ...

    def quarantine(self, items: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class IngestConfig:
    spec: TrackingSpec = field(default_factory=TrackingSpec)
    quarantine_days: int = 14
    dedupe_window_ms: int = DEFAULT_DEDUPE_WINDOW_MS


@dataclass
class BatchOutcome:
    """What one batch did, for metrics and tests."""

    accepted: int = 0
    duplicates_in_batch: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    subjects_written: int = 0
    write_requests: int = 0
    compactions: int = 0
    failed_subjects: int = 0


class IngestBatch:
    """Accumulates one batch: events folded per subject, rejections kept with their records."""

    def __init__(self, config: IngestConfig, now_ms: int):
        self.config = config
        self.now_ms = now_ms
        self.deltas: dict[tuple[str, str | None], SubjectDelta] = {}
        self.records: dict[tuple[str, str | None], list[Any]] = {}
        self.rejected: list[tuple[Any, str, Rejection]] = []
        self.outcome = BatchOutcome()
        self._seen: set[bytes] = set()
        self._user_fps: dict[str, bytes] = {}
        self._per_user = config.spec.unit == "user"

    def add(self, record: Any, body: str) -> None:
        """Validate and fold one record; a bad one is set aside for the quarantine, never raised."""
        parsed = parse_body(body, self.now_ms / 1000, self.config.spec.retention_days)
        if isinstance(parsed, Rejection):
            self.rejected.append((record, body, parsed))
            return
        key = (parsed.account_id, parsed.user_id if self._per_user else None)
        delta = self.deltas.get(key)
        if delta is None:
            delta = self.deltas[key] = SubjectDelta(key[0], key[1])
            self.records[key] = []
        fp = fingerprint(parsed.message_id)
        user_fp = self._user_fps.get(parsed.user_id)
        if user_fp is None:
            user_fp = self._user_fps[parsed.user_id] = fingerprint(parsed.user_id)
        try:
            delta.add(parsed, self.config.spec, fp, user_fp)
        except GaugeError as exc:
            self.rejected.append((record, body, Rejection(exc.field, str(exc), parsed.message_id)))
            return
        self.records[key].append(record)
        if fp in self._seen:
            self.outcome.duplicates_in_batch += 1
        else:
            self._seen.add(fp)
            self.outcome.accepted += 1

    def commit(self, store: UsageStore, on_failure: Callable[[Any, BaseException], None]) -> BatchOutcome:
        """Quarantine the bad, write each subject once, compact when due; failures go to `on_failure`."""
        if self.rejected:
            items = [quarantine_item(body, rejection, self.now_ms, self.config.quarantine_days)
                     for _, body, rejection in self.rejected]
            try:
                store.quarantine(items)
                for _, _, rejection in self.rejected:
                    self.outcome.quarantined[rejection.field or "body"] += 1
            except Exception as exc:  # noqa: BLE001 - any failure to quarantine means: retry these records
                for record, _, _ in self.rejected:
                    on_failure(record, exc)
        for key, delta in self.deltas.items():
            try:
                item = None
                for request in update_requests(store.table, delta, self.now_ms):
                    item = store.update(request)
                    self.outcome.write_requests += 1
                self.outcome.subjects_written += 1
            except Exception as exc:  # noqa: BLE001 - the subject's records are retried; others stand
                self.outcome.failed_subjects += 1
                for record in self.records.get(key, []):
                    on_failure(record, exc)
                continue
            if item:
                self._compact(store, item)
        return self.outcome

    def _compact(self, store: UsageStore, item: dict[str, Any]) -> None:
        request = compaction_request(store.table, item, self.config.spec, self.now_ms, self.config.dedupe_window_ms)
        if request is None:
            return
        try:
            if store.compact(request):
                self.outcome.compactions += 1
        except Exception:  # noqa: BLE001, S110 - state is already correct; the next batch compacts again
            pass


def quarantine_item(body: str, rejection: Rejection, now_ms: int, days: int) -> dict[str, Any]:
    """The quarantine record of a rejected event. Keyed by the body's hash, so redelivery rewrites it."""
    digest = hashlib.sha256(body.encode(errors="replace")).hexdigest()[:32]
    received = datetime.fromtimestamp(now_ms / 1000, UTC)
    raw = body if len(body) <= RAW_LIMIT else body[:RAW_LIMIT]
    item: dict[str, Any] = {
        "pk": {"S": f"Q#{received:%Y-%m-%d}"},
        "sk": {"S": digest},
        "kind": {"S": QUARANTINE_KIND},
        "field": {"S": rejection.field or "body"},
        "reason": {"S": str(rejection)},
        "received_at": {"S": received.isoformat().replace("+00:00", "Z")},
        "raw": {"S": raw},
        "truncated": {"BOOL": len(body) > RAW_LIMIT},
        "expires_at": {"N": str(now_ms // 1000 + days * 86400)},
    }
    if rejection.message_id:
        item["message_id"] = {"S": rejection.message_id}
    return item


class UsageBatchProcessor(BatchProcessor):
    """Powertools SQS batch processor that folds a whole batch into one write per account.

    Records are parsed as Powertools iterates them; the writes happen once, when the batch is
    complete (`_clean`), and the records of any account whose write failed are reported through
    Powertools' own failure bookkeeping, so the response is its standard partial batch response.
    """

    def __init__(self, store: UsageStore, config: IngestConfig, now_ms: Callable[[], int]):
        super().__init__(event_type=EventType.SQS)
        self.store = store
        self.config = config
        self._now_ms = now_ms
        self.batch = IngestBatch(config, now_ms())
        self.outcome = BatchOutcome()

    def _prepare(self) -> None:
        super()._prepare()
        self.batch = IngestBatch(self.config, self._now_ms())

    def record_handler(self, record: SQSRecord) -> None:
        self.batch.add(record.raw_event, record.body)

    def _process_record(self, record: dict[str, Any]) -> tuple[str, Any, Any]:
        """Fold the raw record in; Powertools' SQSRecord is built only for records that fail.

        This is the custom-processor extension point: it skips wrapping every record of a 1,000-record
        batch in a data class just to read its body.
        """
        try:
            self.batch.add(record, record["body"])
        except Exception:  # noqa: BLE001 - a bug, not bad data: report the record for retry
            return self.failure_handler(SQSRecord(record), sys.exc_info())
        return self.success_handler(record, None)

    def _clean(self) -> None:
        self.outcome = self.batch.commit(self.store, self._record_failed)
        super()._clean()

    def _record_failed(self, record: dict[str, Any], exc: BaseException) -> None:
        self.failure_handler(SQSRecord(record), (type(exc), exc, exc.__traceback__ or sys.exc_info()[2]))
