"""Offers channel: on a `Nurture Action` with channel `offer`, create the in-app offer item for the
recipient (once per action, at most one live offer per account and offer type)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import envelopes, parse
from pqlflow.channels.offers.offer import Catalog, load_catalog, make_offer, recipient_of
from pqlflow.channels.store import OfferStore
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel import clock
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


def create_offer(action: NurtureAction, store: OfferStore, catalog: Catalog) -> dict[str, Any]:
    """The whole job, on a parsed action; returns what happened (also the handler's result)."""
    if action.channel != "offer" or action.outcome != "send":
        metrics.add_metric(name="OfferActionsIgnored", unit=MetricUnit.Count, value=1)
        return {"outcome": "ignored", "action_id": action.action_id}
    if not action.offer:
        raise ValueError(f"Nurture Action {action.action_id}: channel offer without an `offer` catalog key")
    spec = catalog.spec(action.offer)
    user_id = recipient_of(action)
    if user_id is None:
        logger.warning("offer action has no recipient user", extra={"action_id": action.action_id})
        metrics.add_metric(name="OffersWithoutRecipient", unit=MetricUnit.Count, value=1)
        return {"outcome": "no_recipient", "action_id": action.action_id}
    now = clock.now()
    offer = make_offer(action, spec, user_id, now)
    outcome = store.create(offer, now)
    logger.info(
        "offer " + outcome,
        extra={
            "action_id": action.action_id,
            "offer_id": offer.offer_id,
            "offer": offer.offer,
            "kind": offer.kind,
        },
    )
    metrics.add_metric(name=f"Offers{outcome.capitalize()}", unit=MetricUnit.Count, value=1)
    return {"outcome": outcome, "offer_id": offer.offer_id, "action_id": action.action_id}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: Any, *, store: OfferStore | None = None, catalog: Catalog | None = None
) -> dict[str, Any]:
    action = parse(event=event, model=NurtureAction, envelope=envelopes.EventBridgeEnvelope)
    return create_offer(action, store or _default_store(), catalog or _default_catalog())
