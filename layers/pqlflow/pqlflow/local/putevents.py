"""PutEvents as EventBridge accepts it: validate a request's entries and make events of the accepted ones.

Limits and errors follow the EventBridge API: at most 10 entries and 256 KB per request (entry size
counted as the documentation says), `Source`, `DetailType` and `Detail` required, `Detail` a JSON
object, the bus must exist. A rejected request raises `PutEventsRejected`; a bad entry gets its own
ErrorCode while the rest go through. Events get an id and `time` (the entry's Time, else
`pqlflow.kernel.clock` now, as EventBridge stamps receipt time). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pqlflow.kernel import clock
from pqlflow.local.model import ACCOUNT, REGION
from pqlflow.local.names import bus_name

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024


class PutEventsRejected(Exception):
    """The whole request is refused (what the API answers with an HTTP 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it towards the 256 KB request limit."""
    size = 14 if entry.get("Time") is not None else 0
    for key in ("Source", "DetailType", "Detail"):
        value = entry.get(key)
        if isinstance(value, str):
            size += len(value.encode())
    for resource in entry.get("Resources") or []:
        size += len(str(resource).encode())
    return size


def _time(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return clock.now()


def accept(
    entries: Sequence[Mapping[str, Any]], buses: Collection[str]
) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """The API's result entries, and the (bus, event) pairs that were accepted."""
    if not entries or len(entries) > MAX_ENTRIES:
        raise PutEventsRejected(
            "ValidationException",
            f"1 validation error detected: Value at 'entries' failed to satisfy constraint: Member must have "
            f"length between 1 and {MAX_ENTRIES} (got {len(entries)})",
        )
    if sum(entry_size(e) for e in entries) > MAX_REQUEST_BYTES:
        raise PutEventsRejected("ValidationException", "Total size of the entries in the request is over the limit.")
    results: list[dict[str, Any]] = []
    accepted: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        error = _entry_error(entry, buses)
        if error is not None:
            results.append({"ErrorCode": error[0], "ErrorMessage": error[1]})
            continue
        event_id = str(uuid.uuid4())
        results.append({"EventId": event_id})
        event = {
            "version": "0",
            "id": event_id,
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": ACCOUNT,
            "time": dt.datetime.fromtimestamp(_time(entry.get("Time")), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": list(entry.get("Resources") or []),
            "detail": json.loads(entry["Detail"]),
        }
        accepted.append((bus_name(str(entry.get("EventBusName") or "default")), event))
    return results, accepted


def _entry_error(entry: Mapping[str, Any], buses: Collection[str]) -> tuple[str, str] | None:
    for key in ("Source", "DetailType", "Detail"):
        if not entry.get(key):
            return "InvalidArgument", f"Parameter {key} is not valid. Reason: {key} is a required argument."
    try:
        detail = json.loads(entry["Detail"])
    except (TypeError, ValueError):
        return "MalformedDetail", "Detail is malformed."
    if not isinstance(detail, dict):
        return "MalformedDetail", "Detail is malformed."
    bus = bus_name(str(entry.get("EventBusName") or "default"))
    if bus not in buses:
        return "NotFoundException", f"Event bus {bus} does not exist."
    return None
