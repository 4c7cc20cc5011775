"""The local runtime runs the fixture app from its template alone: rules, queues, streams, retries."""

import base64
import datetime as dt
import json
import os

import pytest
from pqlflow.kernel import clock
from pqlflow.local.runtime import LocalRuntime

from tests.support.local import FIXTURE, sdk_put_event

HANDLERS = FIXTURE.parent


@pytest.fixture(autouse=True)
def wall_clock_afterwards():
    yield
    clock.set_source(None)


@pytest.fixture
def runtime():
    with LocalRuntime(FIXTURE, record_invocations=True) as rt:
        yield rt


def track(account, **detail):
    return {"Source": "app.web", "DetailType": "track", "Detail": {"account": account, **detail}}


def invoked(rt, function):
    return [i for i in rt.invocations if i.function == function]


def items(rt, kind=None):
    scanned = rt.client("dynamodb").scan(TableName=rt.table_name("Table"))["Items"]
    return [i for i in scanned if kind is None or i["kind"]["S"] == kind]


def edited_copy(tmp_path, old, new):
    text = FIXTURE.read_text()
    assert old in text
    copy = tmp_path / "template.yaml"
    copy.write_text(text.replace(old, new))
    return copy


def test_a_usage_event_flows_through_queue_stream_and_bus_to_the_last_function(runtime):
    # Given a usage event put on the template's bus
    runtime.put_events([track("a1")])
    # When the runtime pumps until idle
    runtime.run_until_idle()
    # Then every trigger fired once, and the handler-emitted event reached its rule's function
    assert runtime.counters()["invocations"] == {
        "IngestFunction": 1,
        "QualifyFunction": 1,
        "NotifyFunction": 1,
    }
    (notified,) = items(runtime, "notified")
    envelope = json.loads(notified["envelope"]["S"])
    assert (envelope["source"], envelope["detail-type"], envelope["detail"]) == (
        "pqlflow",
        "PQL Qualified",
        {"account_id": "a1", "events": "1"},
    )
    assert envelope["account"] == "123456789012"
    assert notified["function"]["S"] == "pqlflow-local-NotifyFunction"
    # And the functions' environment was only there while they ran
    assert "TABLE_NAME" not in os.environ


def test_changing_a_rule_pattern_in_the_template_changes_which_function_runs(tmp_path):
    # Given a copy of the template whose usage rule takes identify calls instead of track calls
    copy = edited_copy(tmp_path, "detail-type: [track]", "detail-type: [identify]")
    with LocalRuntime(copy, root=HANDLERS) as rt:
        # When a track and then an identify event arrive
        rt.put_events([track("a1")])
        rt.run_until_idle()
        after_track = dict(rt.counters()["invocations"])
        rt.put_events([{"Source": "app.web", "DetailType": "identify", "Detail": {"account": "a2"}}])
        rt.run_until_idle()
        # Then only the identify event reaches ingest
        assert after_track == {}
        assert rt.counters()["invocations"]["IngestFunction"] == 1


def test_changing_a_stream_filter_in_the_template_changes_what_invokes(tmp_path):
    # Given a copy of the template whose stream filter takes "note" items instead of "usage" items
    copy = edited_copy(tmp_path, '{"S": ["usage"]}', '{"S": ["note"]}')
    with LocalRuntime(copy, root=HANDLERS, record_invocations=True) as rt:
        # When a usage event is ingested (one usage item and one note item written)
        rt.put_events([track("a1")])
        rt.run_until_idle()
        # Then qualify only ever saw the note item (which it cannot handle, so it retried)
        kinds = {
            r["dynamodb"]["NewImage"]["kind"]["S"] for i in invoked(rt, "QualifyFunction") for r in i.event["Records"]
        }
        assert kinds == {"note"}


