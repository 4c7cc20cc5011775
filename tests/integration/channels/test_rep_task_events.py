"""Rep-task callbacks over real HTTP: a local server on 127.0.0.1 plays API Gateway (HTTP API v2, a public
route) in front of rep_task_events; tasks are made by the rep_task function on moto (delivered to local
HubSpot and Slack fakes), and `Rep Task Closed` is read from a queue on the moto bus.

Each connector's callback is signed as its sender signs it: the webhook with `webhook.sign`, Slack with
the `v0:` HMAC of its signing secret, HubSpot with webhooks v3 (base64 HMAC of method, URI, body and
timestamp in milliseconds)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.channels.rep_tasks.callback_api import engagement_id_for
from pqlflow.channels.rep_tasks.callbacks import CallbackSecrets
from pqlflow.channels.rep_tasks.http import Backoff, Http
from pqlflow.channels.rep_tasks.hubspot import HubSpotConnector
from pqlflow.channels.rep_tasks.slack import SlackConnector
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.channels.rep_tasks.task import load_roster
from pqlflow.channels.rep_tasks.webhook import sign
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import DefinitionRef, NurtureAction, PqlQualified, Reason, RepTaskClosed
from pqlflow.kernel import clock

import functions.rep_task.app as rep_task
import functions.rep_task_events.app as callbacks_fn
from tests.support.channels import pqlflow_event
from tests.support.http_fakes import TOKEN, FakeHubSpot, FakeSlack, LocalServer
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

ROOT = Path(__file__).resolve().parents[3]
ROSTER = load_roster(ROOT / "examples" / "reps" / "roster.yaml")
NOW = 1_795_705_200.0  # Thursday 2026-11-26 15:00 UTC
WEBHOOK_SECRET = "whsec-" + "w" * 26
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
HUBSPOT_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
DOMAIN = "api.example.test"
SECRETS = CallbackSecrets.model_validate({
    "webhook": {"secret": WEBHOOK_SECRET},
    "slack": {"signing_secret": SLACK_SECRET},
    "hubspot": {"client_secret": HUBSPOT_SECRET},
})


def action_event(transition_id: str, step: int = 0) -> dict[str, Any]:
    q = PqlQualified(
        transition_id=transition_id,
        account_id="acct-1",
        definition=DefinitionRef(name="slack-messages", version=1),
        qualified_at="2026-11-27T14:59:00Z",
        touch="high",
        reasons=[Reason(code="limit.messages", text="2,000 messages: the free plan's limit", kind="limit",
                        signal="messages", value=2000, threshold=2000)],
        account_traits={"name": "Initech", "territory": "amer"},
    )
    detail = NurtureAction(
        action_id=f"act-{transition_id}", transition_id=transition_id, account_id="acct-1", channel="rep_task",
        touch="high", step=step, rule="high-touch", reasons=q.reasons, context=q.model_dump(mode="json"),
    ).model_dump(mode="json")
    return pqlflow_event(detail, time="2026-11-27T15:00:00Z")


@dataclass
class Stack:
    store: RepTaskStore
    publisher: EventPublisher
    queue: str
    hubspot: FakeHubSpot
    slack: FakeSlack
    connectors: list[Any]
    secrets: CallbackSecrets = field(default_factory=lambda: SECRETS)
    url: str = ""

    def make_task(self, transition_id: str, step: int = 0) -> dict[str, Any]:
        """The rep_task function handles a Nurture Action: the task is stored and delivered."""
        result = rep_task.handler(action_event(transition_id, step), LambdaContext(), store=self.store,
                                  publisher=self.publisher, roster=ROSTER, connectors=self.connectors)
        assert result["outcome"] == "delivered"
        drain(self.queue)  # Rep Task Created
        task = self.store.get("acct-1", transition_id, step)
        assert task is not None
        return {"task_id": task.task_id, "hubspot_id": task.deliveries["hubspot"].ref, "action_id": task.action_id}


def drain(url: str) -> list[dict[str, Any]]:
    sqs, out = boto3.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return out
        for m in messages:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def closed_events(stack: Stack) -> list[RepTaskClosed]:
    published = drain(stack.queue)
    return [RepTaskClosed.model_validate(e["detail"]) for e in published if e["detail-type"] == "Rep Task Closed"]


@pytest.fixture
def stack(table_name, bus_name) -> Iterator[Stack]:
    clock.set_source(lambda: NOW)
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName=f"bus-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName=bus_name, EventPattern=json.dumps({"source": ["pqlflow"]}))
    events.put_targets(Rule="all", EventBusName=bus_name, Targets=[{"Id": "q", "Arn": arn}])
    hubspot, slack = FakeHubSpot(), FakeSlack()
    with LocalServer(hubspot) as hs, LocalServer(slack) as sl:
        http = Http(timeout=2, backoff=Backoff(attempts=2, base=0.01, cap=0.01, sleep=lambda s: None))
        st = Stack(
            store=RepTaskStore(table_name), publisher=EventPublisher(bus_name), queue=url, hubspot=hubspot,
            slack=slack, connectors=[HubSpotConnector(TOKEN, hs.url, http=http),
                                     SlackConnector(sl.url + "/services/T000/B000/XXXX", http=http)],
        )
        httpd = _gateway(st)
        st.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        yield st
        httpd.shutdown()
        httpd.server_close()


def _gateway(st: Stack) -> ThreadingHTTPServer:
    """API Gateway HTTP API v2 in front of rep_task_events: public routes, form bodies base64-encoded."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            binary = headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
            event = {
                "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
                "headers": headers,
                "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": DOMAIN,
                                   "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                                            "sourceIp": "127.0.0.1", "userAgent": ""},
                                   "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
                                   "timeEpoch": int(clock.now() * 1000)},
                "body": base64.b64encode(raw).decode() if binary else raw.decode(),
                "isBase64Encoded": binary,
            }
            try:
                result = callbacks_fn.handler(event, LambdaContext(), store=st.store, publisher=st.publisher,
                                              secrets=st.secrets)
            except Exception:
                self._reply(500, b'{"message":"Internal Server Error"}')
                return
            self._reply(result["statusCode"], (result.get("body") or "").encode())

        def _reply(self, status: int, raw: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


def post(st: Stack, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(st.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith(b"{") else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# --- how each connector signs ------------------------------------------------------------------------


def webhook_call(st: Stack, doc: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: float = NOW):
    body = json.dumps(doc).encode()
    ts = str(int(at))
    return post(st, "/rep-tasks/webhook", body, {"Content-Type": "application/json", "X-Pqlflow-Timestamp": ts,
                                                 "X-Pqlflow-Signature": sign(secret, ts, body)})


def slack_click(task_id: str, action_id: str = "pqlflow_task_done") -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U0REP", "name": "pat"}, "team": {"id": "T000"},
               "response_url": "https://hooks.slack.com/actions/T000/1/abc",
               "actions": [{"type": "button", "action_id": action_id, "block_id": "pqlflow_task",
                            "value": task_id, "action_ts": f"{NOW:.6f}"}]}
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def slack_call(st: Stack, body: bytes, *, secret: str = SLACK_SECRET, at: float = NOW):
    ts = str(int(at))
    mac = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return post(st, "/rep-tasks/slack", body, {"Content-Type": "application/x-www-form-urlencoded",
                                               "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac}"})


def hubspot_events(hubspot_id: str, value: str = "COMPLETED", prop: str = "hs_task_status") -> list[dict]:
    return [{"eventId": 100, "subscriptionId": 7, "portalId": 62515, "appId": 54321, "occurredAt": int(NOW * 1000),
             "subscriptionType": "object.propertyChange", "attemptNumber": 0, "objectId": int(hubspot_id),
             "objectTypeId": "0-27", "propertyName": prop, "propertyValue": value, "changeSource": "CRM_UI"}]


def hubspot_call(st: Stack, events: list[dict], *, secret: str = HUBSPOT_SECRET, at: float = NOW,
                 uri: str = f"https://{DOMAIN}/rep-tasks/hubspot"):
    body = json.dumps(events).encode()
    ts = str(int(at * 1000))
    mac = hmac.new(secret.encode(), b"POST" + uri.encode() + body + ts.encode(), hashlib.sha256).digest()
    return post(st, "/rep-tasks/hubspot", body, {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
                                                 "X-HubSpot-Signature-v3": base64.b64encode(mac).decode()})


# --- the webhook callback ----------------------------------------------------------------------------


def test_a_signed_webhook_callback_closes_the_task_once(stack):
    # Given a task made at step 3 of a journey
    task = stack.make_task("tr-w", step=3)
    # When the receiver reports it closed, twice (its retry)
    first = webhook_call(stack, {"task_id": task["task_id"], "outcome": "dismissed"})
    second = webhook_call(stack, {"task_id": task["task_id"], "outcome": "completed"})
    # Then both answer 200, and one Rep Task Closed names the task, its action, transition, account and step
    assert first == (200, {"closed": 1, "duplicate": 0, "unknown": 0})
    assert second == (200, {"closed": 0, "duplicate": 1, "unknown": 0})
    (event,) = closed_events(stack)
    assert (event.task_id, event.action_id, event.transition_id, event.account_id, event.step) == (
        task["task_id"], "act-tr-w", "tr-w", "acct-1", 3)
    assert (event.via, event.outcome, event.occurred_at) == ("webhook", "dismissed", "2026-11-26T15:00:00Z")
    assert event.engagement_id == engagement_id_for(task["task_id"])


def test_a_webhook_callback_with_a_bad_or_stale_signature_is_refused(stack):
    task = stack.make_task("tr-w2")
    bad = webhook_call(stack, {"task_id": task["task_id"]}, secret="not-the-secret-" + "x" * 10)
    stale = webhook_call(stack, {"task_id": task["task_id"]}, at=NOW - 301)
    unsigned = post(stack, "/rep-tasks/webhook", b"{}", {"Content-Type": "application/json"})
    assert bad[0] == stale[0] == unsigned[0] == 401
    assert "bad signature" in bad[1]["message"]
    assert "stale timestamp" in stale[1]["message"]
    assert "missing X-Pqlflow-Timestamp" in unsigned[1]["message"]
    assert closed_events(stack) == []


def test_a_webhook_callback_for_an_unknown_task_is_404_and_a_bad_body_400(stack):
    unknown = webhook_call(stack, {"task_id": "rt_" + "0" * 24})
    bad = webhook_call(stack, {"task_id": "rt_" + "0" * 24, "outcome": "won"})
    assert unknown == (404, {"statusCode": 404, "message": "task not found"})
    assert bad[0] == 400 and "outcome" in bad[1]["message"]


# --- Slack's "Mark done" button ---------------------------------------------------------------------


def test_the_slack_message_carries_a_mark_done_button_whose_click_closes_the_task(stack):
    # Given a task delivered to Slack
    task = stack.make_task("tr-s")
    (message,) = stack.slack.messages
    (actions,) = [b for b in message["blocks"] if b["type"] == "actions"]
    (button,) = actions["elements"]
    assert (button["text"]["text"], button["value"]) == ("Mark done", task["task_id"])
    # When the rep clicks it (Slack posts the interaction; a double click posts twice)
    first = slack_call(stack, slack_click(button["value"], button["action_id"]))
    second = slack_call(stack, slack_click(button["value"], button["action_id"]))
    # Then Slack gets its 200s and one Rep Task Closed went out, via Slack
    assert first[0] == second[0] == 200
    (event,) = closed_events(stack)
    assert (event.task_id, event.via, event.outcome) == (task["task_id"], "slack", "completed")


def test_a_slack_request_with_a_bad_or_stale_signature_is_refused(stack):
    task = stack.make_task("tr-s2")
    bad = slack_call(stack, slack_click(task["task_id"]), secret="another-signing-secret")
    stale = slack_call(stack, slack_click(task["task_id"]), at=NOW + 301)
    assert bad[0] == stale[0] == 401
    assert "bad signature" in bad[1]["message"] and "stale" in stale[1]["message"]
    assert closed_events(stack) == []


def test_a_slack_click_for_an_unknown_task_is_404_and_other_interactions_are_ignored(stack):
    assert slack_call(stack, slack_click("rt_" + "1" * 24))[0] == 404
    assert slack_call(stack, slack_click("../../etc"))[0] == 404
    task = stack.make_task("tr-s3")
    assert slack_call(stack, slack_click(task["task_id"], action_id="something_else"))[0] == 200
    assert closed_events(stack) == []


# --- HubSpot webhooks v3 ----------------------------------------------------------------------------


def test_a_hubspot_task_completed_closes_the_task_once(stack):
    task = stack.make_task("tr-h", step=1)
    first = hubspot_call(stack, hubspot_events(task["hubspot_id"]))
    second = hubspot_call(stack, hubspot_events(task["hubspot_id"]))  # HubSpot retries, or reports twice
    assert first == (200, {"closed": 1, "duplicate": 0, "unknown": 0})
    assert second == (200, {"closed": 0, "duplicate": 1, "unknown": 0})
    (event,) = closed_events(stack)
    assert (event.task_id, event.via, event.step, event.action_id) == (task["task_id"], "hubspot", 1, "act-tr-h")


def test_a_hubspot_request_with_a_bad_or_stale_signature_is_refused(stack):
    task = stack.make_task("tr-h2")
    bad = hubspot_call(stack, hubspot_events(task["hubspot_id"]), secret="another-client-secret")
    wrong_uri = hubspot_call(stack, hubspot_events(task["hubspot_id"]), uri="https://evil.example/rep-tasks/hubspot")
    stale = hubspot_call(stack, hubspot_events(task["hubspot_id"]), at=NOW - 301)
    assert bad[0] == wrong_uri[0] == stale[0] == 401
    assert "bad signature" in bad[1]["message"] and "stale" in stale[1]["message"]
    assert closed_events(stack) == []


def test_a_hubspot_url_set_in_the_secret_is_the_one_verified(stack):
    # Given the operator's HubSpot target URL is a custom domain that API Gateway does not see
    task = stack.make_task("tr-h5")
    stack.secrets = CallbackSecrets.model_validate(SECRETS.model_dump() | {
        "hubspot": {"client_secret": HUBSPOT_SECRET, "webhook_url": "https://hooks.example.com/pql/hubspot"}})
    assert hubspot_call(stack, hubspot_events(task["hubspot_id"]))[0] == 401
    custom = "https://hooks.example.com/pql/hubspot"
    assert hubspot_call(stack, hubspot_events(task["hubspot_id"]), uri=custom)[0] == 200


def test_hubspot_events_other_than_a_completion_close_nothing_and_an_unknown_task_is_404(stack):
    task = stack.make_task("tr-h3")
    other = hubspot_call(stack, hubspot_events(task["hubspot_id"], value="IN_PROGRESS")
                         + hubspot_events(task["hubspot_id"], prop="hs_task_subject", value="x"))
    unknown = hubspot_call(stack, hubspot_events("999999"))
    assert other == (200, {"closed": 0, "duplicate": 0, "unknown": 0})
    assert unknown[0] == 404
    assert closed_events(stack) == []


# --- across connectors, failures, configuration ------------------------------------------------------


def test_a_task_closed_in_slack_then_in_hubspot_is_closed_once(stack):
    task = stack.make_task("tr-x")
    assert slack_call(stack, slack_click(task["task_id"]))[0] == 200
    assert hubspot_call(stack, hubspot_events(task["hubspot_id"]))[1]["duplicate"] == 1
    (event,) = closed_events(stack)
    assert event.via == "slack"


def test_a_failed_publish_answers_500_and_the_connectors_retry_publishes_once(stack):
    task = stack.make_task("tr-f")
    events = boto3.client("events")
    calls = {"n": 0}

    def refuse_first(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("EventBridge unreachable")

    events.meta.events.register("before-call.events.PutEvents", refuse_first)
    stack.publisher.client = events
    assert webhook_call(stack, {"task_id": task["task_id"]})[0] == 500
    assert webhook_call(stack, {"task_id": task["task_id"]})[0] == 200
    assert len(closed_events(stack)) == 1


def test_a_connector_without_its_key_in_the_callback_secret_is_refused(stack):
    task = stack.make_task("tr-c")
    stack.secrets = CallbackSecrets.model_validate({"webhook": {"secret": WEBHOOK_SECRET}})
    status, body = slack_call(stack, slack_click(task["task_id"]))
    assert status == 401 and "not set up" in body["message"]


def test_tasks_stored_before_callbacks_existed_are_unknown_not_an_error(stack):
    # Given a task item with no pointer (stored by an older version)
    task = stack.make_task("tr-old")
    boto3.client("dynamodb").delete_item(TableName=stack.store.table, Key=stack.store.pointer_key(task["task_id"]))
    # Then its callback is a 404, not a 500
    assert webhook_call(stack, {"task_id": task["task_id"]})[0] == 404
