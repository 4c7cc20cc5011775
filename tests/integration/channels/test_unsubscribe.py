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
