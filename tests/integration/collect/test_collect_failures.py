"""Accepted means durable: PutEvents failures (failed entries, a whole call refused, DynamoDB down for the
quarantine) answer 5xx, nothing is reported accepted that was not put, and the SDK's resend counts once.

The collect handler runs with its real service, whose EventBridge or DynamoDB client is replaced: by a
client that fails chosen entries and forwards the rest to the emulator, or by botocore's Stubber."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from pqlflow.collect.api import CollectSettings, build

from functions.collect.app import handler
from tests.integration.collect.conftest import SERVER_KEY, CollectStack, basic
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")


class FlakyBus:
    """PutEvents on the emulator, except entries whose detail holds `marker`: those get an ErrorCode on the
    first `failing_calls` calls that carry them (every call when None)."""

    def __init__(self, real: Any, marker: str, failing_calls: int | None = None):
        self.real, self.marker, self.left = real, marker, failing_calls
        self.calls: list[int] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls.append(len(Entries))
        marked = [self.marker in e["Detail"] for e in Entries]
        fail = any(marked) and (self.left is None or self.left > 0)
        if fail and self.left is not None:
            self.left -= 1
        forward = [e for e, m in zip(Entries, marked, strict=True) if not (fail and m)]
        results = iter(self.real.put_events(Entries=forward)["Entries"] if forward else [])
        out = [{"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"} if fail and m else next(results)
               for m in marked]
        return {"FailedEntryCount": sum("ErrorCode" in r for r in out), "Entries": out}


def service(stack: CollectStack, *, events: Any = None, dynamodb: Any = None) -> Any:
    runtime = stack.runtime
    settings = CollectSettings.model_validate(runtime.wiring.functions["CollectFunction"].environment)
    return build(settings, secrets=runtime.client("secretsmanager"), events=events or runtime.client("events"),
                 dynamodb=dynamodb or runtime.client("dynamodb"), sleep=lambda seconds: None)


def call(svc: Any, body: dict[str, Any], path: str = "/v1/batch") -> tuple[int, dict[str, Any]]:
    event = {"version": "2.0", "rawPath": path, "requestContext": {"http": {"method": "POST", "path": path}},
             "headers": {"authorization": basic(SERVER_KEY), "content-type": "application/json"},
             "body": json.dumps(body), "isBase64Encoded": False}
    response = handler(event, LambdaContext(), service=svc)
    return response["statusCode"], json.loads(response["body"])


def batch(account: str, n: int, flaky: int | None = None) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "Flaky Thing" if i == flaky else "Signed In", "userId": f"u{i}",
                       "messageId": f"{account}-{i}", "context": {"groupId": account}} for i in range(n)]}


def test_a_failed_entry_is_retried_alone_and_the_request_accepted(stack: CollectStack, account: str) -> None:
    # Given EventBridge throttling one entry of a 12-message batch once
    bus = FlakyBus(stack.runtime.client("events"), "Flaky Thing", failing_calls=1)
    # When the batch is posted
    status, body = call(service(stack, events=bus), batch(account, 12, flaky=3))
    # Then it is accepted after the entry alone was sent again, in valid chunks (10, then 2)
    assert (status, body) == (200, {"success": True})
    assert bus.calls == [10, 1, 2]
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 11 and usage.count("Flaky Thing") == 1


def test_entries_that_never_go_answer_500_and_the_sdks_resend_counts_each_once(
    stack: CollectStack, account: str
) -> None:
    # Given EventBridge refusing one entry on every attempt
    bus = FlakyBus(stack.runtime.client("events"), "Flaky Thing")
    body = batch(account, 3, flaky=1)
    # When the batch is posted
    status, answer = call(service(stack, events=bus), body)
    # Then the SDK is told to send it again, and nothing of it is reported accepted
    assert status == 500 and answer["code"] == "unavailable"
    assert "1 of 3 messages could not be put" in answer["message"] and "none of this request is accepted" in \
        answer["message"]
    assert len(bus.calls) == 5  # the first attempt and four retries of the failed entry
    usage = stack.usage(account)
    assert usage is not None and usage.count("Flaky Thing") == 0
    # When the SDK sends the same body again, over HTTP, and EventBridge is well again
    resent = stack.post("batch", body)
    # Then every message is counted once: the two that went the first time are not counted twice
    assert resent.status == 200
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 2 and usage.count("Flaky Thing") == 1


def test_a_partial_failed_entry_count_from_eventbridge_is_a_500(stack: CollectStack, account: str) -> None:
    # Given EventBridge answering FailedEntryCount 1 for the second entry on every attempt (botocore Stubber)
    events = boto3.client("events", region_name="us-east-1")
    stubber = Stubber(events)
    stubber.add_response("put_events", {"FailedEntryCount": 1, "Entries": [
        {"EventId": "e-1"}, {"ErrorCode": "InternalFailure", "ErrorMessage": "internal"}]})
    for _ in range(4):
        stubber.add_response("put_events", {"FailedEntryCount": 1, "Entries": [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "internal"}]})
    with stubber:
        status, answer = call(service(stack, events=events), batch(account, 2))
        stubber.assert_no_pending_responses()
    # Then the answer is a 500 that names the error, so the SDK keeps the batch
    assert status == 500 and "1 of 2 messages could not be put on the bus (InternalFailure)" in answer["message"]


def test_eventbridge_unreachable_is_a_500_and_nothing_is_counted(stack: CollectStack, account: str) -> None:
    # Given PutEvents failing as a whole (botocore Stubber: a 500 from EventBridge)
    events = boto3.client("events", region_name="us-east-1")
    stubber = Stubber(events)
    stubber.add_client_error("put_events", service_error_code="InternalException", http_status_code=500)
    with stubber:
        status, answer = call(service(stack, events=events), batch(account, 2), path="/v1/batch")
    # Then the SDK is told to send again, and no event of the request reached usage state
    assert status == 500 and "none of this request is accepted" in answer["message"]
    assert stack.usage(account) is None


def test_a_quarantine_that_cannot_be_written_is_a_500_and_the_resend_keeps_it(
    stack: CollectStack, account: str
) -> None:
    # Given DynamoDB throttling the quarantine write (botocore Stubber), and a batch with one bad message
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    stubber = Stubber(dynamodb)
    stubber.add_client_error("batch_write_item", service_error_code="ProvisionedThroughputExceededException",
                             http_status_code=400)
    body = batch(account, 2)
    body["batch"].append({"type": "track", "userId": "u9", "messageId": f"{account}-bad",
                          "context": {"groupId": account}})  # no event name
    with stubber:
        status, answer = call(service(stack, dynamodb=dynamodb), body)
    # Then the SDK is told to send again (the rejected message is not kept yet)
    assert status == 500 and "could not be kept in the quarantine" in answer["message"]
    # When it does, with DynamoDB well again
    resent = stack.post("batch", body)
    # Then the bad message is answered and kept, and the good ones are counted once
    assert resent.status == 400 and resent.body["accepted"] == 2
    assert any(q.message_id == f"{account}-bad" for q in stack.quarantined())
    usage = stack.usage(account)
    assert usage is not None and usage.count("Signed In") == 2
