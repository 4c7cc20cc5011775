"""Engagement comes back as events, end to end on the local runtime (template.yaml's wiring): a PQL's email
is sent and SES reports a click on the default bus, an in-app offer is viewed and dismissed through the
HTTP API, and a rep closes the task with a signed webhook callback; each becomes its pqlflow event on
the pqlflow bus, naming the Nurture Action it engages with."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pqlflow.kernel import clock

from tests.e2e.conftest import DEFINITION, T0

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
WEBHOOK_SECRET = "callback-secret-" + "c" * 16
POLICY = """\
name: engagement
version: 1
holdout: {share: 0.0, salt: engagement, touch: [low]}
caps: {account_days: 7, user_days: 14}
quiet_hours: {default_timezone: UTC, start: "00:00", end: "23:59", days: [mon, tue, wed, thu, fri, sat, sun]}
consent: {email_suppressed: offer, fallback_offer: trial-extension-14}
rules:
  - {name: reps, when: {touch: high}, then: {channel: rep_task}}
  - {name: trials, when: {trait: {name: plan, value: trial}}, then: {channel: offer, offer: trial-extension-14}}
  - {name: email, then: {channel: email, template: upgrade_nudge}}
"""


def _usage(n: int, **message: Any) -> dict[str, Any]:
    at = T0 - timedelta(minutes=30) + timedelta(seconds=n)
    detail = {"messageId": f"eng-{n}", "timestamp": at.isoformat().replace("+00:00", "Z"), **message}
    return {"Source": "pqlflow.emitter", "DetailType": message["type"], "Detail": detail}


def _histories() -> list[dict[str, Any]]:
    """Three accounts that qualify on 5 sign-ins: a B2C user (email), a big company (rep task), a trial (offer)."""
    events, n = [], iter(range(1, 1000))
    events.append(_usage(next(n), type="identify", userId="u-b2c", traits={"email": "b2c@example.com",
                                                                          "first_name": "Ana"}))
    events += [_usage(next(n), type="track", event="Signed In", userId="u-b2c") for _ in range(6)]
    for account, user, traits in (("acme", "u-acme", {"name": "Acme", "employees": 500, "territory": "amer"}),
                                  ("trialco", "u-trial", {"name": "TrialCo", "plan": "trial"})):
        events.append(_usage(next(n), type="identify", userId=user, traits={"email": f"{user}@example.com"},
                             context={"groupId": account}))
        events.append(_usage(next(n), type="group", userId=user, groupId=account, traits=traits))
        events += [_usage(next(n), type="track", event="Signed In", userId=user, context={"groupId": account})
                   for _ in range(6)]
    return events


@pytest.fixture
def chain(tmp_path):
    from pqlflow.local.emulator import create_extra_resources
    from pqlflow.local.pricing import forget_process_caches
    from pqlflow.local.runtime import LocalRuntime
    from pqlflow.qualify.store import DefinitionStore

    clock.set_source(lambda: T0.timestamp())
    forget_process_caches()  # a new runtime is a new cold start: no definition or settings cached by earlier tests
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    on_bus: list[tuple[str, dict[str, Any]]] = []
    runtime = LocalRuntime(TEMPLATE, {}, REPO, environment={"POLICY_FILE": str(policy)}, record_invocations=True,
                           tap=["sesv2.SendEmail"], on_event=lambda bus, event: on_bus.append((bus, event)))
    with runtime:
        create_extra_resources(runtime)
        DefinitionStore(runtime.table_name("PqlflowTable"), client=runtime.client("dynamodb")).publish(
            DEFINITION, "definition.yaml")
        runtime.put_events(_histories())
        runtime.run_until_idle()
        yield runtime, on_bus
    clock.set_source(None)


def _pqlflow_events(on_bus: list[tuple[str, dict[str, Any]]], detail_type: str) -> list[dict[str, Any]]:
    return [e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])
            for _, e in on_bus if e.get("source") == "pqlflow" and e.get("detail-type") == detail_type]


def _action(on_bus: list[tuple[str, dict[str, Any]]], channel: str) -> dict[str, Any]:
    (action,) = [a for a in _pqlflow_events(on_bus, "Nurture Action") if a["channel"] == channel]
    return action


def test_an_ses_click_on_the_default_bus_becomes_email_clicked_on_the_pqlflow_bus(chain):
    runtime, on_bus = chain
    # Given the B2C user's email was sent with its tags
    action = _action(on_bus, "email")
    (sent,) = [c for c in runtime.requests.tapped if c.operation == "SendEmail"]
    (result,) = [i.result for i in runtime.invocations if i.function == "SendEmailFunction" and i.result]
    tags = {t["Name"]: [t["Value"]] for t in sent.params["EmailTags"]}
    # When SES reports a click through the configuration set's EventBridge destination (the default bus)
    click = json.loads((REPO / "events" / "ses" / "click.json").read_text())["detail"]
    click = copy.deepcopy(click)
    click["mail"]["messageId"] = result["message_id"]
    click["mail"]["tags"] = {"ses:configuration-set": [sent.params["ConfigurationSetName"]]} | tags
    runtime.put_events([{"Source": "aws.ses", "DetailType": "Email Clicked", "Detail": click,
                         "EventBusName": "default"}])
    runtime.run_until_idle()
    # Then the template's rule ran ses_events, which put Email Clicked on the pqlflow bus for that action
    (clicked,) = _pqlflow_events(on_bus, "Email Clicked")
    assert (clicked["action_id"], clicked["transition_id"], clicked["account_id"]) == (
        action["action_id"], action["transition_id"], action["account_id"])
    assert clicked["ses_message_id"] == result["message_id"]
    assert clicked["link"] == "https://app.example.com/billing/upgrade"


def test_an_offer_viewed_and_dismissed_through_the_http_api_emits_both_events(chain):
    runtime, on_bus = chain
    action = _action(on_bus, "offer")
    claims = {"sub": "u-trial"}
    (offer,) = json.loads(runtime.invoke_http("GET", "/offers", claims=claims)["body"])["offers"]
    assert runtime.invoke_http("POST", f"/offers/{offer['id']}/view", claims=claims)["statusCode"] == 200
    assert runtime.invoke_http("POST", f"/offers/{offer['id']}/dismiss", claims=claims)["statusCode"] == 200
    runtime.run_until_idle()
    (viewed,) = _pqlflow_events(on_bus, "Offer Viewed")
    (dismissed,) = _pqlflow_events(on_bus, "Offer Dismissed")
    assert viewed["action_id"] == dismissed["action_id"] == action["action_id"]
    assert viewed["offer_id"] == dismissed["offer_id"] == offer["id"]


def test_a_signed_webhook_callback_emits_rep_task_closed(chain):
    from pqlflow.channels.rep_tasks.webhook import sign

    runtime, on_bus = chain
    (created,) = _pqlflow_events(on_bus, "Rep Task Created")
    # Given the operator put the callback secret in the stack's RepTaskCallbackSecret
    arn = runtime.wiring.functions["RepTaskEventsFunction"].environment["CALLBACK_SECRET_ARN"]
    runtime.client("secretsmanager").put_secret_value(
        SecretId=arn, SecretString=json.dumps({"webhook": {"secret": WEBHOOK_SECRET}}))
    # When the receiver reports the task completed
    body = json.dumps({"task_id": created["task_id"], "outcome": "completed"})
    ts = str(int(clock.now()))
    answer = runtime.invoke_http("POST", "/rep-tasks/webhook", body=body, headers={
        "content-type": "application/json", "x-pqlflow-timestamp": ts,
        "x-pqlflow-signature": sign(WEBHOOK_SECRET, ts, body.encode())})
    runtime.run_until_idle()
    # Then Rep Task Closed names the task and the transition it follows up
    assert answer["statusCode"] == 200, answer
    (closed,) = _pqlflow_events(on_bus, "Rep Task Closed")
    assert (closed["task_id"], closed["transition_id"], closed["via"]) == (
        created["task_id"], created["transition_id"], "webhook")
