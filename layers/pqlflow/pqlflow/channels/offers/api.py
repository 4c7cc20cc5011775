"""The offers HTTP API (API Gateway HTTP API with a JWT authorizer) as a Powertools resolver: the signed-in
user lists their active offers and accepts or dismisses them. Identity is the JWT `sub`; another user's
offer answers 404, a decision the offer's state refuses answers 409."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError, UnauthorizedError
from aws_lambda_powertools.metrics import MetricUnit

from pqlflow.channels.offers.offer import Offer, decide_accept, decide_dismiss, is_visible, iso_time
from pqlflow.channels.offers.store import OfferStore
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import OfferAccepted
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics

_OFFER_ID = re.compile(r"^of_[0-9a-f]{24}$")


class Conflict(ServiceError):
    """The offer's state refuses the change (accepting a dismissed offer, say): HTTP 409."""

    def __init__(self, msg: str):
        super().__init__(409, msg)


def build_app(store: OfferStore, publisher: EventPublisher) -> APIGatewayHttpResolver:
    """The API's routes over one store and publisher: `GET /offers`, `POST /offers/<id>/accept|dismiss`."""
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
            accepted_at=iso_time(offer.accepted_at),
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
