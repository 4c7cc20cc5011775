"""Hostile and odd inputs on the engagement paths (found in review, 2026-12-04): unauthenticated requests that
used to crash the public callback routes, a callback time that made every retry fail, a `not-spam` report that
stopped a journey, unsubscribe clicks counted as interest, and a lost race that returned another step's task."""
from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path

import pytest
from pqlflow.channels.email.ses_events import record_ses_event
from pqlflow.channels.rep_tasks.callbacks import CallbackSecrets
from pqlflow.channels.rep_tasks.webhook import sign
from pqlflow.kernel import clock
from pqlflow.nurture.journey import stop_for

import functions.rep_task_events.app as callbacks_fn

# The integration suite's own stack (rep_task on moto + HubSpot/Slack fakes + an HTTP server playing API Gateway)
from tests.integration.channels.test_rep_task_events import (  # noqa: F401  (fixture)
    WEBHOOK_SECRET,
    closed_events,
    post,
    stack,
)
from tests.support.lambda_context import LambdaContext

MAIN = Path(__file__).resolve().parents[3]
SECRETS = CallbackSecrets.model_validate({"webhook": {"secret": "w" * 20}, "slack": {"signing_secret": "s" * 20},
                                          "hubspot": {"client_secret": "h" * 20}})


class _NoStore:
    """Unauthenticated requests must be refused before any store access."""

    def find(self, *a, **k):
        raise AssertionError("store touched by an unverified request")


class _NoPublisher:
    def publish(self, details):
        raise AssertionError("published for an unverified request")


def _gateway_event(path: str, body: bytes, headers: dict[str, str], *, b64: bool) -> dict:
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": headers,
        "requestContext": {"accountId": "1", "apiId": "a", "domainName": "api.example.test",
                           "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9",
                                    "userAgent": "x"},
                           "requestId": "r", "routeKey": "$default", "stage": "$default", "timeEpoch": 0},
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }


def _call(event: dict) -> int:
    """The status API Gateway would answer: an exception out of the handler is a 500."""
    try:
        return callbacks_fn.handler(event, LambdaContext(), store=_NoStore(), publisher=_NoPublisher(),
                                    secrets=SECRETS)["statusCode"]
    except AssertionError:
        raise
    except Exception as exc:  # what Lambda would log, and API Gateway answer 500 for
        print("handler raised", type(exc).__name__, exc)
        return 500


# --- unauthenticated requests are refused (401/4xx), never a crash (500, the error alarm) -------------------

@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/rep-tasks/webhook", {"x-pqlflow-timestamp": "{now}", "x-pqlflow-signature": "sha256=\u00e9"}),
        ("/rep-tasks/slack", {"x-slack-request-timestamp": "{now}", "x-slack-signature": "v0=\u00e9"}),
        ("/rep-tasks/hubspot", {"x-hubspot-request-timestamp": "{now_ms}", "x-hubspot-signature-v3": "\u00e9"}),
    ],
    ids=["webhook", "slack", "hubspot"],
)
def test_a_forged_signature_with_a_non_ascii_character_is_401_not_500(path, headers):
    now = time.time()
    clock.set_source(lambda: now)
    hdrs = {k: v.format(now=int(now), now_ms=int(now * 1000)) for k, v in headers.items()}
    assert _call(_gateway_event(path, b"[]", hdrs, b64=False)) == 401


@pytest.mark.parametrize("path", ["/rep-tasks/webhook", "/rep-tasks/slack", "/rep-tasks/hubspot"])
def test_an_unsigned_form_body_that_is_not_utf8_is_a_4xx_not_500(path):
    # HTTP API base64-encodes form bodies; one byte 0xff and no valid signature
    now = time.time()
    clock.set_source(lambda: now)
    headers = {"content-type": "application/x-www-form-urlencoded", "x-slack-request-timestamp": str(int(now)),
               "x-slack-signature": "v0=00", "x-pqlflow-timestamp": str(int(now)), "x-pqlflow-signature": "sha256=00",
               "x-hubspot-request-timestamp": str(int(now * 1000)), "x-hubspot-signature-v3": "AA=="}
    status = _call(_gateway_event(path, b"payload=\xff", headers, b64=True))
    assert 400 <= status < 500, status


# --- a signed webhook callback with an unusable closed_at is a 400 naming the field, not a 500 forever ------

