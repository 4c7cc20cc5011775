"""Offers channel: on a `Nurture Action` with channel `offer`, create the in-app offer item for the
recipient (once per action, at most one live offer per account and offer type)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.parser import envelopes, parse
from pqlflow.channels.offers.offer import Catalog, load_catalog
from pqlflow.channels.offers.service import create_offer
from pqlflow.channels.offers.store import OfferStore
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    OFFER_CATALOG_FILE: str = Field(default="catalog.yaml", description="relative paths are next to this file")

    def catalog_path(self) -> Path:
        path = Path(self.OFFER_CATALOG_FILE)
        return path if path.is_absolute() else Path(__file__).parent / path


@functools.cache
def settings() -> Settings:
    return from_environ(Settings)


@functools.cache
def _default_store() -> OfferStore:
    return OfferStore(settings().TABLE_NAME)


@functools.cache
def _default_catalog() -> Catalog:
    return load_catalog(settings().catalog_path())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: Any, *, store: OfferStore | None = None, catalog: Catalog | None = None
) -> dict[str, Any]:
    action = parse(event=event, model=NurtureAction, envelope=envelopes.EventBridgeEnvelope)
    return create_offer(action, store or _default_store(), catalog or _default_catalog())
