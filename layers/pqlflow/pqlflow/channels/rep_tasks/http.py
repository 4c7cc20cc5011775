"""The connectors' HTTP: stdlib JSON requests with a timeout, retrying transient failures with exponential
backoff and full jitter (the sleep is injectable), and the `DeliveryError` every connector raises."""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

USER_AGENT = "pqlflow-connectors/1"


class DeliveryError(Exception):
    """A connector could not deliver. `transient` failures are worth retrying later."""

    def __init__(self, message: str, *, transient: bool, attempts: int = 1, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.attempts = attempts
        self.retry_after = retry_after


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        return self.rand() * min(self.cap, self.base * (2**retry))


@dataclass
class Http:
    """JSON over urllib with a timeout, retrying connection errors, timeouts, 408, 429 and 5xx."""

    timeout: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str],
        attempts: int | None = None,
    ) -> tuple[Response, int]:
        """Send, retrying transient failures up to `attempts` (default: the backoff's) times."""
        tries = attempts or self.backoff.attempts
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        last = "no attempt made"
        retry_after: float | None = None
        for attempt in range(1, tries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(url, data=data, headers=hdrs, method=method)  # noqa: S310
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    return Response(resp.status, dict(resp.headers), resp.read()), attempt
            except urllib.error.HTTPError as exc:
                exc.read()
                status = exc.code
                # Only the status: error bodies may echo the values sent, which can be personal data.
                last = f"HTTP {status}"
                if status not in (408, 429) and status < 500:
                    raise DeliveryError(f"rejected: {last}", transient=False, attempts=attempt) from None
                retry_after = _retry_after(exc.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, bad replies
                reason = getattr(exc, "reason", exc)
                last = f"connection failed: {type(reason).__name__}"
            if attempt < tries:
                self.backoff.sleep(self.backoff.delay(attempt - 1, retry_after))
        raise DeliveryError(
            f"gave up after {tries} attempt(s): {last}", transient=True, attempts=tries, retry_after=retry_after
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None
