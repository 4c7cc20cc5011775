"""send_email, unsubscribe and ses_events on moto: one message per action, and suppression that holds."""

from __future__ import annotations

import base64
import json
import re
import uuid
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends
from pqlflow.channels.email import unsubscribe
from pqlflow.channels.email.errors import SendRejected
from pqlflow.channels.email.sender import SendEmailSettings
from pqlflow.channels.email.sender import build as build_sender
from pqlflow.channels.email.unsubscribe_endpoint import build as build_unsubscribe
from pqlflow.kernel.settings import SettingsError, from_environ
from pqlflow.nurture.suppression import SuppressionList, address_hash
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.evaluation import PqlState, decide, qualified_event

from functions.send_email import app as send_email
from functions.ses_events import app as ses_events
from functions.unsubscribe import app as unsubscribe_fn
from tests.support.channels import FakePublisher, pqlflow_event
from tests.support.demo_account import demo_qualification, email_action
from tests.support.lambda_context import LambdaContext
from tests.unit.qualify.test_qualification import History

ROOT = Path(__file__).resolve().parents[3]
SENDER = "Northwind <hello@mail.example.com>"
UNSUBSCRIBE_URL = "https://api.example.com/unsubscribe"
PRIYA = "priya@fieldstone.example"


def example_action(name: str = "crm_contacts_80pct", **update: Any) -> dict[str, Any]:
    return json.loads((ROOT / "examples" / "email-contexts" / f"{name}.json").read_text()) | update


def nurture_event(detail: dict[str, Any]) -> dict[str, Any]:
    return pqlflow_event(detail, time="2026-11-23T15:00:00Z")


def http_event(method: str, token: str, body: str | None = None) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": f"{method} /unsubscribe",
        "rawPath": "/unsubscribe",
        "rawQueryString": f"token={token}",
        "queryStringParameters": {"token": token},
        "headers": {"content-type": "application/x-www-form-urlencoded"},
        "requestContext": {"http": {"method": method, "path": "/unsubscribe"}},
        "body": body,
        "isBase64Encoded": False,
    }


