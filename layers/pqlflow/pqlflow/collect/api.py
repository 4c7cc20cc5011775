"""The collect function's edges: its settings, its collaborators, and API Gateway's event (payload 2.0) in."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.collect.keys import WriteKeySource
from pqlflow.collect.service import CollectRequest, CollectService
from pqlflow.contracts.bus import PutEventsSender
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.kernel.aws import AwsClient


class CollectSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    WRITE_KEYS_SECRET_ARN: str = Field(min_length=1)
    WRITE_KEYS_CACHE_SECONDS: int = Field(default=60, ge=0, le=3600)
    ALLOWED_SOURCES: str = Field(min_length=1, description="the stack's AllowedSources, comma separated")
    QUARANTINE_DAYS: int = Field(default=14, ge=1, le=90)
    RETENTION_DAYS: int = Field(default=90, ge=7, le=365)

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.ALLOWED_SOURCES.split(",") if s.strip())


class UsageBus:
    """PutEvents for the collected messages (`PutEventsSender`: valid chunks, failed entries retried)."""

    client = AwsClient("events")

    def __init__(self, client: Any = None, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self._sleep = sleep

    def send(self, entries: Sequence[dict[str, Any]]) -> int:
        return PutEventsSender(self.client, self._sleep).send(entries) if entries else 0


def build(settings: CollectSettings, *, secrets: Any = None, events: Any = None, dynamodb: Any = None,
          log_problem: Any = None, sleep: Callable[[float], None] = time.sleep) -> CollectService:
    """The service with its AWS adapters (clients created on first use unless given)."""
    service = CollectService(
        keys=WriteKeySource(settings.WRITE_KEYS_SECRET_ARN, settings.sources, settings.WRITE_KEYS_CACHE_SECONDS,
                            client=secrets),
        sender=UsageBus(events, sleep),
        quarantine=DynamoUsageStore(settings.TABLE_NAME, client=dynamodb),
        bus_name=settings.EVENT_BUS_NAME,
        quarantine_days=settings.QUARANTINE_DAYS,
        retention_days=settings.RETENTION_DAYS,
    )
    if log_problem is not None:
        service.log_problem = log_problem
    return service


def read_request(event: dict[str, Any]) -> CollectRequest:
    """The request an HTTP API (payload format 2.0) event carries: the call is the path's last segment."""
    http = (event.get("requestContext") or {}).get("http") or {}
    path = str(event.get("rawPath") or http.get("path") or "")
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw)
        except (binascii.Error, ValueError):
            body = b""
    else:
        body = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    return CollectRequest(str(http.get("method") or "POST"), path.rstrip("/").rsplit("/", 1)[-1], headers, body)