def test_an_existing_partner_bus_given_as_a_parameter_is_used(tmp_path):
    # Given the template pointed at a Segment partner bus instead of creating its own
    partner = "aws.partner/segment.com/fixture"
    with LocalRuntime(FIXTURE, {"ExistingBusName": partner}) as rt:
        # When a usage event arrives from the partner
        rt.put_events([{"Source": "app.segment", "DetailType": "track", "Detail": {"account": "a1"}}])
        rt.run_until_idle()
        # Then it flows through every function, on the partner bus
        assert rt.bus_for(track("a1")) == partner
        assert rt.counters()["invocations"] == {"IngestFunction": 1, "QualifyFunction": 1, "NotifyFunction": 1}


def test_unmatched_events_are_routed_nowhere(runtime):
    # Given an event on the app's bus whose source the rule's prefix does not match
    unmatched = {"Source": "web.app", "DetailType": "track", "Detail": {"account": "a1"}}
    runtime.put_events([unmatched | {"EventBusName": "pqlflow-local-bus"}])
    # When pumped
    runtime.run_until_idle()
    # Then nothing ran
    counters = runtime.counters()
    assert (counters["invocations"], counters["events_routed"], counters["rule_matches"]) == ({}, 1, {})


def test_events_put_without_a_bus_go_where_a_rule_expects_them(runtime):
    assert runtime.bus_for(track("a1")) == "pqlflow-local-bus"
    assert runtime.bus_for({"Source": "pqlflow", "DetailType": "PQL Qualified", "Detail": "{}"}) == "pqlflow-local-bus"
    assert runtime.bus_for({"Source": "web.app", "DetailType": "track", "Detail": {}}) == "default"


def test_sqs_partial_failure_is_retried_then_dead_lettered_after_max_receive_count(runtime):
    # Given three events, one of which ingest reports as a failed item
    runtime.put_events([track("a1"), track("a2", fail=True), track("a3")])
    # When pumped until idle
    runtime.run_until_idle()
    # Then only the failed message came back, received 1, 2 and 3 times (maxReceiveCount 3)
    batches = [
        [json.loads(r["body"])["detail"]["account"] for r in i.event["Records"]]
        for i in invoked(runtime, "IngestFunction")
    ]
    assert sorted(batches[0]) == ["a1", "a2", "a3"]
    assert batches[1:] == [["a2"], ["a2"]]
    counts = [
        i.event["Records"][-1]["attributes"]["ApproximateReceiveCount"] for i in invoked(runtime, "IngestFunction")[1:]
    ]
    assert counts == ["2", "3"]
    # And it now sits in the dead-letter queue, while the others were processed exactly once
    (dead,) = runtime.take_messages("UsageDeadLetterQueue")
    assert dead["Body"]["detail"] == {"account": "a2", "fail": True}
    assert sorted((i["pk"]["S"], i["events"]["N"]) for i in items(runtime, "usage")) == [
        ("A#a1", "1"),
        ("A#a3", "1"),
    ]


def test_a_handler_exception_fails_the_whole_batch(runtime):
    # Given a batch where one event makes ingest raise
    runtime.put_events([track("a1"), track("a2", crash=True)])
    # When pumped until idle
    runtime.run_until_idle()
    # Then the whole batch was retried until both messages went to the DLQ (a1 was written each time)
    assert runtime.counters()["invocations"]["IngestFunction"] == 3
    assert runtime.counters()["invocation_errors"] == {"IngestFunction": 3}
    dead = runtime.take_messages("UsageDeadLetterQueue")
    assert sorted(m["Body"]["detail"]["account"] for m in dead) == ["a1", "a2"]


def test_a_queue_without_redrive_gives_up_after_the_retry_limit(tmp_path):
    # Given a copy of the template whose usage queue has no dead-letter queue
    copy = edited_copy(tmp_path, "      RedrivePolicy:", "      XRedrivePolicy:")
    with LocalRuntime(copy, root=HANDLERS, unbounded_retry_limit=4) as rt:
        # When an event keeps crashing ingest
        rt.put_events([track("a1", crash=True)])
        rt.run_until_idle()
        # Then it is tried 4 times, then dropped as expired (the run still ends)
        assert rt.counters()["invocations"] == {"IngestFunction": 4}
        assert rt.counters()["sqs_messages_expired"] == {"IngestFunction.Usage": 1}


