"""pqlflow's own events as EventBridge delivers them to the channel functions, and a publisher that keeps
what they put on the bus."""

from __future__ import annotations

import uuid
from typing import Any

from pqlflow.contracts.emitted import NurtureAction, Reason


def pqlflow_event(
    detail: dict[str, Any],
    detail_type: str = "Nurture Action",
    *,
    time: str = "2026-11-20T15:00:00Z",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "pqlflow",
        "account": "123456789012",
        "time": time,
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def offer_action(action_id: str, account: str, user: str, offer: str, **fields: Any) -> dict[str, Any]:
    """A `Nurture Action` for the offers channel as the bus carries it; `fields` add or replace fields."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "transition_id": f"tr-{action_id}",
        "account_id": account,
        "channel": "offer",
        "offer": offer,
        "recipient_user_id": user,
        "touch": "low",
        "reasons": [Reason(code="limit.storage", text="9.5 of 10 GB used", kind="limit")],
    }
    return NurtureAction(**(action | fields)).model_dump(mode="json")


class FakePublisher:
    """Records published details; the first `fail_times` publishes fail as EventBridge outages."""

    def __init__(self, fail_times: int = 0) -> None:
        self.published: list[Any] = []
        self.fail_times = fail_times

    def publish(self, details: list[Any]) -> int:
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("EventBridge unavailable")
        self.published.extend(details)
        return len(details)
