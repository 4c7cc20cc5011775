"""The offers function's work: on a `Nurture Action` with channel `offer`, create the in-app offer for the
recipient (once per action, at most one live offer per account and offer type)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from pqlflow.channels.offers.offer import Catalog, make_offer, recipient_of
from pqlflow.channels.offers.store import OfferStore
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics


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
