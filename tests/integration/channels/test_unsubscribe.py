"""The unsubscribe endpoint on moto: HTTP API v2 requests, one-click POSTs, rotation, and safe pages."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import boto3
import pytest
from pqlflow.channels.email import unsubscribe
from pqlflow.channels.email.unsubscribe_endpoint import UnsubscribeSettings, build
from pqlflow.nurture.suppression import address_hash, suppression_key

from functions.unsubscribe import app
from tests.support.lambda_context import LambdaContext

ROOT = Path(__file__).resolve().parents[3]
ANA = "ana@example.com"


@pytest.fixture
def secret_arn(aws):
    return boto3.client("secretsmanager").create_secret(
        Name=f"u-{uuid.uuid4().hex[:6]}", SecretString="a" * 40
    )["ARN"]


@pytest.fixture
def service(table_name, secret_arn):
    unsubscribe.clear_cache()
    arn = secret_arn
    settings = UnsubscribeSettings(
        TABLE_NAME=table_name, UNSUBSCRIBE_SECRET_ARN=arn, TEMPLATES_DIR=str(ROOT / "templates")
    )
    yield build(settings)
    unsubscribe.clear_cache()


def request(service, method: str, token: str, body: str | None = None, b64: bool = False) -> dict:
    event = {
        "version": "2.0",
        "rawPath": "/unsubscribe",
        "queryStringParameters": {"token": token},
        "requestContext": {"http": {"method": method, "path": "/unsubscribe"}},
        "body": base64.b64encode(body.encode()).decode() if (b64 and body) else body,
        "isBase64Encoded": b64,
    }
    return app.handler(event, LambdaContext(), service=service)


def suppression_item(table_name: str, address: str) -> dict | None:
    key = {k: {"S": v} for k, v in suppression_key(address_hash(address)).items()}
    return boto3.client("dynamodb").get_item(TableName=table_name, Key=key).get("Item")


def token_for(address: str, secret: bytes = b"a" * 40, **kw) -> str:
    return unsubscribe.issue(
        secret, address_hash=address_hash(address), account_id="acc_1", user_id="u_ana", **kw
    )


def test_a_one_click_post_records_the_suppression_once(service, table_name):
    # Given a valid token for Ana
    token = token_for(ANA)
    # When her mail client posts the one-click body, base64-encoded by API Gateway, twice
    first = request(service, "POST", token, "List-Unsubscribe=One-Click", b64=True)
    second = request(service, "POST", token, "List-Unsubscribe=One-Click")
    # Then both succeed and one suppression is stored, keyed by the hash, without the address
    assert first["statusCode"] == second["statusCode"] == 200
    item = suppression_item(table_name, ANA)
    assert item["reason"]["S"] == "unsubscribed" and item["source"]["S"] == "unsubscribe:one-click"
    assert item["account_id"]["S"] == "acc_1" and ANA not in str(item)


def test_the_first_reason_stays(service, table_name):
    # Given Ana's address already suppressed by a complaint
    boto3.client("dynamodb").put_item(
        TableName=table_name,
        Item={
            **{k: {"S": v} for k, v in suppression_key(address_hash(ANA)).items()},
            "kind": {"S": "suppression"},
            "reason": {"S": "complained"},
        },
    )
    # When she also unsubscribes, Then the complaint is kept
    assert request(service, "POST", token_for(ANA), "List-Unsubscribe=One-Click")["statusCode"] == 200
    assert suppression_item(table_name, ANA)["reason"]["S"] == "complained"


def test_a_token_signed_with_the_previous_secret_still_works_after_rotation(service, table_name, secret_arn):
    # Given links sent before the secret rotated
    old = token_for(ANA)
    boto3.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString="b" * 40)
    unsubscribe.clear_cache()
    # When one is used after the rotation, Then it still unsubscribes
    assert request(service, "POST", old, "List-Unsubscribe=One-Click")["statusCode"] == 200
    assert suppression_item(table_name, ANA) is not None


@pytest.mark.parametrize("token", ["", "garbage", "v1.e30.AAAA"])
def test_bad_tokens_get_a_helpful_page_and_change_nothing(service, table_name, token):
    response = request(service, "POST", token, "List-Unsubscribe=One-Click")
    assert response["statusCode"] == 400
    assert "isn&#39;t valid" in response["body"] or "isn't valid" in response["body"]
    assert "support@example.com" in response["body"]
    assert suppression_item(table_name, ANA) is None


def test_other_methods_are_not_allowed(service):
    response = request(service, "DELETE", token_for(ANA))
    assert response["statusCode"] == 405 and response["headers"]["Allow"] == "GET, POST"


def test_pages_are_not_cached_indexed_or_framed_and_keep_the_token_out_of_referrers(service):
    headers = request(service, "GET", token_for(ANA))["headers"]
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "noindex" in headers["X-Robots-Tag"]


def test_a_token_with_markup_is_escaped_in_the_form_action(service):
    # Given a GET whose token parameter carries markup (it will not verify)
    response = request(service, "GET", '"><script>alert(1)</script>')
    # Then the page never echoes it as markup
    assert "<script>alert(1)</script>" not in response["body"]


def _malformed_tokens() -> list[str]:
    """Valid tokens altered the ways a link gets altered: non-ASCII letters, surrogates, NUL, cut short."""
    good = token_for(ANA)
    version, body, signature = good.split(".")
    return [
        f"{version}.{body}.{signature[:-1]}é",
        f"{version}.{body}é.{signature}",
        f"{version}.{body}.é",
        f"{version}.{body}\ud800.{signature}",
        f"{version}.{body}.{signature}\udfff",
        f"{version}.{body}\x00.{signature}",
        f"{version}.{body[:-3]}.{signature}",
        "v1." + "é" * 1500 + ".x",
        "\u202ev1.abc.def",
    ]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_malformed_token_gets_the_invalid_page_never_a_500(service, table_name, method):
    for bad in _malformed_tokens():
        # Given a link altered on its way (a mail client, a copy and paste, someone trying)
        # When it is opened or posted
        response = request(service, method, bad, "List-Unsubscribe=One-Click" if method == "POST" else None)
        # Then it gets the same 400 page as a forged token, and nothing is suppressed
        assert response["statusCode"] == 400, repr(bad)
        assert "isn&#39;t valid" in response["body"] or "isn't valid" in response["body"]
    assert suppression_item(table_name, ANA) is None


@pytest.mark.parametrize("body", ["%%%", "not base64!", "\udcff"])
def test_a_body_api_gateway_could_not_have_encoded_is_ignored_not_a_500(service, table_name, body):
    # Given a POST whose base64 body does not decode (or decodes to bytes that are not UTF-8)
    event = {
        "version": "2.0",
        "rawPath": "/unsubscribe",
        "queryStringParameters": {"token": token_for(ANA)},
        "requestContext": {"http": {"method": "POST", "path": "/unsubscribe"}},
        "body": body,
        "isBase64Encoded": True,
    }
    # When it is handled
    response = app.handler(event, LambdaContext(), service=service)
    # Then there is no one-click body to honour: the confirmation page, and nothing recorded
    assert response["statusCode"] == 200 and "<form" in response["body"]
    assert suppression_item(table_name, ANA) is None


@pytest.mark.parametrize("body", [None, "", "List-Unsubscribe=Yes", "source=page", "List-Unsubscribe", "One-Click"])
def test_a_post_without_the_one_click_body_asks_to_confirm_and_changes_nothing(service, table_name, body):
    # Given a POST to a valid link without RFC 8058's `List-Unsubscribe=One-Click` body (a scanner, a
    # preview, a proxy replaying the request without its body)
    response = request(service, "POST", token_for(ANA), body)
    # Then it gets the confirmation page, whose button posts the one-click body, and Ana stays subscribed
    assert response["statusCode"] == 200
    assert 'name="List-Unsubscribe" value="One-Click"' in response["body"]
    assert suppression_item(table_name, ANA) is None
    # And the button's POST does unsubscribe her
    assert request(service, "POST", token_for(ANA), "List-Unsubscribe=One-Click&source=page")["statusCode"] == 200
    assert suppression_item(table_name, ANA)["source"]["S"] == "unsubscribe:page"


def test_a_multipart_one_click_post_unsubscribes(service, table_name):
    # Given RFC 8058's preferred form of the one-click POST: multipart/form-data (case as some clients send it)
    body = (
        "--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
        "One-Click\r\n--b0undary--\r\n"
    )
    event = {
        "version": "2.0",
        "rawPath": "/unsubscribe",
        "queryStringParameters": {"token": token_for(ANA)},
        "headers": {"content-type": "multipart/form-data; boundary=b0undary"},
        "requestContext": {"http": {"method": "POST", "path": "/unsubscribe"}},
        "body": base64.b64encode(body.encode()).decode(),
        "isBase64Encoded": True,
    }
    # When the mail client posts it
    response = app.handler(event, LambdaContext(), service=service)
    # Then Ana is unsubscribed
    assert response["statusCode"] == 200
    assert suppression_item(table_name, ANA)["source"]["S"] == "unsubscribe:one-click"


def test_only_the_start_of_a_huge_body_is_read_and_a_huge_token_is_just_invalid(service, table_name):
    # Given a one-click POST whose body goes on for megabytes (API Gateway passes up to 6 MB to Lambda)
    body = "List-Unsubscribe=One-Click&" + "x=" + "y" * 5_000_000
    # When it is posted / Then only its first bytes are parsed, and the one-click field there counts
    assert request(service, "POST", token_for(ANA), body)["statusCode"] == 200
    assert suppression_item(table_name, ANA) is not None
    # And a token far longer than any pqlflow issues gets the invalid page
    assert request(service, "GET", "v1." + "A" * 100_000 + "." + "B" * 43)["statusCode"] == 400
