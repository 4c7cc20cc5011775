"""The local runtime's fixture app, and events put on its bus the way code outside any handler does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).parents[1] / "fixtures" / "local" / "app" / "template.yaml"
BUS = "pqlflow-local-bus"  # the fixture template's event bus


def sdk_put_event(events: Any, source: str, detail_type: str, detail: dict[str, Any]) -> None:
    """PutEvents of one event on the fixture's bus through an SDK client (`events`) on the emulator."""
    events.put_events(
        Entries=[{"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail), "EventBusName": BUS}]
    )
