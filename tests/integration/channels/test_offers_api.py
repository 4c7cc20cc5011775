"""The offers HTTP API over real HTTP: a local server on 127.0.0.1 plays API Gateway (HTTP API v2
with a JWT authorizer: it checks a real RS256 token with PyJWT against the configured issuer and
audience and passes the claims to the function), and the offers live in a moto table."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pqlflow.channels.offers.offer import engagement_id_for, load_catalog
from pqlflow.channels.offers.store import OfferStore
from pqlflow.contracts.emitted import OfferAccepted, OfferDismissed, OfferViewed, Reason
from pqlflow.kernel import clock

from functions.offers.app import handler as offers_handler
from functions.offers_api.app import handler as api_handler
from tests.support.channels import FakePublisher, offer_action, pqlflow_event
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

ROOT = Path(__file__).resolve().parents[3]
CATALOG = load_catalog(ROOT / "examples" / "offers" / "catalog.yaml")
ISSUER = "https://auth.example.test/"
AUDIENCE = "pqlflow-app"
NOW = 1_800_000_000.0
DAY = 86_400


@dataclass
class Gateway:
    """API Gateway HTTP API v2 in front of the offers function, JWT authorizer included."""

    store: OfferStore
    publisher: FakePublisher
    public_key: Any
    issuer: str = ISSUER
    audience: str = AUDIENCE
    url: str = ""

    def event(self, method: str, path: str, headers: dict[str, str], body: bytes, claims: dict) -> dict:
        now = clock.now()
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "offersapi",
                "authorizer": {"jwt": {"claims": claims, "scopes": None}},
                "domainName": "127.0.0.1",
                "domainPrefix": "127",
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "body": body.decode() if body else None,
            "isBase64Encoded": False,
        }

    def authorize(self, header: str | None) -> dict | None:
        if not header or not header.startswith("Bearer "):
            return None
        try:
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                self.public_key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        return {k: str(v) for k, v in claims.items()}  # API Gateway passes claims as strings


@pytest.fixture
def keys() -> tuple[Any, Any]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private, private.public_key()


@pytest.fixture
def store(table_name: str) -> OfferStore:
    clock.set_source(lambda: NOW)
    return OfferStore(table_name)


@pytest.fixture
def gateway(store, keys) -> Iterator[Gateway]:
    gw = Gateway(store=store, publisher=FakePublisher(), public_key=keys[1])

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            claims = gw.authorize(self.headers.get("Authorization"))
            if claims is None:  # the authorizer answers without invoking the function
                self._reply(401, {"Content-Type": "application/json"}, b'{"message":"Unauthorized"}')
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            event = gw.event(self.command, self.path, headers, body, claims)
            try:
                result = api_handler(event, LambdaContext(), store=gw.store, publisher=gw.publisher)
            except Exception:  # a function error: API Gateway answers 500
                self._reply(500, {"Content-Type": "application/json"}, b'{"message":"Internal Server Error"}')
                return
            self._reply(result["statusCode"], result.get("headers") or {}, (result.get("body") or "").encode())

        def _reply(self, status: int, headers: dict[str, str], raw: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = _serve  # noqa: N815
        do_POST = _serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    gw.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield gw
    httpd.shutdown()
    httpd.server_close()


def token(private_key: Any, sub: str, *, issuer: str = ISSUER, audience: str = AUDIENCE) -> str:
    # The authorizer checks tokens on wall-clock time, whatever the simulated clock of the offers says.
    now = int(time.time())
    claims = {"sub": sub, "iss": issuer, "aud": audience, "iat": now, "exp": now + 600}
    return jwt.encode(claims, private_key, algorithm="RS256")


def call(gw: Gateway, method: str, path: str, bearer: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    req = urllib.request.Request(gw.url + path, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def give_offer(store: OfferStore, action_id: str, account: str, user: str, offer: str) -> str:
    reasons = [Reason(code="paid.sso", text="tried to turn on SSO", kind="paid_feature")]
    detail = offer_action(action_id, account, user, offer, reasons=reasons)
    result = offers_handler(pqlflow_event(detail), LambdaContext(), store=store, catalog=CATALOG)
    assert result["outcome"] == "created"
    return result["offer_id"]


@pytest.fixture
def two_users(gateway, store, keys) -> dict[str, Any]:
    """User A (acct-a) and user B (acct-b) each with one active offer."""
    a_offer = give_offer(store, "act-a", "acct-a", "user-a", "pro-discount-20")
    b_offer = give_offer(store, "act-b", "acct-b", "user-b", "unlock-sso")
    return {
        "a": token(keys[0], "user-a"),
        "b": token(keys[0], "user-b"),
        "a_offer": a_offer,
        "b_offer": b_offer,
    }


def test_each_user_lists_only_their_own_active_offers(gateway, two_users):
    # When A and B each ask for their offers
    status_a, body_a = call(gateway, "GET", "/offers", two_users["a"])
    status_b, body_b = call(gateway, "GET", "/offers", two_users["b"])

    # Then each sees their own offer and nothing of the other's
    assert status_a == status_b == 200
    assert [o["id"] for o in body_a["offers"]] == [two_users["a_offer"]]
    assert [o["id"] for o in body_b["offers"]] == [two_users["b_offer"]]
    offer = body_a["offers"][0]
    assert offer["title"] == "20% off Pro for 3 months"
    assert offer["terms"] == {"percent": 20, "duration_months": 3}
    assert offer["expires_at"] == "2027-01-22T08:00:00Z"  # NOW + 7 days


def test_user_a_cannot_accept_or_dismiss_user_bs_offer(gateway, two_users):
    # When A tries to accept and to dismiss B's offer by its id
    accept = call(gateway, "POST", f"/offers/{two_users['b_offer']}/accept", two_users["a"])
    dismiss = call(gateway, "POST", f"/offers/{two_users['b_offer']}/dismiss", two_users["a"])

    # Then A is told it does not exist (404, not 403: ids don't leak) and nothing happened
    assert accept == (404, {"statusCode": 404, "message": "offer not found"})
    assert dismiss[0] == 404
    assert gateway.publisher.published == []
    _, body_b = call(gateway, "GET", "/offers", two_users["b"])
    assert [(o["id"], o["status"]) for o in body_b["offers"]] == [(two_users["b_offer"], "active")]


def test_accept_is_idempotent_and_emits_offer_accepted_once(gateway, two_users):
    path = f"/offers/{two_users['a_offer']}/accept"

    # When A accepts twice (a double click, a retried request)
    first = call(gateway, "POST", path, two_users["a"])
    second = call(gateway, "POST", path, two_users["a"])

    # Then both answer with the accepted offer, and one Offer Accepted went out
    assert first[0] == second[0] == 200
    assert first[1]["offer"]["status"] == second[1]["offer"]["status"] == "accepted"
    (event,) = gateway.publisher.published
    assert isinstance(event, OfferAccepted)
    assert (event.offer_id, event.account_id, event.user_id, event.offer) == (
        two_users["a_offer"],
        "acct-a",
        "user-a",
        "pro-discount-20",
    )
    assert event.accepted_at == "2027-01-15T08:00:00Z"

    # And the offer no longer shows as one to act on
    assert call(gateway, "GET", "/offers", two_users["a"])[1]["offers"] == []


def test_an_expired_offer_cannot_be_accepted(gateway, two_users):
    # Given A's offer (valid 7 days) eight days later
    clock.set_source(lambda: NOW + 8 * DAY)

    # When A tries to accept it
    status, body = call(gateway, "POST", f"/offers/{two_users['a_offer']}/accept", two_users["a"])

    # Then it is refused with a clear reason, and no longer listed
    assert status == 409
    assert "expired" in body["message"] and "can no longer be accepted" in body["message"]
    assert call(gateway, "GET", "/offers", two_users["a"])[1]["offers"] == []
    assert gateway.publisher.published == []


def test_a_dismissed_offer_cannot_be_accepted(gateway, two_users):
    base = f"/offers/{two_users['a_offer']}"
    assert call(gateway, "POST", base + "/dismiss", two_users["a"])[0] == 200
    assert call(gateway, "POST", base + "/dismiss", two_users["a"])[0] == 200  # idempotent

    status, body = call(gateway, "POST", base + "/accept", two_users["a"])

    assert status == 409 and "dismissed" in body["message"]
    assert call(gateway, "GET", "/offers", two_users["a"])[1]["offers"] == []


def test_an_accepted_offer_cannot_be_dismissed(gateway, two_users):
    base = f"/offers/{two_users['a_offer']}"
    call(gateway, "POST", base + "/accept", two_users["a"])
    status, body = call(gateway, "POST", base + "/dismiss", two_users["a"])
    assert status == 409 and "already accepted" in body["message"]


def test_event_that_failed_to_publish_goes_out_on_the_retry(gateway, two_users):
    # Given EventBridge failing once
    gateway.publisher.fail_times = 1
    path = f"/offers/{two_users['a_offer']}/accept"

    # When A accepts, gets an error, and retries
    failed = call(gateway, "POST", path, two_users["a"])
    retried = call(gateway, "POST", path, two_users["a"])

    # Then the retry succeeds and exactly one Offer Accepted went out
    assert failed[0] == 500
    assert retried[0] == 200 and retried[1]["offer"]["status"] == "accepted"
    assert len(gateway.publisher.published) == 1


def test_unknown_or_malformed_offer_ids_are_404(gateway, two_users):
    assert call(gateway, "POST", "/offers/of_000000000000000000000000/accept", two_users["a"])[0] == 404
    assert call(gateway, "POST", "/offers/..%2F..%2Fetc/accept", two_users["a"])[0] == 404


def test_the_authorizer_refuses_tokens_for_another_issuer_or_audience(gateway, two_users, keys):
    wrong_aud = token(keys[0], "user-a", audience="another-app")
    wrong_iss = token(keys[0], "user-a", issuer="https://evil.example.test/")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = token(other_key, "user-b")
    for bad in (wrong_aud, wrong_iss, forged, None):
        assert call(gateway, "GET", "/offers", bad)[0] == 401


def test_a_token_without_sub_is_refused_by_the_function(store):
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/offers",
        "rawQueryString": "",
        "headers": {},
        "requestContext": {
            "http": {"method": "GET", "path": "/offers", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "authorizer": {"jwt": {"claims": {"iss": ISSUER}, "scopes": None}},
            "requestId": "r",
            "routeKey": "$default",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    result = api_handler(event, LambdaContext(), store=store, publisher=FakePublisher())
    assert result["statusCode"] == 401


# --- Offer Viewed / Offer Dismissed: the app reports showing an offer, the user dismissing it ------------


def test_a_view_is_recorded_once_and_emits_offer_viewed_once(gateway, store, keys):
    # Given an offer made at step 2 of a journey
    detail = offer_action("act-v", "acct-v", "user-v", "pro-discount-20", step=2)
    offer_id = offers_handler(pqlflow_event(detail), LambdaContext(), store=store, catalog=CATALOG)["offer_id"]
    bearer = token(keys[0], "user-v")
    path = f"/offers/{offer_id}/view"

    # When the app reports showing it three times (every render, a retried request), a minute apart
    answers = []
    for i in range(3):
        clock.set_source(lambda i=i: NOW + 60 * i)
        answers.append(call(gateway, "POST", path, bearer))

    # Then each answers 200 with the offer, still active, and one Offer Viewed went out at the first view
    assert [status for status, _ in answers] == [200, 200, 200]
    assert {body["offer"]["status"] for _, body in answers} == {"active"}
    (event,) = gateway.publisher.published
    assert isinstance(event, OfferViewed)
    assert (event.offer_id, event.offer, event.account_id, event.user_id) == (
        offer_id, "pro-discount-20", "acct-v", "user-v")
    assert (event.action_id, event.transition_id, event.step) == ("act-v", "tr-act-v", 2)
    assert event.occurred_at == "2027-01-15T08:00:00Z"  # NOW: the first view
    assert event.engagement_id == engagement_id_for(offer_id, "viewed")


def test_a_dismissal_emits_offer_dismissed_once(gateway, two_users):
    path = f"/offers/{two_users['a_offer']}/dismiss"
    assert call(gateway, "POST", path, two_users["a"])[0] == 200
    assert call(gateway, "POST", path, two_users["a"])[0] == 200
    (event,) = gateway.publisher.published
    assert isinstance(event, OfferDismissed)
    assert (event.offer_id, event.account_id, event.user_id, event.action_id) == (
        two_users["a_offer"], "acct-a", "user-a", "act-a")
    assert event.engagement_id == engagement_id_for(two_users["a_offer"], "dismissed")
    assert event.engagement_id != engagement_id_for(two_users["a_offer"], "viewed")


def test_view_and_dismiss_are_authenticated_like_accept(gateway, two_users):
    # Another user's offer is a missing one; no token or a forged one never reaches the function
    for action in ("view", "dismiss"):
        path = f"/offers/{two_users['b_offer']}/{action}"
        assert call(gateway, "POST", path, two_users["a"]) == (404, {"statusCode": 404, "message": "offer not found"})
        assert call(gateway, "POST", path, None)[0] == 401
    assert gateway.publisher.published == []


def test_an_offer_that_can_no_longer_be_acted_on_cannot_be_viewed(gateway, two_users):
    clock.set_source(lambda: NOW + 8 * DAY)
    status, body = call(gateway, "POST", f"/offers/{two_users['a_offer']}/view", two_users["a"])
    assert status == 409 and "expired" in body["message"] and "can no longer be shown" in body["message"]
    assert gateway.publisher.published == []


def test_a_view_that_failed_to_publish_goes_out_on_the_retry_once(gateway, two_users):
    gateway.publisher.fail_times = 1
    path = f"/offers/{two_users['a_offer']}/view"
    failed = call(gateway, "POST", path, two_users["a"])
    retried = call(gateway, "POST", path, two_users["a"])
    again = call(gateway, "POST", path, two_users["a"])
    assert failed[0] == 500 and retried[0] == again[0] == 200
    assert [type(e) for e in gateway.publisher.published] == [OfferViewed]


def test_a_crash_between_recording_and_publishing_is_completed_by_a_later_call(gateway, store, two_users):
    # Given a dismissal and a view that were recorded (their claims taken) but whose process died before
    # publishing: the stored offer says so, nothing went out
    offer = store.get("user-a", two_users["a_offer"])
    assert store.view(offer, NOW)
    assert store.dismiss(store.get("user-a", two_users["a_offer"]), NOW)
    # When the app calls again within the claim's 10 s, nothing goes out (the first request may still publish)
    call(gateway, "POST", f"/offers/{two_users['a_offer']}/view", two_users["a"])
    assert gateway.publisher.published == []
    # and after it, the next calls publish each event once
    clock.set_source(lambda: NOW + 11)
    for _ in range(2):
        call(gateway, "POST", f"/offers/{two_users['a_offer']}/view", two_users["a"])
        call(gateway, "POST", f"/offers/{two_users['a_offer']}/dismiss", two_users["a"])
    assert sorted(type(e).__name__ for e in gateway.publisher.published) == ["OfferDismissed", "OfferViewed"]
