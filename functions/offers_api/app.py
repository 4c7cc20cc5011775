"""Offers HTTP API (API Gateway HTTP API with a JWT authorizer): the signed-in user lists their active
offers (`GET /offers`), the app reports showing one (`POST /offers/{id}/view`), the user accepts or
dismisses it (`POST /offers/{id}/accept|dismiss`). Identity is the JWT `sub`; another user's offer
answers 404. `Offer Viewed`, `Offer Accepted` and `Offer Dismissed` go on the bus once per offer
(`pqlflow.channels.offers.api`)."""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from pqlflow.channels.offers.api import build_app
from pqlflow.channels.offers.store import OfferStore
from pqlflow.contracts.bus import EventPublisher
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)


@functools.cache
def settings() -> Settings:
    return from_environ(Settings)


@functools.cache
def _default_app() -> APIGatewayHttpResolver:
    s = settings()
    return build_app(OfferStore(s.TABLE_NAME), EventPublisher(s.EVENT_BUS_NAME))


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: Any,
    *,
    store: OfferStore | None = None,
    publisher: EventPublisher | None = None,
) -> dict[str, Any]:
    if store is None and publisher is None:
        app = _default_app()
    else:
        s = None if (store and publisher) else settings()
        app = build_app(
            store or OfferStore(s.TABLE_NAME),  # type: ignore[union-attr]
            publisher or EventPublisher(s.EVENT_BUS_NAME),  # type: ignore[union-attr]
        )
    return app.resolve(event, context)
