"""The JSON Schema of every event pqlflow emits, and the EventBridge envelope a rule target receives it in.

Generated from the pydantic models of `pqlflow.contracts.emitted`, so a schema cannot drift from the
code; `pqlflow schemas` (`pqlflow.cli.schemas`, run by `make schemas`) writes them with samples under
events/pqlflow/.
"""

from __future__ import annotations

import re
from typing import Any

from pqlflow.contracts.emitted import (
    SOURCE,
    _Detail,
)

SAMPLE_TIME = "2026-11-02T09:30:00Z"


def slug(model: type[_Detail]) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model.DETAIL_TYPE.lower()).strip("-")


def schema(model: type[_Detail]) -> dict[str, Any]:
    body = model.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://pqlflow.dev/events/{slug(model)}.schema.json",
        "description": (
            f"detail of the EventBridge event source '{SOURCE}', detail-type '{model.DETAIL_TYPE}'. "
            + (model.__doc__ or "").strip()
        ),
        **body,
    }


def envelope(detail: _Detail) -> dict[str, Any]:
    """A sample EventBridge event as a rule target receives it."""
    return {
        "version": "0",
        "id": "6f1c3b1e-0000-4000-8000-" + slug(type(detail)).encode().hex()[:12].ljust(12, "0"),
        "detail-type": detail.DETAIL_TYPE,
        "source": SOURCE,
        "account": "123456789012",
        "time": _event_time(detail),
        "region": "us-east-1",
        "resources": [],
        "detail": detail.model_dump(mode="json"),
    }


def _event_time(detail: _Detail) -> str:
    data = detail.model_dump()
    for name in ("qualified_at", "disqualified_at", "converted_at", "accepted_at", "churned_at",
                 "stopped_at", "occurred_at"):
        if isinstance(data.get(name), str):
            return data[name][:19] + "Z"
    return SAMPLE_TIME
