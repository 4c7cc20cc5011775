"""Ingest: one SQS batch of usage events → validated events → one idempotent write per account.

Every record is judged alone. Bad events are quarantined (a storable copy of the body + a reason naming the
field) and never retried, whatever the body holds; the rest of the batch goes through. Only records whose
write failed with an AWS error (their account's state, or their own quarantine item) are reported back to
SQS for retry, through Powertools' partial batch response. See docs/ingest.md for the design.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from pqlflow.contracts.usage_events import Rejection, UsageEvent, parse_body
from pqlflow.ingest import compaction
from pqlflow.ingest.cold import ColdUsage
from pqlflow.ingest.item import StoredUsage, SubjectDelta, update_requests, usage_key
from pqlflow.ingest.quarantine import QuarantineWrite, item_key, quarantine_item
from pqlflow.ingest.usage import GaugeError, TrackingSpec, fingerprint

SORT_KEY_MAX_BYTES = 1024  # DynamoDB's limit; per-user state keys the user id in the sort key
_USER_KEY_ROOM = SORT_KEY_MAX_BYTES - len(usage_key("", "")["sk"]["S"])  # bytes of UTF-8 left for the user id
# Fields named in log lines: the contract's own, so that a sender's keys (`properties.<anything>`) never are
_LOGGED_FIELDS = frozenset({"body", "detail", "detail-type", "source", "type", "messageId", "timestamp", "userId",
                            "anonymousId", "groupId", "context", "event", "name", "category", "properties", "traits"})


class UsageStore(Protocol):
    """Where usage state and the quarantine live (pqlflow.ingest.store.DynamoUsageStore in AWS)."""

    table: str

    def update(self, request: dict[str, Any]) -> dict[str, Any] | None: ...

    def read_usage_item(self, account_id: str, user_id: str | None) -> dict[str, Any] | None: ...

    def read_cold(self, account_id: str, user_id: str | None, version: int) -> ColdUsage | None: ...

    def read_archives(self, account_id: str, user_id: str | None, days: list[int],
                      up_to_version: int) -> dict[int, set[bytes]]: ...

    def write_if(self, request: dict[str, Any]) -> bool: ...

    def transact(self, items: list[dict[str, Any]]) -> bool: ...

    def quarantine(self, items: list[dict[str, Any]]) -> QuarantineWrite: ...


@dataclass(frozen=True)
class IngestConfig:
    spec: TrackingSpec = field(default_factory=TrackingSpec)
    quarantine_days: int = 14
    pending_hours: int = compaction.DEFAULT_PENDING_HOURS


@dataclass
class BatchOutcome:
    """What one batch did, for metrics and tests."""

    accepted: int = 0
    duplicates_in_batch: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    subjects_written: int = 0
    write_requests: int = 0
    compactions: int = 0
    late_duplicates: int = 0  # copies recognized by the archive of a day folded before
    failed_subjects: int = 0
    quarantine_reduced: int = 0  # quarantine items DynamoDB refused whole, stored in their reduced form
    quarantine_dropped: int = 0  # refused even reduced (never expected): logged, not retried
    validation_errors: int = 0  # records parse_body raised on (a bug): quarantined with the exception's name

    def quarantined_by_field(self) -> dict[str, int]:
        """Quarantined records by top-level field (`properties.total` → `properties`), for the log line."""
        counts: Counter[str] = Counter()
        for name, n in self.quarantined.items():
            top = name.split(".", 1)[0]
            counts[top if top in _LOGGED_FIELDS else "other"] += n
        return dict(counts)


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
        try:
            parsed = parse_body(body, self.now_ms / 1000, self.config.spec.retention_days)
        except Exception as exc:  # noqa: BLE001 - a bug met by this body: retrying the body cannot fix it, so
            # it is quarantined under the exception's name (counted in validation_errors) and kept to replay
            self.outcome.validation_errors += 1
            parsed = Rejection("", f"body could not be validated ({type(exc).__name__}: a pqlflow bug)")
        if not isinstance(parsed, Rejection) and self._per_user:
            parsed = _per_user_key_fits(parsed)
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
            self._quarantine(store, on_failure)
        for key, delta in self.deltas.items():
            try:
                item = None
                for request in update_requests(store.table, delta, self.now_ms, self.config.spec.active_user_days):
                    item = store.update(request)
                    self.outcome.write_requests += 1
                self.outcome.subjects_written += 1
            except Exception as exc:  # noqa: BLE001 - the subject's records are retried; others stand
                self.outcome.failed_subjects += 1
                for record in self.records.get(key, []):
                    on_failure(record, exc)
                continue
            if item and not self._compact(store, item):
                late = RuntimeError("late events of this subject await a compaction: retried to count them")
                for record in self.records.get(key, []):
                    on_failure(record, late)
        return self.outcome

    def _quarantine(self, store: UsageStore, on_failure: Callable[[Any, BaseException], None]) -> None:
        """Write every rejected record's quarantine item; retry only the records whose item an AWS failure
        left unwritten (what they hold never fails the write: the store reduces what DynamoDB refuses)."""
        items: dict[tuple[str, str], dict[str, Any]] = {}
        keys = []
        for _, body, rejection in self.rejected:
            item = quarantine_item(body, rejection, self.now_ms, self.config.quarantine_days)
            keys.append(item_key(item))
            items[keys[-1]] = item  # identical bodies share one item (the key is the body's hash)
        try:
            written = store.quarantine(list(items.values()))
        except Exception as exc:  # noqa: BLE001 - the store itself broke: retry every rejected record
            written = QuarantineWrite(failed=dict.fromkeys(items, exc))
        self.outcome.quarantine_reduced += len(written.reduced)
        self.outcome.quarantine_dropped += len(written.dropped)
        for (record, _, rejection), key in zip(self.rejected, keys, strict=True):
            failure = written.failed.get(key)
            if failure is not None:
                on_failure(record, failure)
            else:
                self.outcome.quarantined[rejection.field or "body"] += 1

    def _compact(self, store: UsageStore, item: dict[str, Any]) -> bool:
        """Compact while the item says it is due (a backfill may need several rounds); False when events this
        batch wrote are left uncounted: late slots (hours folded before) still awaiting their archive check.

        A compaction is decided by its conditional put of the next version's cold item, which carries the
        writes that complete it (its intent); whoever finds such an intent (the compaction itself, or any
        later one: after a crash, or one that lost the race to decide) sends them, so a decided compaction
        always completes, and an undecided one changed nothing the reader counts. If late slots remain
        uncounted, the subject's records are reported for retry and their redelivery compacts again."""
        stored = StoredUsage.parse(item)
        hours = self.config.pending_hours
        try:
            for _ in range(MAX_COMPACTION_ROUNDS):
                if not compaction.is_due(stored, self.now_ms, hours):
                    return True
                subject = (stored.account_id, stored.user_id)
                cold = store.read_cold(*subject, stored.cver) if stored.needs_cold else None
                if stored.needs_cold and (cold is None or cold.version != stored.cver):
                    stored = self._reread(store, stored)  # another instance compacted since: start from its item
                    continue
                late = compaction.late_days(stored, self.now_ms, hours)
                archives = store.read_archives(*subject, late, stored.cver) if late else {}
                plan = compaction.plan(store.table, stored, cold, archives, self.config.spec, self.now_ms, hours)
                if plan.cold_put is not None and store.write_if(plan.cold_put):
                    done = self._complete(store, plan.intent)
                elif plan.cold_put is None and store.transact(plan.transact_items):
                    done = True
                else:  # the next version is decided already (by a compaction that may have died): complete it
                    decided = store.read_cold(*subject, stored.cver + 1)
                    if decided is not None and decided.version == stored.cver + 1 and decided.intent is not None:
                        self._complete(store, compaction.intent_requests(decided.intent))
                    done = False
                if not done:
                    stored = self._reread(store, stored)
                    continue
                self.outcome.compactions += 1
                self.outcome.late_duplicates += plan.late_duplicates
                stored = plan.after
        except Exception:  # noqa: BLE001, S110 - undecided, or decided and completed by the next compaction
            pass
        return not any(stored.is_late(h) for h, _ in stored.pending)

    @staticmethod
    def _complete(store: UsageStore, intent: list[dict[str, Any]]) -> bool:
        """Send a decided compaction's writes in order; False when its last (the hot item's update,
        conditional on the version it compacted) found it done by someone else."""
        for request in intent[:-1]:
            store.update(request)
        return store.write_if(intent[-1])

    @staticmethod
    def _reread(store: UsageStore, stored: StoredUsage) -> StoredUsage:
        item = store.read_usage_item(stored.account_id, stored.user_id)
        return StoredUsage.parse(item) if item else stored


MAX_COMPACTION_ROUNDS = 20  # each folds up to 98 event hours: a backfill batch spanning ~80 days at most


def _per_user_key_fits(event: UsageEvent) -> UsageEvent | Rejection:
    """Per-user state keys the user id in the item's sort key, which DynamoDB caps at 1,024 bytes: a user id
    longer than that (256 four-byte characters) could never be written, so it is refused like a bad field."""
    if len(event.user_id) * 4 <= _USER_KEY_ROOM:  # no character takes more than 4 bytes: no need to measure
        return event
    size = len(event.user_id.encode())
    if size <= _USER_KEY_ROOM:
        return event
    return Rejection("userId", f"is {size:,} bytes of UTF-8; a per-user state key holds {_USER_KEY_ROOM:,}",
                     event.message_id)


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
