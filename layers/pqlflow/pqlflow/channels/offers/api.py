"""The offers HTTP API (API Gateway HTTP API with a JWT authorizer) as a Powertools resolver: the signed-in
user lists their active offers, and the app reports showing one (`view`) and the user accepting or
dismissing it. Identity is the JWT `sub`; another user's offer answers 404, a decision the offer's state
refuses answers 409. Each of `Offer Accepted`, `Offer Viewed` and `Offer Dismissed` goes on the bus once
per offer: the request that changes the offer claims publishing it, and a retry after a failed publish
(or a crash) publishes it then."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError, UnauthorizedError
from aws_lambda_powertools.metrics import MetricUnit

from pqlflow.channels.offers.offer import (
    Offer,
    decide_accept,
    decide_dismiss,
    decide_view,
    engagement_id_for,
    is_visible,
    iso_time,
)
from pqlflow.channels.offers.store import OfferEvent, OfferStore
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import OfferAccepted, OfferDismissed, OfferViewed, _Detail
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics

_OFFER_ID = re.compile(r"^of_[0-9a-f]{24}$")


_PUBLISHED: dict[OfferEvent, str] = {"accept": "OffersAccepted", "dismiss": "OffersDismissed", "view": "OffersViewed"}


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

    def event_of(offer: Offer, event: OfferEvent) -> _Detail:
        if event == "accept":
            assert offer.accepted_at is not None
            return OfferAccepted(
                offer_id=offer.offer_id,
                account_id=offer.account_id,
                user_id=offer.user_id,
                offer=offer.offer,
                accepted_at=iso_time(offer.accepted_at),
            )
        at = offer.viewed_at if event == "view" else offer.dismissed_at
        assert at is not None
        model = OfferViewed if event == "view" else OfferDismissed
        return model(
            engagement_id=engagement_id_for(offer.offer_id, "viewed" if event == "view" else "dismissed"),
            action_id=offer.action_id,
            transition_id=offer.transition_id,
            account_id=offer.account_id,
            user_id=offer.user_id,
            step=offer.step,
            occurred_at=iso_time(at),
            offer_id=offer.offer_id,
            offer=offer.offer,
        )

    def publish(offer: Offer, event: OfferEvent) -> None:
        """Called only by the holder of the offer's claim on `event`, so the event goes out once."""
        try:
            publisher.publish([event_of(offer, event)])
        except Exception:
            store.release_publish(offer, event)  # let the client's retry publish it
            raise
        store.mark_published(offer, event)
        metrics.add_metric(name=_PUBLISHED[event], unit=MetricUnit.Count, value=1)

    def publish_pending(offer: Offer, event: OfferEvent, now: float) -> None:
        """The request that changed the offer stopped before its event went out: publish it now."""
        published = {"accept": offer.accept_published, "dismiss": offer.dismiss_published,
                     "view": offer.view_published}[event]
        if not published and store.claim_publish(offer, now, event=event):
            publish(offer, event)

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
                publish(offer, "accept")
                logger.info("offer accepted", extra={"offer_id": offer.offer_id, "offer": offer.offer})
                return {"offer": offer.public(now)}
            offer = own_offer(offer_id)  # changed under us: answer from what is stored now
            decision = decide_accept(offer, now)
        if decision.outcome == "conflict":
            raise Conflict(decision.message)
        publish_pending(offer, "accept", now)
        return {"offer": offer.public(now)}

    @app.post("/offers/<offer_id>/dismiss")
    def dismiss(offer_id: str) -> dict[str, Any]:
        offer = own_offer(offer_id)
        now = clock.now()
        decision = decide_dismiss(offer, now)
        if decision.outcome == "change":
            if store.dismiss(offer, now):
                offer = offer.model_copy(update={"status": "dismissed", "dismissed_at": int(now)})
                publish(offer, "dismiss")
                return {"offer": offer.public(now)}
            offer = own_offer(offer_id)
            decision = decide_dismiss(offer, now)
        if decision.outcome == "conflict":
            raise Conflict(decision.message)
        publish_pending(offer, "dismiss", now)
        return {"offer": offer.public(now)}

    @app.post("/offers/<offer_id>/view")
    def view(offer_id: str) -> dict[str, Any]:
        """The app showed the offer to its user: recorded once (the first view), `Offer Viewed` once."""
        offer = own_offer(offer_id)
        now = clock.now()
        decision = decide_view(offer, now)
        if decision.outcome == "change":
            if store.view(offer, now):
                offer = offer.model_copy(update={"viewed_at": int(now)})
                publish(offer, "view")
                return {"offer": offer.public(now)}
            offer = own_offer(offer_id)
            decision = decide_view(offer, now)
        if decision.outcome == "conflict":
            raise Conflict(decision.message)
        publish_pending(offer, "view", now)
        return {"offer": offer.public(now)}

    return app
