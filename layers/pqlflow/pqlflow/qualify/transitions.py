"""Applying PQL transitions exactly once: the state item's conditional writes and the per-record flow.

The qualification state of a subject lives in the item pk `A#<account>`, sk `PQL` (or `PQL#U#<user>`
for `unit: user`), kind `pql`. A transition is written with a conditional PutItem (the item must not
exist, or must still have the `seq` it was decided from) that also stores the event to emit as
`pending`; the event is then published and `pending` removed. So:

- redelivery, retries and concurrent evaluation of a stream record cannot write a transition twice
  (the second conditional write fails);
- a crash between the write and PutEvents leaves `pending`: the next attempt at that subject
  publishes it before anything else, with the same deterministic `transition_id` (downstream dedupes).

Zero reads: the stored state is never read. For the few records that may change it
(`qualification.needs_decision`), the flow writes as if no state existed; if one does, the failed
write returns it (ReturnValuesOnConditionCheckFailure=ALL_OLD) and the flow decides again from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pqlflow.contracts.emitted import EMITTED, _Detail
from pqlflow.ingest.cold import StaleCold
from pqlflow.ingest.usage import AccountUsage
from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient
from pqlflow.qualify.evaluation import PqlState, decide, needs_decision, state_sk, transition_event, transition_id
from pqlflow.qualify.language import Definition

KIND = "pql"
MAX_ATTEMPTS = 4
_DETAILS = {model.DETAIL_TYPE: model for model in EMITTED}
_D = TypeVar("_D", bound=_Detail)


@dataclass
class StoredPql:
    """A state item as stored: the state, and the event of its last transition if not yet published."""

    state: PqlState
    pending_type: str | None = None
    pending: str | None = None  # the event detail, JSON

    def pending_detail(self) -> _Detail | None:
        if self.pending_type is None or self.pending is None:
            return None
        return _DETAILS[self.pending_type].model_validate_json(self.pending)


class StateConflict(Exception):
    """The state item is not what the write expected; `current` is what it is (None: no item)."""

    def __init__(self, current: StoredPql | None):
        super().__init__("qualification state changed")
        self.current = current


class PqlStateStore:
    """Conditional writes of the state item. Adapter: the only boto3 use for qualification state."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None):
        self.table = table
        self.client = client

    def write(
        self, account_id: str, user_id: str | None, expected_seq: int | None, state: PqlState, detail: _Detail
    ) -> None:
        """Store `state` with `detail` pending, if the item still has `expected_seq` (None: no item yet)."""
        item = encode_state(account_id, user_id, state)
        item["pending_type"] = {"S": detail.DETAIL_TYPE}
        item["pending"] = {"S": detail.model_dump_json()}
        if expected_seq is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "seq = :seq",
                "ExpressionAttributeValues": {":seq": {"N": str(expected_seq)}},
            }
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ReturnValuesOnConditionCheckFailure="ALL_OLD", **condition
            )
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            old = exc.response.get("Item")
            raise StateConflict(decode_state(old) if old else None) from None

    def write_leave(self, account_id: str, user_id: str | None, state: PqlState, detail: _Detail) -> int:
        """Disqualify a subject believed qualified, whatever its `seq`; returns the new `seq`.

        Only the fields a disqualification changes are set, so the stored qualification (time, version)
        is kept. If the subject is not qualified (or converted), raises `StateConflict` with its state.
        """
        try:
            result = self.client.update_item(
                TableName=self.table,
                Key=state_key(account_id, user_id),
                UpdateExpression=(
                    "SET #status = :status, since_ms = :since, seq = seq + :one, "
                    "pending = :pending, pending_type = :type, updated_ms = :now"
                ),
                ConditionExpression="#status = :qualified AND converted_reported = :false",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":status": {"S": state.status},
                    ":since": {"N": str(state.since_ms)},
                    ":one": {"N": "1"},
                    ":pending": {"S": detail.model_dump_json()},
                    ":type": {"S": detail.DETAIL_TYPE},
                    ":now": {"N": str(clock.now_ms())},
                    ":qualified": {"S": "qualified"},
                    ":false": {"BOOL": False},
                },
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            old = exc.response.get("Item")
            raise StateConflict(decode_state(old) if old else None) from None
        return int(result["Attributes"]["seq"]["N"])

    def mark_emitted(self, account_id: str, user_id: str | None, seq: int) -> None:
        """Drop the pending event of transition `seq` (a no-op if a later transition replaced it)."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table,
                Key=state_key(account_id, user_id),
                UpdateExpression="REMOVE pending, pending_type SET emitted_ms = :now",
                ConditionExpression="seq = :seq",
                ExpressionAttributeValues={":seq": {"N": str(seq)}, ":now": {"N": str(clock.now_ms())}},
            )


def state_key(account_id: str, user_id: str | None) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"A#{account_id}"}, "sk": {"S": state_sk(user_id)}}


def encode_state(account_id: str, user_id: str | None, state: PqlState) -> dict[str, dict[str, Any]]:
    item: dict[str, dict[str, Any]] = {
        **state_key(account_id, user_id),
        "kind": {"S": KIND},
        "aid": {"S": account_id},
        "status": {"S": state.status},
        "seq": {"N": str(state.seq)},
        "converted_reported": {"BOOL": state.converted_reported},
        "transition_id": {"S": transition_id(account_id, user_id, state.seq)},
        "updated_ms": {"N": str(clock.now_ms())},
    }
    if user_id is not None:
        item["uid"] = {"S": user_id}
    for name in ("since_ms", "version", "qualified_at_ms", "converted_ms", "churned_ms"):
        value = getattr(state, name)
        if value is not None:
            item[name] = {"N": str(value)}
    if state.definition_name is not None:
        item["definition_name"] = {"S": state.definition_name}
    return item


def decode_state(item: dict[str, dict[str, Any]]) -> StoredPql:
    def num(name: str) -> int | None:
        return int(item[name]["N"]) if name in item else None

    state = PqlState(
        status=item.get("status", {}).get("S", "never"),
        since_ms=num("since_ms"),
        version=num("version"),
        qualified_at_ms=num("qualified_at_ms"),
        converted_reported=bool(item.get("converted_reported", {}).get("BOOL", False)),
        seq=num("seq") or 0,
        definition_name=item.get("definition_name", {}).get("S"),
        converted_ms=num("converted_ms"),
        churned_ms=num("churned_ms"),
    )
    return StoredPql(state, item.get("pending_type", {}).get("S"), item.get("pending", {}).get("S"))


# ---- the per-record flow ---------------------------------------------------------------------------


class StateWriter(Protocol):
    def write(
        self, account_id: str, user_id: str | None, expected_seq: int | None, state: PqlState, detail: _Detail
    ) -> None: ...

    def write_leave(self, account_id: str, user_id: str | None, state: PqlState, detail: _Detail) -> int: ...

    def mark_emitted(self, account_id: str, user_id: str | None, seq: int) -> None: ...


class Publisher(Protocol):
    def publish(self, details: Sequence[_Detail]) -> int: ...


class DefinitionSource(Protocol):
    def active(self) -> Definition: ...


@dataclass
class RecordOutcome:
    result: str  # removed | other_unit | unchanged | no_transition | qualified | disqualified | converted | churned
    #              | re_emitted
    definition_version: int | None = None
    writes: int = 0
    published: list[str] = field(default_factory=list)  # detail-types


@dataclass
class Qualifier:
    """Evaluates one usage-state stream record and applies its transition exactly once."""

    definitions: DefinitionSource
    states: StateWriter
    publisher: Publisher
    decode: Callable[[dict[str, Any]], AccountUsage]

    def process(self, change: dict[str, Any]) -> RecordOutcome:
        """`change` is a stream record's `dynamodb` part (DynamoDB JSON images)."""
        new_image = change.get("NewImage")
        if not new_image:
            return RecordOutcome("removed")
        defn = self.definitions.active()
        try:
            new = self.decode(new_image)
        except StaleCold:
            # Compacted since this image: a newer image of the account follows on the stream and is judged.
            return RecordOutcome("stale", defn.version)
        if (new.user_id is not None) != (defn.unit == "user"):
            return RecordOutcome("other_unit", defn.version)  # state kept for another unit (before a switch)
        try:
            old = self.decode(change["OldImage"]) if change.get("OldImage") else None
        except StaleCold:
            old = None  # the image before a compaction: judge the new one on its own
        hint = needs_decision(defn, old, new) if new.last_seen_ms is not None else None
        if hint is None:
            return RecordOutcome("unchanged", defn.version)
        return self._apply(defn, new, hint)

    def _apply(self, defn: Definition, usage: AccountUsage, hint: str) -> RecordOutcome:
        outcome = RecordOutcome("no_transition", defn.version)
        now = usage.last_seen_ms or 0
        # The stored state is never read. First guess it (not there yet; or qualified, when the change can
        # only disqualify): a wrong guess makes the conditional write fail and return the real state.
        known = False
        current: StoredPql | None = StoredPql(PqlState(status="qualified")) if hint == "leave" else None
        for _ in range(MAX_ATTEMPTS):
            if known and current is not None and current.pending is not None:
                self._emit_pending(usage, current, outcome)
            if (
                known
                and current is not None
                and current.state.since_ms is not None
                and now < current.state.since_ms
            ):
                return outcome  # an older image than the one that decided the stored state (a late retry)
            transition = decide(defn, usage, current.state if current else None, now)
            if transition is None:
                # Known state: nothing to do. Guessed: the guess was "qualified" (a possible
                # disqualification) and the definition keeps it; if it was not qualified at all, the
                # change cannot qualify it either (entering implies staying).
                return outcome
            detail = transition_event(defn, usage, transition)
            try:
                outcome.writes += 1
                if not known and hint == "leave":
                    seq = self.states.write_leave(
                        usage.account_id, usage.user_id, transition.new_state, detail
                    )
                else:
                    self.states.write(
                        usage.account_id,
                        usage.user_id,
                        current.state.seq if current else None,
                        transition.new_state,
                        detail,
                    )
                    seq = transition.new_state.seq
            except StateConflict as conflict:
                known, current = True, conflict.current
                continue
            detail = with_transition_id(detail, usage, seq)
            self.publisher.publish([detail])
            outcome.published.append(detail.DETAIL_TYPE)
            self.states.mark_emitted(usage.account_id, usage.user_id, seq)
            outcome.result = transition.kind
            return outcome
        raise RuntimeError(f"qualification state kept changing under {MAX_ATTEMPTS} attempts")

    def _emit_pending(self, usage: AccountUsage, current: StoredPql, outcome: RecordOutcome) -> None:
        detail = current.pending_detail()
        if detail is not None:
            detail = with_transition_id(detail, usage, current.state.seq)
            self.publisher.publish([detail])
            outcome.published.append(detail.DETAIL_TYPE)
            outcome.result = "re_emitted"
        self.states.mark_emitted(usage.account_id, usage.user_id, current.state.seq)
        current.pending = current.pending_type = None


def with_transition_id(detail: _D, usage: AccountUsage, seq: int) -> _D:
    """The detail with the id of transition `seq` (a disqualification learns its seq only from its write)."""
    if "transition_id" not in type(detail).model_fields:
        return detail
    return detail.model_copy(update={"transition_id": transition_id(usage.account_id, usage.user_id, seq)})
