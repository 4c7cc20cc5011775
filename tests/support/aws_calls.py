"""Count the AWS requests a boto3 client makes, and make the Nth one fail (fault injection)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from botocore.exceptions import ClientError


class Crash(BaseException):
    """The process died mid-batch (timeout, out of memory): nothing in the handler can catch it."""


class CallRecorder:
    def __init__(self, client: Any):
        self.client = client
        self.calls: Counter[str] = Counter()
        self.total = 0
        self.transact_items = 0  # items written by TransactWriteItems calls (each is billed as a write)
        self.usage_writes: Counter[str] = Counter()  # PutItem/UpdateItem of usage state by item: hot, cold, archive
        self.fail_at: int | None = None
        self.failure: type[BaseException] | str = "throttle"
        client.meta.events.register("before-parameter-build.*.*", self._params)
        client.meta.events.register("before-call.*.*", self._before)
        client.meta.events.register("after-call.*.*", self._after)

    def attach(self, client: Any) -> None:
        """Count (and fail) another client's calls too, in one sequence with the first client's."""
        client.meta.events.register("before-call.*.*", self._before)
        client.meta.events.register("after-call.*.*", self._after)

    def _params(self, params: Any, model: Any, **_: Any) -> None:
        if model.name == "TransactWriteItems" and isinstance(params, dict):
            self.transact_items += len(params.get("TransactItems", []))
        elif model.name in ("PutItem", "UpdateItem") and isinstance(params, dict):
            sk = (params.get("Key") or params.get("Item") or {}).get("sk", {}).get("S", "")
            if sk.startswith("USAGE"):
                kind = "archive" if sk.startswith("USAGE#F") else "cold" if sk.startswith("USAGE#C") else "hot"
                self.usage_writes[kind] += 1

    def _after(self, model: Any, **_: Any) -> None:
        """failure "crash_after": the call succeeded, then the process died before it saw the answer."""
        if self.failure == "crash_after" and self.fail_at is not None and self.total == self.fail_at:
            raise Crash(f"injected crash after call {self.total} ({model.name}) succeeded")

    def _before(self, model: Any, **_: Any) -> None:
        self.total += 1
        self.calls[model.name] += 1
        if self.fail_at is not None and self.total == self.fail_at and self.failure != "crash_after":
            if self.failure == "throttle":
                raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException",
                                             "Message": "injected"}}, model.name)
            raise Crash(f"injected crash at call {self.total} ({model.name})")
