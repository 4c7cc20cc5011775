"""The template's SQS queues as the runtime holds them: messages, receive counts, in-flight, redrive, FIFO.

Why not moto's queues: moto's SQS recomputes every queue attribute over every message for each
message sent or received, so a queue of n messages costs O(n²) (500 messages: ~30 s), far too slow
for a replay. The queues are still created in the emulator (SDK calls to them succeed); what is sent
there is moved into these queues on each pump (`Queues.absorb`), and everything the runtime delivers
(rule targets, OnFailure destinations) goes straight here.

Semantics kept from SQS: a received message is in flight until deleted or released; each receive
counts (`ApproximateReceiveCount`); a message received `maxReceiveCount` times moves to the
dead-letter queue on its next receive; FIFO queues keep order within a message group, hold a group
while one of its messages is in flight, and drop a repeated deduplication id. Timestamps follow
`pqlflow.kernel.clock`. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pqlflow.kernel import clock
from pqlflow.local.model import Queue

SENDER_ID = "AIDAIT2UOQQY3AUEKVGXU"
_DEDUP_WINDOW_MS = 5 * 60 * 1000


@dataclass
class Message:
    """One message in a local queue (the fields ReceiveMessage returns)."""

    message_id: str
    body: str
    sent_ms: int
    attributes: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    dedup_id: str | None = None
    sequence_number: str | None = None
    receive_count: int = 0
    first_receive_ms: int | None = None
    receipt_handle: str | None = None

    def as_received(self) -> dict[str, Any]:
        """The message in ReceiveMessage's response shape (all system attributes)."""
        system = {
            "SenderId": SENDER_ID,
            "SentTimestamp": str(self.sent_ms),
            "ApproximateReceiveCount": str(self.receive_count),
            "ApproximateFirstReceiveTimestamp": str(self.first_receive_ms or self.sent_ms),
        }
        if self.group_id is not None:
            system.update(MessageGroupId=self.group_id, SequenceNumber=self.sequence_number or "")
            if self.dedup_id:
                system["MessageDeduplicationId"] = self.dedup_id
        received = {
            "MessageId": self.message_id,
            "ReceiptHandle": self.receipt_handle,
            "MD5OfBody": hashlib.md5(self.body.encode()).hexdigest(),  # noqa: S324 - SQS's checksum
            "Body": self.body,
            "Attributes": system,
        }
        if self.attributes:
            received["MessageAttributes"] = self.attributes
        return received


class LocalQueue:
    """One queue: visible messages in order, messages in flight by receipt handle."""

    _sequence = itertools.count(1)

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.name = queue.name
        self.fifo = queue.fifo
        self.content_dedup = queue.attributes.get("ContentBasedDeduplication") == "true"
        self.dead_letter: LocalQueue | None = None
        self.max_receive_count = queue.redrive.max_receive_count if queue.redrive else None
        self._visible: OrderedDict[str, Message] = OrderedDict()
        self._in_flight: dict[str, Message] = {}
        self._dedup: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._visible) + len(self._in_flight)

    @property
    def visible_count(self) -> int:
        return len(self._visible)

    def send(
        self,
        body: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
    ) -> str | None:
        """Enqueue a message; returns its id (None when a FIFO queue drops it as a duplicate)."""
        now = clock.now_ms()
        if self.fifo:
            dedup_id = dedup_id or (hashlib.sha256(body.encode()).hexdigest() if self.content_dedup else None)
            if dedup_id:
                self._dedup = {k: t for k, t in self._dedup.items() if now - t < _DEDUP_WINDOW_MS}
                if dedup_id in self._dedup:
                    return None
                self._dedup[dedup_id] = now
        message = Message(
            message_id=str(uuid.uuid4()),
            body=body,
            sent_ms=now,
            attributes=dict(attributes or {}),
            group_id=group_id if self.fifo else None,
            dedup_id=dedup_id if self.fifo else None,
            sequence_number=f"{next(self._sequence):020d}" if self.fifo else None,
        )
        self._visible[message.message_id] = message
        return message.message_id

    def add(self, message: Message) -> None:
        """Put an existing message (moved from another queue) at the end, keeping its history."""
        message.receipt_handle = None
        self._visible[message.message_id] = message

    def receive(self, max_messages: int) -> list[dict[str, Any]]:
        """Up to `max_messages` visible messages, now in flight; over-received ones go to the DLQ instead."""
        taken: list[dict[str, Any]] = []
        busy_groups = {m.group_id for m in self._in_flight.values() if m.group_id is not None}
        for message_id in list(self._visible):
            if len(taken) >= max_messages:
                break
            message = self._visible[message_id]
            if message.group_id is not None and message.group_id in busy_groups:
                continue
            del self._visible[message_id]
            if (
                self.dead_letter is not None
                and self.max_receive_count is not None
                and message.receive_count >= self.max_receive_count
            ):
                self.dead_letter.add(message)
                continue
            message.receive_count += 1
            message.first_receive_ms = message.first_receive_ms or clock.now_ms()
            message.receipt_handle = uuid.uuid4().hex
            self._in_flight[message.receipt_handle] = message
            taken.append(message.as_received())
        return taken

    def delete(self, receipt_handles: Iterable[str]) -> None:
        for handle in receipt_handles:
            self._in_flight.pop(handle, None)

    def release(self, receipt_handles: Iterable[str]) -> None:
        """Make in-flight messages visible again (their visibility timeout ran out), in their original order."""
        returned = [self._in_flight.pop(h) for h in receipt_handles if h in self._in_flight]
        if not returned:
            return
        rest = list(self._visible.values())
        self._visible = OrderedDict((m.message_id, m) for m in [*returned, *rest])


class Queues:
    """All local queues of a runtime, by name, with their dead-letter queues linked."""

    def __init__(self, queues: Iterable[Queue]) -> None:
        self._by_name = {q.name: LocalQueue(q) for q in queues}
        for local in self._by_name.values():
            redrive = local.queue.redrive
            if redrive is not None:
                local.dead_letter = self._by_name.get(redrive.dead_letter_arn.rsplit(":", 1)[-1])

    def __getitem__(self, name: str) -> LocalQueue:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._by_name.values())

    def absorb(self, name: str, sqs: Any, url: str) -> int:
        """Move what SDK calls sent to the emulator's copy of the queue into the local queue."""
        moved = 0
        while True:
            response = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
            )
            messages = response.get("Messages", [])
            if not messages:
                return moved
            for message in messages:
                system = message.get("Attributes") or {}
                self._by_name[name].send(
                    message.get("Body", ""),
                    attributes=message.get("MessageAttributes"),
                    group_id=system.get("MessageGroupId"),
                    dedup_id=system.get("MessageDeduplicationId"),
                )
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
            moved += len(messages)
