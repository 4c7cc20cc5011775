"""Each function's environment as a pydantic model, validated once per cold start.

A missing or malformed variable fails at start with its name, not deep inside a request.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class SettingsError(RuntimeError):
    """The function's environment is missing or has a bad variable (the message names it)."""


def from_environ(model: type[M], environ: dict[str, str] | None = None) -> M:
    env = dict(os.environ if environ is None else environ)
    try:
        return model.model_validate(env)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise SettingsError(f"{model.__name__} environment: {problems}") from None


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    RETENTION_DAYS: int = Field(default=90, ge=7, le=365)
    QUARANTINE_DAYS: int = Field(default=14, ge=1, le=90)
    PENDING_WINDOW_HOURS: int = Field(default=1, ge=1, le=24)
    CONVERSION_EVENTS: str = "Subscription Started,Plan Upgraded,Order Completed"
    DEFINITION_CACHE_SECONDS: float = Field(default=60, ge=0)

    @property
    def conversions(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.CONVERSION_EVENTS.split(",") if n.strip())


@cache
def ingest_settings() -> IngestSettings:
    return from_environ(IngestSettings)
