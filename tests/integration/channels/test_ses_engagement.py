"""SES's events about nurture emails become engagement events on the pqlflow bus (moto: SES v2, DynamoDB,
EventBridge with a queue on the bus): send_email tags the message, ses_events reads the tags back.

The SES events are the samples under events/ses/ (SES's documented event records, as the configuration
set's EventBridge destination delivers them), with the tags and message id of the email really sent."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.channels.email import unsubscribe
from pqlflow.channels.email.sender import build as build_sender
from pqlflow.channels.email.ses_events import build as build_ses_events
from pqlflow.channels.email.tags import encode
from pqlflow.contracts.emitted import ENGAGEMENT
from pqlflow.nurture.suppression import SuppressionList, address_hash

from functions.send_email import app as send_email
from functions.ses_events import app as ses_events
from tests.support.channels import pqlflow_event
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "events" / "ses"
PRIYA = "priya@fieldstone.example"
BY_TYPE = {m.DETAIL_TYPE: m for m in ENGAGEMENT}


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def example_action(**update: Any) -> dict[str, Any]:
    return json.loads((ROOT / "examples" / "email-contexts" / "crm_contacts_80pct.json").read_text()) | update


@pytest.fixture
def env(table_name, bus_name, monkeypatch) -> dict[str, Any]:
    """SES identity and configuration set, the signing secret, the functions' environment, and a queue
    that receives every pqlflow event put on the bus (a rule like a consumer's)."""
    unsubscribe.clear_cache()
    sesv2 = boto3.client("sesv2")
    sesv2.create_email_identity(EmailIdentity="mail.example.com")
    boto3.client("ses").verify_email_identity(EmailAddress="hello@mail.example.com")
    sesv2.create_configuration_set(ConfigurationSetName="pqlflow-email")
    secret = boto3.client("secretsmanager").create_secret(Name=f"unsub-{uuid.uuid4().hex[:6]}", SecretString="k" * 48)
    for name, value in {
        "SENDER": "Northwind <hello@mail.example.com>",
        "SES_CONFIGURATION_SET": "pqlflow-email",
        "UNSUBSCRIBE_URL": "https://api.example.com/unsubscribe",
        "UNSUBSCRIBE_SECRET_ARN": secret["ARN"],
        "TEMPLATES_DIR": str(ROOT / "templates"),
    }.items():
        monkeypatch.setenv(name, value)
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName=f"engagement-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="engagement", EventBusName=bus_name, EventPattern=json.dumps({"source": ["pqlflow"]}))
    events.put_targets(Rule="engagement", EventBusName=bus_name, Targets=[{"Id": "q", "Arn": arn}])
    yield {"table": table_name, "bus": bus_name, "queue": url}
    unsubscribe.clear_cache()


def drain(url: str) -> list[dict[str, Any]]:
    sqs, out = boto3.client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return out
        for m in messages:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def send_tagged(action: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Send the action through send_email with a real SES v2 client on moto; the message id SES
    returned and the EmailTags it was given (moto keeps the raw message, not the tags)."""
    client = boto3.client("sesv2")
    given: list[dict[str, Any]] = []
    client.meta.events.register("before-parameter-build.sesv2.SendEmail", lambda params, **_: given.append(params))
    result = send_email.handler(pqlflow_event(action), LambdaContext(), sender=build_sender(sesv2=client))
    assert result["outcome"] == "sent"
    (params,) = given
    return result["message_id"], {t["Name"]: t["Value"] for t in params["EmailTags"]}


def ses_event(name: str, message_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """The SES sample `name` about the message SES really sent, with its tags as SES reports them."""
    event = copy.deepcopy(sample(name))
    mail = event["detail"]["mail"]
    mail["messageId"] = message_id
    mail["tags"] = {k: v for k, v in mail["tags"].items() if k.startswith("ses:")} | {k: [v] for k, v in tags.items()}
    return event


def handle(event: dict[str, Any]) -> dict[str, Any]:
    suppressions, publisher = build_ses_events()
    return ses_events.handler(event, LambdaContext(), suppressions=suppressions, publisher=publisher)


@pytest.mark.parametrize(
    ("sample_name", "detail_type"),
    [
        ("delivery", "Email Delivered"),
        ("open", "Email Opened"),
        ("click", "Email Clicked"),
        ("bounce", "Email Bounced"),
        ("complaint", "Email Complained"),
    ],
)
def test_each_ses_event_of_a_sent_nurture_email_becomes_its_engagement_event(env, sample_name, detail_type):
    # Given a nurture email send_email really sent (step 2 of a journey), and SES's event about it
    action = example_action(step=2, rule="contacts-near-limit")
    message_id, tags = send_tagged(action)
    event = ses_event(sample_name, message_id, tags)

    # When ses_events handles it
    result = handle(event)

    # Then the pqlflow bus carries one event of the right type naming the action, its transition,
    # account, step, template, recipient and SES message
    (published,) = drain(env["queue"])
    assert (published["source"], published["detail-type"]) == ("pqlflow", detail_type)
    detail = BY_TYPE[detail_type].model_validate(published["detail"])
    assert (detail.action_id, detail.transition_id, detail.account_id) == (
        action["action_id"], action["transition_id"], action["account_id"])
    assert (detail.step, detail.template, detail.user_id, detail.ses_message_id) == (
        2, "limit_approaching", "u_priya", message_id)
    body = event["detail"][sample_name]
    assert detail.occurred_at == body["timestamp"]
    assert result["engagement_id"] == detail.engagement_id and result["detail_type"] == detail_type


def test_a_click_keeps_scheme_host_and_path_never_the_query(env):
    message_id, tags = send_tagged(example_action())
    handle(ses_event("click", message_id, tags))
    (published,) = drain(env["queue"])
    # The sample's link is https://app.example.com/billing/upgrade?utm_source=pqlflow&token=s3cr3t-t0ken#plans
    assert published["detail"]["link"] == "https://app.example.com/billing/upgrade"
    assert "s3cr3t" not in json.dumps(published)


def test_a_bounce_names_its_type_and_still_suppresses_the_address(env):
    message_id, tags = send_tagged(example_action())
    handle(ses_event("bounce", message_id, tags))
    (published,) = drain(env["queue"])
    assert published["detail"]["bounce_type"] == "Permanent"
    assert SuppressionList(env["table"]).is_suppressed(address_hash(PRIYA))
    # and the next nudge to Priya is not sent
    again = send_email.handler(pqlflow_event(example_action(action_id="na-next")), LambdaContext(),
                               sender=build_sender())
    assert again["outcome"] == "suppressed"


def test_a_redelivered_ses_event_publishes_the_same_engagement_id_and_suppresses_once(env):
    # Given one complaint, delivered three times (EventBridge delivers at least once)
    message_id, tags = send_tagged(example_action())
    event = ses_event("complaint", message_id, tags)
    # When ses_events handles every copy
    results = [handle(copy.deepcopy(event) | {"id": str(uuid.uuid4())}) for _ in range(3)]
    # Then three events with one engagement id (consumers dedupe on it), and one suppression
    published = drain(env["queue"])
    assert len(published) == 3
    assert len({p["detail"]["engagement_id"] for p in published}) == 1
    assert [r["suppressed"] for r in results] == [1, 0, 0]


def test_two_clicks_on_different_links_are_two_engagements(env):
    message_id, tags = send_tagged(example_action())
    first = ses_event("click", message_id, tags)
    second = copy.deepcopy(first)
    second["detail"]["click"]["link"] = "https://app.example.com/pricing"
    handle(first)
    handle(second)
    ids = {p["detail"]["engagement_id"] for p in drain(env["queue"])}
    assert len(ids) == 2


def test_a_message_of_another_sender_on_the_configuration_set_is_counted_and_skipped(env):
    # Given an open of a message pqlflow did not send (no pqlflow tags)
    event = sample("open-foreign")
    # When ses_events handles it
    result = handle(event)
    # Then nothing is published and the function does not fail
    assert result["skipped"] == "untagged" and result["engagement_id"] is None
    assert drain(env["queue"]) == []


def test_broken_pqlflow_tags_are_skipped_not_retried(env):
    # Given an SES event whose pqlflow tags are damaged (a step that is not a number, an undecodable value)
    message_id, tags = send_tagged(example_action())
    bad_step = ses_event("open", message_id, tags | {"pqlflow_step": "two"})
    bad_value = ses_event("open", message_id, tags | {"pqlflow_account": "b64-!!"})
    # When ses_events handles them, Then neither raises (a raise would retry it for a day) and nothing is published
    assert handle(bad_step)["skipped"] == "bad_tags"
    assert handle(bad_value)["skipped"] == "bad_tags"
    assert drain(env["queue"]) == []


def test_ids_with_characters_ses_refuses_are_encoded_and_come_back_intact(env):
    # Given an action whose ids hold characters SES does not allow in a tag value
    action = example_action(action_id="na:acc/fieldstone#1", transition_id="tr acc.fieldstone v3",
                            account_id="acc:fieldstone")
    message_id, tags = send_tagged(action)
    # Then every tag value SES was given uses only the characters SES allows
    assert all(set(v) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for v in tags.values())
    assert tags["pqlflow_account"] == encode("acc:fieldstone") != "acc:fieldstone"
    # and the engagement event names the ids as they were
    handle(ses_event("open", message_id, tags))
    (published,) = drain(env["queue"])
    assert (published["detail"]["action_id"], published["detail"]["transition_id"],
            published["detail"]["account_id"]) == ("na:acc/fieldstone#1", "tr acc.fieldstone v3", "acc:fieldstone")


def test_a_user_id_that_is_an_address_is_not_put_in_the_tags(env):
    action = example_action()
    action["context"]["users"][0]["user_id"] = PRIYA
    action["recipient_user_id"] = PRIYA
    message_id, tags = send_tagged(action)
    assert "pqlflow_user" not in tags
    assert not any(PRIYA in v or encode(PRIYA) == v for v in tags.values())
    handle(ses_event("delivery", message_id, tags))
    (published,) = drain(env["queue"])
    assert published["detail"]["user_id"] is None


def test_a_failed_publish_raises_so_the_trigger_retries_and_the_retry_publishes(env, monkeypatch):
    # Given EventBridge refuses the first PutEvents of ses_events
    message_id, tags = send_tagged(example_action())
    event = ses_event("open", message_id, tags)
    suppressions, publisher = build_ses_events()
    events = boto3.client("events")
    calls = {"n": 0}

    def refuse_first(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("EventBridge unreachable")

    events.meta.events.register("before-call.events.PutEvents", refuse_first)
    publisher.client = events
    # When the function handles it, it fails (Lambda retries the event); the retry goes through
    with pytest.raises(ConnectionError):
        ses_events.handler(event, LambdaContext(), suppressions=suppressions, publisher=publisher)
    ses_events.handler(event, LambdaContext(), suppressions=suppressions, publisher=publisher)
    # Then the engagement is on the bus once
    (published,) = drain(env["queue"])
    assert published["detail-type"] == "Email Opened"