@pytest.fixture
def email_env(table_name, monkeypatch) -> dict[str, str]:
    """SES identity and configuration set, the signing secret, and the functions' environment."""
    unsubscribe.clear_cache()
    sesv2 = boto3.client("sesv2")
    sesv2.create_email_identity(EmailIdentity="mail.example.com")
    boto3.client("ses").verify_email_identity(EmailAddress="hello@mail.example.com")
    sesv2.create_configuration_set(ConfigurationSetName="pqlflow-email")
    secret = boto3.client("secretsmanager").create_secret(
        Name=f"unsub-{uuid.uuid4().hex[:6]}", SecretString="s3cr3t-" * 8
    )
    env = {
        "TABLE_NAME": table_name,
        "SENDER": SENDER,
        "SES_CONFIGURATION_SET": "pqlflow-email",
        "UNSUBSCRIBE_URL": UNSUBSCRIBE_URL,
        "UNSUBSCRIBE_SECRET_ARN": secret["ARN"],
        "TEMPLATES_DIR": str(ROOT / "templates"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    unsubscribe.clear_cache()


def sent_messages() -> list[Any]:
    return ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages


def sent_count() -> int:
    """Messages SES accepted (moto keeps each raw message it was given)."""
    return len(sent_messages())


def send(event: dict[str, Any], sender=None) -> dict[str, Any]:
    return send_email.handler(event, LambdaContext(), sender=sender or build_sender())


def marker(table: str, account_id: str, action_id: str) -> dict[str, Any] | None:
    key = {"pk": {"S": f"A#{account_id}"}, "sk": {"S": f"EMAIL#{action_id}"}}
    return boto3.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")


def token_of(raw: str) -> str:
    msg = BytesParser(policy=policy.default).parsebytes(raw.encode())
    link = msg["List-Unsubscribe"].strip("<>")
    assert link.startswith(UNSUBSCRIBE_URL)
    return urlsplit(link).query.split("token=", 1)[1]


def test_a_nurture_action_sends_one_personalized_multipart_email(email_env):
    # Given a Nurture Action for Priya, whose CRM is at 80% of its contact tier
    event = nurture_event(example_action())
    # When send_email handles it
    result = send(event)
    # Then SES got one raw message for Priya, multipart with the one-click headers
    assert result["outcome"] == "sent" and result["message_id"]
    assert sent_count() == 1
    message = sent_messages()[-1]
    assert PRIYA in message.destinations
    msg = BytesParser(policy=policy.default).parsebytes(message.raw_data.encode())
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == "Fieldstone Logistics has used 80% of its contacts"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Hi Priya," in msg.get_body(("plain",)).get_content()
    # And the marker item records the send without the address
    item = marker(email_env["TABLE_NAME"], "acc_fieldstone", event["detail"]["action_id"])
    assert item["status"]["S"] == "sent" and item["kind"]["S"] == "email"
    assert item["address_hash"]["S"] == address_hash(PRIYA)
    assert PRIYA not in json.dumps(item)


def test_ses_is_given_only_the_recipient_whatever_the_name_says(email_env):
    # Given a recipient whose name is RFC 2047 syntax for "Bcc: <someone else>", with a NUL in it
    bcc = "=?utf-8?b?" + base64.b64encode(b"Bcc: attacker@example.net").decode() + "?="
    action = example_action()
    action["context"]["users"][0]["traits"] |= {"name": bcc + "\x00", "first_name": bcc}
    # When send_email sends it
    assert send(nurture_event(action))["outcome"] == "sent"
    # Then SES's destination is Priya alone, and the message names no one else in any header
    message = sent_messages()[-1]
    assert set(message.destinations) == {PRIYA}  # moto lists the Destination and the To header
    msg = BytesParser(policy=policy.default).parsebytes(message.raw_data.encode())
    assert [a.addr_spec for a in msg["To"].addresses] == [PRIYA]
    assert msg["Cc"] is None and msg["Bcc"] is None
    assert "attacker" not in str(msg["To"]) + str(msg["Subject"]) and "\x00" not in message.raw_data


def test_a_redelivered_trigger_sends_one_message(email_env):
    # Given one Nurture Action delivered four times (EventBridge retries, duplicates), even to cold starts
    event = nurture_event(example_action())
    # When each delivery is handled
    outcomes = [send(event)["outcome"] for _ in range(2)] + [
        send(event, build_sender())["outcome"] for _ in range(2)
    ]
    # Then SES sent exactly one message
    assert outcomes == ["sent", "duplicate", "duplicate", "duplicate"]
    assert sent_count() == 1


def test_unsubscribing_by_one_click_stops_the_next_email(email_env):
    # Given Priya got a nudge
    send(nurture_event(example_action()))
    token = token_of(sent_messages()[-1].raw_data)
    # When her mail client posts the RFC 8058 one-click unsubscribe
    response = unsubscribe_fn.handler(
        http_event("POST", token, "List-Unsubscribe=One-Click"),
        LambdaContext(),
        service=build_unsubscribe(),
    )
    assert response["statusCode"] == 200 and "unsubscribed" in response["body"]
    # Then the next nudge for her address (a new action) is not sent
    result = send(nurture_event(example_action(action_id="na_acc_fieldstone_next")))
    assert result["outcome"] == "suppressed"
    assert sent_count() == 1


def test_a_get_only_shows_the_confirmation_page(email_env):
    # Given a valid unsubscribe link
    send(nurture_event(example_action()))
    token = token_of(sent_messages()[-1].raw_data)
    service = build_unsubscribe()
    # When it is opened (GET), as link scanners do too
    page = unsubscribe_fn.handler(http_event("GET", token), LambdaContext(), service=service)
    # Then a page asks to confirm with a POST form, and nothing is suppressed yet
    assert page["statusCode"] == 200
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert '<form method="post" action="/unsubscribe?token=' in page["body"]
    assert send(nurture_event(example_action(action_id="na_next")))["outcome"] == "sent"
    # And after the button's POST, a GET says it is done
    unsubscribe_fn.handler(
        http_event("POST", token, "List-Unsubscribe=One-Click&source=page"), LambdaContext(), service=service
    )
    again = unsubscribe_fn.handler(http_event("GET", token), LambdaContext(), service=service)
    assert "You&#39;re unsubscribed" in again["body"] or "You're unsubscribed" in again["body"]


def test_a_forged_token_is_rejected_and_suppresses_nothing(email_env):
    # Given a token signed with some other secret for Priya's address
    forged = unsubscribe.issue(
        b"not-the-secret" * 4,
        address_hash=address_hash(PRIYA),
        account_id="acc_fieldstone",
        user_id="u_priya",
    )
    # When it is posted
    response = unsubscribe_fn.handler(
        http_event("POST", forged, "List-Unsubscribe=One-Click"),
        LambdaContext(),
        service=build_unsubscribe(),
    )
    # Then it is refused and Priya still gets email
    assert response["statusCode"] == 400
    assert send(nurture_event(example_action()))["outcome"] == "sent"


def test_an_expired_token_is_rejected_and_suppresses_nothing(email_env):
    # Given a token signed with the real secret that expired a second ago
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=email_env["UNSUBSCRIBE_SECRET_ARN"])
    expired = unsubscribe.issue(
        secret["SecretString"].encode(),
        address_hash=address_hash(PRIYA),
        account_id="acc_fieldstone",
        user_id="u_priya",
        ttl_seconds=-1,
    )
    # When it is posted
    response = unsubscribe_fn.handler(
        http_event("POST", expired, "List-Unsubscribe=One-Click"),
        LambdaContext(),
        service=build_unsubscribe(),
    )
    # Then it is refused as expired and Priya still gets email
    assert response["statusCode"] == 410 and "expired" in response["body"]
    assert send(nurture_event(example_action()))["outcome"] == "sent"


def test_a_permanent_bounce_suppresses_the_address(email_env):
    # Given SES reports a hard bounce for Priya through the configuration set's EventBridge destination
    bounce = {
        "version": "0",
        "id": "e-1",
        "detail-type": "Email Bounced",
        "source": "aws.ses",
        "detail": {
            "eventType": "Bounce",
            "mail": {"messageId": "m-1", "tags": {"pqlflow_template": ["limit_approaching"]}},
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": PRIYA}],
            },
        },
    }
    # When ses_events handles it (twice: redelivery is harmless)
    suppressions = SuppressionList(email_env["TABLE_NAME"])
    results = [
        ses_events.handler(bounce, LambdaContext(), suppressions=suppressions, publisher=FakePublisher())
        for _ in range(2)
    ]
    # Then the address is suppressed once and the nudge is not sent
    assert [r["suppressed"] for r in results] == [1, 0]
    assert send(nurture_event(example_action()))["outcome"] == "suppressed"
    assert sent_count() == 0