@pytest.mark.parametrize("closed_at", ["1795705200000", "NaN", "1e300"], ids=["epoch-millis", "NaN", "huge"])
def test_a_signed_webhook_with_an_unusable_closed_at_is_400_naming_the_field(stack, closed_at):  # noqa: F811
    task = stack.make_task(f"tr-closed-at-{closed_at[:4]}")
    # closed_at as raw JSON text (NaN is what Python's json writes for float("nan"))
    body = f'{{"task_id": "{task["task_id"]}", "outcome": "completed", "closed_at": {closed_at}}}'.encode()
    ts = str(int(clock.now()))
    status, answer = post(stack, "/rep-tasks/webhook", body, {
        "Content-Type": "application/json", "X-Pqlflow-Timestamp": ts,
        "X-Pqlflow-Signature": sign(WEBHOOK_SECRET, ts, body)})
    assert status == 400, (status, answer)
    assert "closed_at" in answer.get("message", "")


# --- a `not-spam` feedback report is a correction: no Email Complained, no journey stop ---------------------

class _Suppressions:
    def __init__(self):
        self.added = []

    def add(self, s):
        self.added.append(s)
        return True


class _Bus:
    def __init__(self):
        self.details = []

    def publish(self, details):
        self.details += list(details)
        return len(details)


def _tagged(detail: dict) -> dict:
    detail = copy.deepcopy(detail)
    detail["mail"]["tags"].update({"pqlflow_action": ["act-1"], "pqlflow_transition": ["tr-1"],
                                   "pqlflow_account": ["acct-1"], "pqlflow_step": ["0"],
                                   "pqlflow_template": ["upgrade_nudge"]})
    return detail


def test_a_not_spam_feedback_report_neither_suppresses_nor_stops_the_journey():
    sample = json.loads((MAIN / "events/ses/complaint.json").read_text())
    detail = _tagged(sample["detail"])
    detail["complaint"]["complaintFeedbackType"] = "not-spam"
    suppressions, bus = _Suppressions(), _Bus()
    record_ses_event(detail, suppressions, bus, event_time=sample["time"])
    assert suppressions.added == []  # the suppression list honours not-spam...
    # ...and so does the engagement path: no Email Complained, so the route does not stop the journey
    stops = [stop_for(d.DETAIL_TYPE, d.model_dump(mode="json")) for d in bus.details]
    assert [s for s in stops if s is not None] == [], [d.DETAIL_TYPE for d in bus.details]


# --- the footer's Unsubscribe link is not click-tracked, and a click on it is not "clicked" -----------------

def test_the_unsubscribe_link_in_the_html_is_not_click_tracked_by_ses():
    import re

    from pqlflow.channels.email.brand import load_brand
    from pqlflow.channels.email.message import compose
    from pqlflow.channels.email.render import EmailTemplates
    from pqlflow.contracts.emitted import NurtureAction

    action = NurtureAction.model_validate(json.loads(
        sorted((MAIN / "examples/email-contexts").glob("*.json"))[0].read_text()))
    root = MAIN / "templates"
    composed = compose(action, templates=EmailTemplates(root), brand=load_brand(root),
                       sender="Northwind <hello@mail.example.com>", unsubscribe_url="https://api.example.com/unsubscribe",
                       signing_key=b"k" * 40)
    anchors = [a for a in re.findall(r"<a\b[^>]*>", composed.rendered.html) if "/unsubscribe?token=" in a]
    assert anchors, "no unsubscribe anchor found"
    # SES rewrites every link for click tracking unless the anchor carries `ses:no-track`
    assert all("ses:no-track" in a for a in anchors), anchors


def test_a_click_on_the_unsubscribe_link_is_not_an_email_clicked_engagement():
    sample = json.loads((MAIN / "events/ses/click.json").read_text())
    detail = _tagged(sample["detail"])
    detail["click"]["link"] = "https://api.example.com/unsubscribe?token=v1.abc.def"
    bus = _Bus()
    record_ses_event(detail, _Suppressions(), bus, event_time=sample["time"])
    assert [d.DETAIL_TYPE for d in bus.details] != ["Email Clicked"]


# --- RepTaskStore.create, on a lost race for a later step's task, returns that step's task -----------------

def test_create_of_a_later_step_task_that_already_exists_returns_that_task(stack):  # noqa: F811
    first = stack.make_task("tr-race", step=0)
    later = stack.make_task("tr-race", step=2)
    stored = stack.store.get("acct-1", "tr-race", 2)
    # a concurrent redelivery of step 2's Nurture Action loses the conditional put
    again = stack.store.create(stored)
    assert again.task_id == later["task_id"], (again.task_id, "is step 0's", first["task_id"])
