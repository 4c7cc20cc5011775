"""Pure pieces of event delivery: rule target input, emulator quirks, batch failure rules, HTTP routes."""

import base64
import datetime as dt
import json

import pytest
from pqlflow.local.context import LambdaContext
from pqlflow.local.functions import Outcome
from pqlflow.local.http import Unauthorized, http_event, http_response, jwt_claims, match_route
from pqlflow.local.model import HttpRoute, InputTransformer, JwtAuthorizer, RuleTarget
from pqlflow.local.putevents import PutEventsRejected, accept
from pqlflow.local.quirks import collapse_double_inserts, eventbridge_envelope, stream_record
from pqlflow.local.sqs import failed_ids
from pqlflow.local.streams import first_failed
from pqlflow.local.targets import render_input

EVENT = {
    "version": "0",
    "id": "e1",
    "detail-type": "PQL Qualified",
    "source": "pqlflow",
    "account": "123456789012",
    "time": "2026-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": [],
    "detail": {"account_id": "acme", "score": 42, "user": {"id": "u-1"}},
}


def target(**kwargs):
    return RuleTarget(id="t", arn="arn:aws:sqs:us-east-1:123456789012:q", kind="sqs", name="q", **kwargs)


def test_rule_targets_get_the_whole_event_by_default_or_what_input_options_say():
    assert json.loads(render_input(target(), EVENT)) == EVENT
    assert json.loads(render_input(target(input_path="$.detail"), EVENT)) == EVENT["detail"]
    assert json.loads(render_input(target(input_path="$.detail.user['id']"), EVENT)) == "u-1"
    assert render_input(target(input='{"fixed": true}'), EVENT) == '{"fixed": true}'


def test_input_transformer_quotes_values_outside_strings_only():
    # Given a transformer using values inside and outside JSON strings
    transformer = InputTransformer(
        {
            "account": "$.detail.account_id",
            "score": "$.detail.score",
            "user": "$.detail.user",
            "gone": "$.nope",
        },
        '{"text": "<account> scored <score>", "score": <score>, "user": <user>, "gone": <gone>,'
        ' "rule": "<aws.events.rule-name>"}',
    )
    # When rendered
    out = json.loads(render_input(target(input_transformer=transformer), EVENT, rule_name="r1"))
    # Then strings are spliced raw and values are JSON
    assert out == {"text": "acme scored 42", "score": 42, "user": {"id": "u-1"}, "gone": None, "rule": "r1"}


def test_eventbridge_envelope_gets_account_and_loses_emulator_fields():
    raw = {k: v for k, v in EVENT.items() if k != "account"} | {"ingestion-time": 1.0, "time": 1767225600.0}
    envelope = eventbridge_envelope(raw)
    assert envelope["account"] == "123456789012"
    assert envelope["time"] == "2026-01-01T00:00:00Z"
    assert "ingestion-time" not in envelope
    assert list(envelope) == [
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    ]


def stream(name, seq, keys, image):
    return {"eventName": name, "dynamodb": {"Keys": keys, "NewImage": image, "SequenceNumber": seq}}


def test_double_insert_for_one_key_becomes_one_insert_with_the_final_image():
    # Given moto's two INSERTs for an UpdateItem that created the item, then another item's INSERT
    key = {"pk": {"S": "A#1"}}
    records = [
        stream("INSERT", "1", key, key),
        stream("INSERT", "2", key, key | {"n": {"N": "1"}}),
        stream("INSERT", "3", {"pk": {"S": "A#2"}}, {"pk": {"S": "A#2"}}),
        stream("MODIFY", "4", key, key | {"n": {"N": "2"}}),
    ]
    # Then one INSERT per key remains, with the final image and the later sequence number
    out = collapse_double_inserts(records)
    assert [(r["eventName"], r["dynamodb"]["SequenceNumber"]) for r in out] == [
        ("INSERT", "2"),
        ("INSERT", "3"),
        ("MODIFY", "4"),
    ]
    assert out[0]["dynamodb"]["NewImage"]["n"] == {"N": "1"}


def test_stream_records_look_like_lambdas():
    raw = {
        "eventName": "INSERT",
        "eventVersion": "1.0",
        "dynamodb": {
            "ApproximateCreationDateTime": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "SequenceNumber": "1",
        },
    }
    record = stream_record(raw, "arn:stream")
    assert record["dynamodb"]["ApproximateCreationDateTime"] == 1767225600
    assert (record["eventVersion"], record["eventSourceARN"], record["eventSource"]) == (
        "1.1",
        "arn:stream",
        "aws:dynamodb",
    )


SQS_RECORDS = [{"messageId": "m1"}, {"messageId": "m2"}, {"messageId": "m3"}]


@pytest.mark.parametrize(
    ("outcome", "report", "expected"),
    [
        (Outcome(error=ValueError()), True, {"m1", "m2", "m3"}),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": "m2"}]}), True, {"m2"}),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": "m2"}]}), False, set()),
        (Outcome(result={"batchItemFailures": []}), True, set()),
        (Outcome(result=None), True, set()),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": "other"}]}), True, {"m1", "m2", "m3"}),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": ""}]}), True, {"m1", "m2", "m3"}),
    ],
)
def test_which_sqs_messages_failed(outcome, report, expected):
    assert failed_ids(outcome, SQS_RECORDS, report) == expected