def put_usage_item(rt, account, **extra):
    item = {"pk": {"S": f"A#{account}"}, "sk": {"S": "USAGE"}, "kind": {"S": "usage"}, "events": {"N": "1"}}
    rt.client("dynamodb").put_item(TableName=rt.table_name("Table"), Item={**item, **extra})


def test_stream_filter_criteria_keep_the_function_from_being_invoked(runtime):
    # Given items of other kinds written to the table
    for kind in ("pql", "note"):
        runtime.client("dynamodb").put_item(
            TableName=runtime.table_name("Table"),
            Item={"pk": {"S": "A#x"}, "sk": {"S": kind}, "kind": {"S": kind}},
        )
    # When pumped
    runtime.run_until_idle()
    # Then qualify never ran
    assert runtime.counters()["invocations"] == {}
    assert runtime.counters()["filtered_out"]["QualifyFunction.UsageState"] == 2
    # And a usage item does invoke it
    put_usage_item(runtime, "a1")
    runtime.run_until_idle()
    assert runtime.counters()["invocations"]["QualifyFunction"] == 1


def test_bisect_isolates_a_poison_record_and_sends_it_to_the_on_failure_queue(runtime):
    # Given four usage items in one stream batch, the third one poison
    for account in ("a1", "a2", "a3", "a4"):
        extra = {"poison": {"BOOL": True}} if account == "a3" else {}
        put_usage_item(runtime, account, **extra)
    # When pumped until idle
    runtime.run_until_idle()
    # Then the batch was split around the poison record, which was retried once (MaximumRetryAttempts 1)
    batches = [
        [r["dynamodb"]["Keys"]["pk"]["S"][2:] for r in i.event["Records"]] for i in invoked(runtime, "QualifyFunction")
    ]
    assert batches == [["a1", "a2", "a3", "a4"], ["a1", "a2"], ["a3", "a4"], ["a3"], ["a3"], ["a4"]]
    # And every other account went on, while the poison record's batch info is on the OnFailure queue
    assert sorted(i["pk"]["S"] for i in items(runtime, "notified")) == ["A#a1", "A#a2", "A#a4"]
    (failure,) = runtime.take_messages("StreamFailureQueue")
    info = failure["Body"]["DDBStreamBatchInfo"]
    (poison_attempt,) = [i for i in invoked(runtime, "QualifyFunction") if len(i.event["Records"]) == 1][:1]
    assert info["batchSize"] == 1
    assert info["startSequenceNumber"] == poison_attempt.event["Records"][0]["dynamodb"]["SequenceNumber"]
    assert failure["Body"]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert runtime.counters()["stream_records_discarded"] == {"QualifyFunction.UsageState": 1}


def test_the_double_insert_of_an_update_that_creates_an_item_reaches_the_handler_once(runtime):
    # Given ingest creating the usage item with UpdateItem
    runtime.put_events([track("a1")])
    # When pumped until idle
    runtime.run_until_idle()
    # Then the emulator's stream holds two INSERTs for the item...
    streams = runtime.client("dynamodbstreams")
    arn = runtime.stream_arns[runtime.table_name("Table")]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    raw = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    usage_inserts = [r for r in raw if r["dynamodb"]["Keys"]["sk"]["S"] == "USAGE" and r["eventName"] == "INSERT"]
    assert len(usage_inserts) == 2
    # ...but qualify got one INSERT with the final image
    (qualify,) = invoked(runtime, "QualifyFunction")
    (record,) = qualify.event["Records"]
    assert record["eventName"] == "INSERT"
    assert record["dynamodb"]["NewImage"]["events"] == {"N": "1"}
    assert record["eventSourceARN"] == arn


def test_request_counters_match_what_the_handlers_called(runtime):
    # Given two usage events in one batch
    runtime.put_events([track("a1"), track("a2")])
    # When pumped until idle
    runtime.run_until_idle()
    # Then the counted requests are exactly the fixture handlers' calls (none of the runtime's own)
    counters = runtime.counters()
    assert counters["invocations"] == {"IngestFunction": 1, "QualifyFunction": 1, "NotifyFunction": 2}
    assert counters["requests_by_function"] == {
        "IngestFunction": {"dynamodb": {"PutItem": 2, "UpdateItem": 2}},
        "NotifyFunction": {"dynamodb": {"PutItem": 2}},
        "QualifyFunction": {"events": {"PutEvents": 1}},
    }
    assert counters["requests"] == {"dynamodb": {"PutItem": 4, "UpdateItem": 2}, "events": {"PutEvents": 1}}