def test_an_ses_refusal_leaves_the_action_retryable(email_env):
    # Given the sender address is not a verified identity, so SES refuses
    boto3.client("sesv2").delete_email_identity(EmailIdentity="mail.example.com")
    boto3.client("ses").delete_identity(Identity="hello@mail.example.com")
    event = nurture_event(example_action())
    # When the trigger delivers it
    with pytest.raises(SendRejected):
        send(event)
    # Then no claim is left behind, so once SES accepts, the retry sends it
    assert marker(email_env["TABLE_NAME"], "acc_fieldstone", event["detail"]["action_id"]) is None
    boto3.client("ses").verify_email_identity(EmailAddress="hello@mail.example.com")
    assert send(event)["outcome"] == "sent"
    assert sent_count() == 1


def test_a_missing_variable_names_it(monkeypatch):
    monkeypatch.delenv("UNSUBSCRIBE_SECRET_ARN", raising=False)
    monkeypatch.setenv("TABLE_NAME", "t")
    with pytest.raises(SettingsError, match="UNSUBSCRIBE_SECRET_ARN"):
        from_environ(SendEmailSettings)


# ---- what the demo's email says -------------------------------------------------------------------


def _sent_demo_email(action) -> Any:
    """Send a Nurture Action through send_email and parse what SES was given with Python's email parser."""
    result = send(nurture_event(action.model_dump(mode="json")))
    assert result["outcome"] == "sent"
    return BytesParser(policy=policy.default).parsebytes(sent_messages()[-1].raw_data.encode())


def test_the_demo_nudge_leads_with_the_team_growing_and_counts_agree(email_env):
    # Given the demo's kind of qualification: 10 sign-ins, 1 feature used, 5 invites, a pricing page visit,
    # 5 teammates active (qualified by the bundled definition from the folded events)
    action = email_action(demo_qualification())
    # When send_email sends the upgrade nudge
    msg = _sent_demo_email(action)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content()
    # Then it is about the team growing, not about the most frequent event (sign-ins)
    assert msg["Subject"] == "Clara, Bold Bridge Labs is growing on Northwind"
    assert ">Bold Bridge Labs is growing on Northwind</h1>" in " ".join(html.split()).replace("> ", ">")
    assert "We noticed Bold Bridge Labs is growing: 5 invites sent." in text
    # And what it noticed is in words that agree with their numbers
    noticed = text.split("What we noticed:", 1)[1].split("\n\n", 1)[0]
    assert [line.strip("* ").strip() for line in noticed.strip().splitlines()] == [
        "10 sign-ins in the last 30 days",
        "1 feature used in the last 30 days",
        "5 invites sent",
        "5 teammates active in the last 7 days",
    ]
    # And neither the pricing visit nor the lead score is quoted back; nothing reads "making the most of sign ins"
    assert "pricing" not in text.lower() and "score" not in text.lower()
    assert "sign ins" not in text + html and "1 features" not in text + html