STREAM_RECORDS = [{"dynamodb": {"SequenceNumber": s}} for s in ("10", "11", "12")]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome(error=ValueError()), 0),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": "12"}, {"itemIdentifier": "11"}]}), 1),
        (Outcome(result={"batchItemFailures": []}), None),
        (Outcome(result={"batchItemFailures": [{"itemIdentifier": "99"}]}), 0),
        (Outcome(result="ok"), None),
    ],
)
def test_where_a_stream_batch_resumes(outcome, expected):
    assert first_failed(outcome, STREAM_RECORDS, True) == expected


ROUTES = (
    HttpRoute("List", "e1", "api", "GET", "/offers"),
    HttpRoute("Accept", "e2", "api", "POST", "/offers/{offer_id}/accept"),
    HttpRoute("Proxy", "e3", "api", "ANY", "/files/{proxy+}"),
    HttpRoute("Default", "e4", "api", "ANY", "$default"),
)


@pytest.mark.parametrize(
    ("method", "path", "function", "params"),
    [
        ("GET", "/offers", "List", {}),
        ("POST", "/offers/o-1/accept", "Accept", {"offer_id": "o-1"}),
        ("DELETE", "/files/a/b.txt", "Proxy", {"proxy": "a/b.txt"}),
        ("POST", "/offers", "Default", {}),
    ],
)
def test_http_routes_pick_the_most_specific_match(method, path, function, params):
    match = match_route(ROUTES, method, path)
    assert (match.route.function, match.path_parameters) == (function, params)


def test_http_event_and_response_follow_payload_format_2():
    match = match_route(ROUTES, "POST", "/offers/o-1/accept")
    event = http_event(match, "POST", "/offers/o-1/accept", query="a=1&a=2", headers={"X-Token": "t"}, body="{}")
    assert event["routeKey"] == "POST /offers/{offer_id}/accept"
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["headers"] == {"x-token": "t"}
    assert event["pathParameters"] == {"offer_id": "o-1"}
    assert event["requestContext"]["http"]["method"] == "POST"
    assert http_response({"ok": True}) == {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": '{"ok": true}',
    }
    assert http_response({"statusCode": 204, "body": ""})["statusCode"] == 204


def test_lambda_context_stub():
    context = LambdaContext(function_name="pqlflow-local-IngestFunction", timeout_seconds=10)
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:pqlflow-local-IngestFunction"
    assert 0 < context.get_remaining_time_in_millis() <= 10_000
    assert context.aws_request_id and context.memory_limit_in_mb == 128


def jwt(**claims):
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.sig"


AUTHORIZER = JwtAuthorizer("Jwt", "https://issuer.test", ("app",))


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://other.test", "aud": "app"},
        {"iss": "https://issuer.test", "aud": ["x", "y"]},
        {"iss": "https://issuer.test", "aud": "app", "exp": 1000},
        {"iss": "https://issuer.test", "aud": "app", "nbf": 4_000_000_000},
    ],
)
def test_jwt_authorizer_rejects_tokens_it_would_not_accept(claims):
    with pytest.raises(Unauthorized):
        jwt_claims(AUTHORIZER, {"authorization": f"Bearer {jwt(**claims)}"})


def test_jwt_authorizer_accepts_and_passes_claims_as_api_gateway_does():
    claims = jwt_claims(
        AUTHORIZER, {"Authorization": jwt(iss="https://issuer.test", aud=["app"], sub="u", scope="a b")}
    )
    event = http_event(match_route(ROUTES, "GET", "/offers"), "GET", "/offers", claims=claims | {"n": 1})
    assert event["requestContext"]["authorizer"]["jwt"] == {
        "claims": {"iss": "https://issuer.test", "aud": "[app]", "sub": "u", "scope": "a b", "n": "1"},
        "scopes": ["a", "b"],
    }
    with pytest.raises(Unauthorized):
        jwt_claims(AUTHORIZER, {})


def put(**entry):
    return {"Source": "app", "DetailType": "track", "Detail": '{"a": 1}', "EventBusName": "bus"} | entry


def test_put_events_accepts_entries_as_eventbridge_does():
    # Given a mix of good and bad entries
    results, accepted = accept(
        [
            put(Time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
            put(Detail="[1]"),
            put(Detail="{oops"),
            put(Source=""),
            put(EventBusName="arn:aws:events:us-east-1:123456789012:event-bus/nope"),
        ],
        {"bus", "default"},
    )
    # Then the good one becomes an event on its bus and each bad one gets its own error
    assert [r.get("ErrorCode") for r in results] == [
        None,
        "MalformedDetail",
        "MalformedDetail",
        "InvalidArgument",
        "NotFoundException",
    ]
    ((bus, event),) = accepted
    assert bus == "bus"
    assert (event["time"], event["account"], event["detail"], event["id"]) == (
        "2026-01-01T00:00:00Z",
        "123456789012",
        {"a": 1},
        results[0]["EventId"],
    )


@pytest.mark.parametrize(
    "entries",
    [[], [put()] * 11, [put(Detail=json.dumps({"x": "y" * 90_000}))] * 3],
)
def test_put_events_rejects_requests_over_the_limits(entries):
    with pytest.raises(PutEventsRejected) as rejected:
        accept(entries, {"bus"})
    assert rejected.value.code == "ValidationException"