def test_every_event_on_a_bus_and_tapped_calls_are_visible_to_the_caller():
    # Given a runtime that reports events and keeps handlers' PutItem and PutEvents calls
    seen = []
    with LocalRuntime(
        FIXTURE,
        on_event=lambda bus, event: seen.append((bus, event["detail-type"])),
        tap=["events.PutEvents", "dynamodb.PutItem"],
    ) as rt:
        # When a usage event flows through
        rt.put_events([track("a1")])
        rt.run_until_idle()
        # Then both events were reported, and the tapped calls kept the parameters handlers passed
        assert seen == [("pqlflow-local-bus", "track"), ("pqlflow-local-bus", "PQL Qualified")]
        tapped = [(c.function, c.operation) for c in rt.requests.tapped]
        assert tapped == [
            ("IngestFunction", "PutItem"),
            ("QualifyFunction", "PutEvents"),
            ("NotifyFunction", "PutItem"),
        ]
        (entry,) = rt.requests.tapped[1].params["Entries"]
        assert json.loads(entry["Detail"]) == {"account_id": "a1", "events": "1"}


def test_simulated_time_reaches_handlers_and_the_events_they_emit():
    # Given a simulated clock and a hook that records each delivery
    start = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC).timestamp()
    clock.set_source(lambda: start)
    seen = []
    with LocalRuntime(FIXTURE, before_invoke=lambda fn, event: seen.append(fn)) as rt:
        # When an event flows through
        rt.put_events([track("a1")])
        rt.run_until_idle()
        # Then each delivery went through the hook, and the emitted event carries simulated time
        assert seen == ["IngestFunction", "QualifyFunction", "NotifyFunction"]
        (notified,) = items(rt, "notified")
        assert json.loads(notified["envelope"]["S"])["time"] == "2024-03-01T12:00:00Z"


def test_one_time_schedules_fire_when_simulated_time_reaches_them(runtime):
    # Given a one-time schedule putting a PQL Qualified event on the bus an hour from now
    now = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
    clock.set_source(lambda: now.timestamp())
    scheduler = runtime.client("scheduler")
    scheduler.create_schedule(
        Name="later",
        ScheduleExpression="at(2024-03-01T13:00:00)",
        ScheduleExpressionTimezone="UTC",
        FlexibleTimeWindow={"Mode": "OFF"},
        ActionAfterCompletion="DELETE",
        Target={
            "Arn": "arn:aws:events:us-east-1:123456789012:event-bus/pqlflow-local-bus",
            "RoleArn": "arn:aws:iam::123456789012:role/scheduler",
            "EventBridgeParameters": {"DetailType": "PQL Qualified", "Source": "pqlflow"},
            "Input": json.dumps({"account_id": "a9"}),
        },
    )
    # When pumped before and after its time
    runtime.run_until_idle()
    before = dict(runtime.counters()["invocations"])
    assert runtime.next_schedule_time() == now.timestamp() + 3600
    clock.set_source(lambda: now.timestamp() + 2 * 3600)
    runtime.run_until_idle()
    # Then it fired once, at its own time, and was deleted
    assert before == {}
    assert runtime.counters()["invocations"] == {"NotifyFunction": 1}
    (notified,) = items(runtime, "notified")
    assert json.loads(notified["envelope"]["S"])["time"] == "2024-03-01T13:00:00Z"
    assert scheduler.list_schedules()["Schedules"] == []
    assert runtime.next_schedule_time() is None


