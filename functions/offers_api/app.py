"""Offers HTTP API (API Gateway HTTP API with a JWT authorizer): the signed-in user lists their active
offers and accepts or dismisses them. Identity is the JWT `sub`; another user's offer answers 404."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError, UnauthorizedError
from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.offers.offer import Offer, decide_accept, decide_dismiss, is_visible
from pqlflow.channels.store import OfferStore
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import OfferAccepted
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pydantic import BaseModel, ConfigDict, Field

_OFFER_ID = re.compile(r"^of_[0-9a-f]{24}$")


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)


@functools.cache
def settings() -> Settings:
    return from_environ(Settings)


class Conflict(ServiceError):
    def __init__(self, msg: str):
        super().__init__(409, msg)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def build_app(store: OfferStore, publisher: EventPublisher) -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver()

    def caller() -> str:
        claims = app.current_event.request_context.authorizer.jwt_claim
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthorizedError("a signed-in user (JWT `sub` claim) is required")
        return sub

    def own_offer(offer_id: str) -> Offer:
        user = caller()
        offer = store.get(user, offer_id) if _OFFER_ID.match(offer_id) else None
        if offer is None:  # someone else's offer looks exactly like a missing one
            raise NotFoundError("offer not found")
        return offer

    def publish_accepted(offer: Offer) -> None:
        """Called only by the holder of the offer's publish claim, so the event goes out once."""
        assert offer.accepted_at is not None
        event = OfferAccepted(
            offer_id=offer.offer_id,
            account_id=offer.account_id,
            user_id=offer.user_id,
            offer=offer.offer,
            accepted_at=_iso(offer.accepted_at),
        )
        try:
            publisher.publish([event])
        except Exception:
            store.release_publish(offer)  # let the client's retry publish it
            raise
        store.mark_accept_published(offer)
        metrics.add_metric(name="OffersAccepted", unit=MetricUnit.Count, value=1)

    @app.get("/offers")
    def list_offers() -> dict[str, Any]:
        now = clock.now()
        offers = [o for o in store.list_for_user(caller()) if is_visible(o, now)]
        offers.sort(key=lambda o: o.created_at, reverse=True)
        metrics.add_metric(name="OffersListed", unit=MetricUnit.Count, value=len(offers))
        return {"offers": [o.public(now) for o in offers]}

    @app.post("/offers/<offer_id>/accept")
    def accept(offer_id: str) -> dict[str, Any]:
        offer = own_offer(offer_id)
        now = clock.now()
        decision = decide_accept(offer, now)
        if decision.outcome == "change":
            if store.accept(offer, now):
                offer = offer.model_copy(update={"status": "accepted", "accepted_at": int(now)})
                publish_accepted(offer)
                logger.info("offer accepted", extra={"offer_id": offer.offer_id, "offer": offer.offer})
                return {"offer": offer.public(now)}
            offer = own_offer(offer_id)  # changed under us: answer from what is stored now
            decision = decide_accept(offer, now)
        if decision.outcome == "conflict":
            raise Conflict(decision.message)
        if not offer.accept_published and store.claim_publish(offer, now):
            publish_accepted(offer)  # the accepting request stopped before its event went out
        return {"offer": offer.public(now)}

    @app.post("/offers/<offer_id>/dismiss")
    def dismiss(offer_id: str) -> dict[str, Any]:
        offer = own_offer(offer_id)
        now = clock.now()
        decision = decide_dismiss(offer, now)
        if decision.outcome == "change":
            if store.dismiss(offer, now):
                offer = offer.model_copy(update={"status": "dismissed", "dismissed_at": int(now)})
                metrics.add_metric(name="OffersDismissed", unit=MetricUnit.Count, value=1)
                return {"offer": offer.public(now)}
            offer = own_offer(offer_id)
            decision = decide_dismiss(offer, now)
        if decision.outcome == "conflict":
            raise Conflict(decision.message)
        return {"offer": offer.public(now)}

    return app


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
