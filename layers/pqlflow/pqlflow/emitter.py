"""A small emitter for product teams: builds valid Segment Spec messages and puts them on the bus.

    from pqlflow.emitter import UsageEmitter
    with UsageEmitter(bus_name="pqlflow-prod") as usage:
        usage.track("usr_42", "Message Sent", {"channel": "general"}, account_id="acct_7")
        usage.group("usr_42", "acct_7", {"plan": "free", "employees": 40, "contacts_limit": 10000})

Events are buffered and sent with PutEvents in valid chunks (≤ 10 entries, ≤ 256 KB), and failed
entries are retried (`pqlflow.contracts.bus`). Each message is validated against the contract before it is
buffered, so a bad call fails in the product team's code, with the field named, not in ingest.
The detail-type is the Segment `type` and the detail is the message: the same shape Segment's own
EventBridge destination sends, so ingest treats both alike.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pqlflow.contracts.bus import PutEventsSender
from pqlflow.contracts.usage_events import Rejection, parse_body
from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient

DEFAULT_SOURCE = "pqlflow.emitter"


class InvalidEvent(ValueError):
    """The message would be rejected by ingest; the text names the field."""


class UsageEmitter:
    client = AwsClient("events")

    def __init__(self, bus_name: str, source: str = DEFAULT_SOURCE, client: Any = None,
                 buffer_size: int = 100, sleep: Any = time.sleep):
        self.bus_name = bus_name
        self.source = source
        self.client = client
        self._buffer: list[dict[str, Any]] = []
        self._buffer_size = buffer_size
        self._sleep = sleep

    def __enter__(self) -> UsageEmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def track(self, user_id: str, event: str, properties: dict[str, Any] | None = None, *,
              account_id: str | None = None, **common: Any) -> dict[str, Any]:
        return self._emit({"type": "track", "event": event, "properties": properties or {}},
                          user_id, account_id, common)

    def identify(self, user_id: str, traits: dict[str, Any] | None = None, *,
                 account_id: str | None = None, **common: Any) -> dict[str, Any]:
        return self._emit({"type": "identify", "traits": traits or {}}, user_id, account_id, common)

    def group(self, user_id: str, account_id: str, traits: dict[str, Any] | None = None,
              **common: Any) -> dict[str, Any]:
        return self._emit({"type": "group", "groupId": account_id, "traits": traits or {}},
                          user_id, account_id, common)

    def page(self, user_id: str, name: str | None = None, properties: dict[str, Any] | None = None, *,
             account_id: str | None = None, **common: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "page", "properties": properties or {}}
        if name:
            body["name"] = name
        return self._emit(body, user_id, account_id, common)

    def _emit(self, body: dict[str, Any], user_id: str, account_id: str | None,
              common: dict[str, Any]) -> dict[str, Any]:
        timestamp = common.pop("timestamp", None) or datetime.fromtimestamp(clock.now(), UTC)
        context = dict(common.pop("context", None) or {})
        if account_id is not None:
            context.setdefault("groupId", account_id)
        message = {
            **body,
            "messageId": common.pop("message_id", None) or str(uuid.uuid4()),
            "timestamp": timestamp.isoformat() if isinstance(timestamp, datetime) else str(timestamp),
            "userId": user_id,
            "context": {"library": {"name": "pqlflow-emitter", "version": "1"}, **context},
            **common,
        }
        detail = json.dumps(message, separators=(",", ":"), default=str)
        checked = parse_body(detail, clock.now())
        if isinstance(checked, Rejection):
            raise InvalidEvent(str(checked))
        self._buffer.append({"Source": self.source, "DetailType": message["type"], "Detail": detail,
                             "EventBusName": self.bus_name})
        if len(self._buffer) >= self._buffer_size:
            self.flush()
        return message

    def flush(self) -> int:
        """Send everything buffered; raises `pqlflow.contracts.bus.PublishError` if some entries never go."""
        entries, self._buffer = self._buffer, []
        if not entries:
            return 0
        return PutEventsSender(self.client, self._sleep).send(entries)