def test_failing_event_invocations_are_retried_then_sent_to_the_on_failure_queue(runtime):
    # Given a PQL Qualified event the notify function fails on (EventInvokeConfig: 1 retry, OnFailure queue)
    runtime.put_events([{"Source": "pqlflow", "DetailType": "PQL Qualified", "Detail": {"account_id": "boom"}}])
    # When pumped
    runtime.run_until_idle()
    # Then it ran twice, and the failure record holds the event and the error
    assert runtime.counters()["invocations"] == {"NotifyFunction": 2}
    assert runtime.counters()["async_failures"] == 1
    (record,) = runtime.take_messages("NotifyFailureQueue")
    assert record["Body"]["requestContext"]["condition"] == "RetriesExhausted"
    assert record["Body"]["requestPayload"]["detail"] == {"account_id": "boom"}
    assert record["Body"]["responsePayload"] == {"errorMessage": "notify failed", "errorType": "RuntimeError"}


def test_http_api_routes_come_from_the_template(runtime):
    # When a request is served
    response = runtime.invoke_http("GET", "/hello/ada", query={"x": "1"})
    # Then the routed function answered with its path parameter (reading its data file from its task
    # root, as on Lambda), and unknown paths are 404
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"hello": "ada", "query": {"x": "1"}}
    assert runtime.invoke_http("GET", "/nope")["statusCode"] == 404


def token(**claims):
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.signature"


def test_http_routes_behind_the_jwt_authorizer_need_an_accepted_token(runtime):
    # Given the template's JWT authorizer (issuer https://issuer.test, audience fixture-app)
    good = token(iss="https://issuer.test", aud="fixture-app", sub="user-1", exp=clock.now() + 60)
    wrong_audience = token(iss="https://issuer.test", aud="other", sub="user-1")
    # Then only an accepted bearer token (or claims given directly) gets through
    assert runtime.invoke_http("GET", "/me")["statusCode"] == 401
    assert runtime.invoke_http("GET", "/me", headers={"Authorization": f"Bearer {wrong_audience}"})["statusCode"] == 401
    response = runtime.invoke_http("GET", "/me", headers={"Authorization": f"Bearer {good}"})
    assert (response["statusCode"], json.loads(response["body"])) == (200, {"sub": "user-1"})
    assert json.loads(runtime.invoke_http("GET", "/me", claims={"sub": "user-2"})["body"]) == {"sub": "user-2"}


def test_events_put_through_the_emulator_by_anyone_else_are_routed_too(runtime):
    # Given a client outside any handler putting an event through moto's EventBridge
    sdk_put_event(runtime.client("events"), "pqlflow", "PQL Qualified", {"account_id": "a7"})
    # When pumped
    runtime.run_until_idle()
    # Then its rule's function got it, with the full envelope
    (notify,) = invoked(runtime, "NotifyFunction")
    assert (notify.event["account"], notify.event["detail"]) == ("123456789012", {"account_id": "a7"})


def test_a_handlers_put_events_gets_the_answers_eventbridge_would_give(runtime):
    # Given a handler that calls PutEvents with the entries it is given
    good = {"Source": "pqlflow", "DetailType": "PQL Qualified", "Detail": '{"account_id": "a8"}'}
    bad = {"Source": "pqlflow", "DetailType": "PQL Qualified", "Detail": "[not an object]"}
    # When it sends one good and one malformed entry, then 11 entries
    partial = runtime.invoke("EmitFunction", {"entries": [good, bad]})
    too_many = runtime.invoke("EmitFunction", {"entries": [good] * 11})
    runtime.run_until_idle()
    # Then the bad entry failed alone, the oversized request was refused, and the good event was delivered
    assert partial["FailedEntryCount"] == 1
    assert partial["Entries"][1]["ErrorCode"] == "MalformedDetail"
    assert too_many == {"error": "ValidationException"}
    assert runtime.counters()["invocations"]["NotifyFunction"] == 1
    assert runtime.counters()["requests_by_function"]["EmitFunction"] == {"events": {"PutEvents": 2}}


def test_direct_invoke_returns_the_result_or_raises(runtime):
    event = {"detail": {"account_id": "a5"}}
    assert runtime.invoke("NotifyFunction", event) == {"ok": True}
    with pytest.raises(RuntimeError, match="notify failed"):
        runtime.invoke("NotifyFunction", {"detail": {"account_id": "boom"}})