def test_a_paid_feature_label_with_template_code_renders_inert(email_env):
    # Given a qualification on a paid-tier feature whose label looks like template code and HTML
    label = "{{ 7*7 }} <b>reports</b> exported"
    defn = parse_definition(
        "name: t\nversion: 1\nsignals:\n"
        "  reports:\n    count: Report Exported\n    where: {tier: paid}\n"
        f"    label: \"{label}\"\n"
        "qualify: {signal: reports, gte: 1}\n"
    )
    h = History(defn, account="acct_boldbridge")
    h.group(name="Bold Bridge Labs")
    h.identify("usr_clara", name="Clara Fischer", email="clara@boldbridge.example")
    usage = h.track("Report Exported", times=3, user="usr_clara", tier="paid")
    transition = decide(defn, usage, PqlState(), usage.last_seen_ms or 0)
    assert transition is not None
    action = email_action(qualified_event(defn, usage, transition))
    # When it is sent
    msg = _sent_demo_email(action)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    # Then the headline is about the paid feature, and the label is shown as typed: never evaluated, escaped
    assert msg["Subject"] == "Clara, you've been trying Pro features"
    assert "has been trying what Pro adds: 3 {{ 7*7 }} <b>reports</b> exported." in text
    assert "3 {{ 7*7 }} &lt;b&gt;reports&lt;/b&gt; exported" in html
    assert "<b>reports</b>" not in html
    assert "49" not in re.sub(r"token=[\w.-]+", "", text + html)


def _pql_state(table: str, account_id: str, converted_at: str | None) -> None:
    """The account's qualification state item as qualify writes it (converted at `converted_at`, or not)."""
    from datetime import UTC, datetime

    from pqlflow.qualify.transitions import encode_state

    converted_ms = int(datetime.fromisoformat(converted_at.replace("Z", "+00:00")).timestamp() * 1000) \
        if converted_at else None
    state = PqlState(status="converted" if converted_ms else "qualified", seq=2, converted_ms=converted_ms,
                     qualified_at_ms=int(datetime(2026, 11, 20, 15, 42, 7, tzinfo=UTC).timestamp() * 1000))
    boto3.client("dynamodb").put_item(TableName=table, Item=encode_state(account_id, None, state))


@pytest.mark.parametrize(
    ("converted_at", "outcome"),
    [("2026-11-21T09:00:00Z", "converted"), ("2026-10-01T09:00:00Z", "sent"), (None, "sent")],
    ids=["converted-while-it-waited", "a-customer-before-it-qualified", "not-converted"],
)
def test_a_nudge_that_waited_is_not_sent_to_an_account_that_paid_meanwhile(email_env, converted_at, outcome):
    # Given Priya's nudge (qualified 2026-11-20 15:42), held for the sending window, and the account's
    # qualification state: converted the next morning, a customer since before it qualified, or not converted
    _pql_state(email_env["TABLE_NAME"], "acc_fieldstone", converted_at)
    event = nurture_event(example_action())
    # When its schedule delivers it (twice: at least once)
    results = [send(event)["outcome"] for _ in range(2)]
    # Then an account that paid while the nudge waited gets no email; the others get exactly one
    assert results == [outcome, "duplicate"]
    assert sent_count() == (0 if outcome == "converted" else 1)
    item = marker(email_env["TABLE_NAME"], "acc_fieldstone", event["detail"]["action_id"])
    assert item["status"]["S"] == outcome


def test_the_sender_spells_the_qualification_state_key_as_qualify_does() -> None:
    from pqlflow.channels.email.sender import pql_state_key
    from pqlflow.qualify.transitions import state_key

    assert pql_state_key("acme", None) == state_key("acme", None)
    assert pql_state_key("acme", "u1") == state_key("acme", "u1")
