"""The route function on moto: exactly one action per qualification, caps under races, deferral schedules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws
from pqlflow.contracts.bus import EventPublisher
from pqlflow.kernel import clock
from pqlflow.kernel.settings import SettingsError
from pqlflow.nurture.routing import action_id, address_hash
from pqlflow.nurture.service import RouteService, RouteSettings, build
from pqlflow.nurture.store import DynamoNurtureStore

from functions.route import app
from tests.support.channels import pqlflow_event
from tests.support.lambda_context import LambdaContext

TABLE = "pqlflow-test"
BUS = "pqlflow-test-bus"
# Monday 2026-11-23 15:00 UTC: 10:00 in New York (inside quiet hours' window), midnight in Tokyo.
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()

POLICY = """\
name: integration
version: 2
holdout: {share: 0}
caps: {account_days: 7, user_days: 14}
quiet_hours: {default_timezone: America/New_York, start: "09:00", end: "18:00"}
consent: {email_suppressed: offer, fallback_offer: extended_trial}
rules:
  - name: rep
    when: {touch: high}
    then: {channel: rep_task, template: rep_follow_up}
  - name: email
    then: {channel: email, template: upgrade_nudge}
"""


@pytest.fixture(autouse=True)
def simulated_time():
    clock.set_source(lambda: NOW)
    yield
    clock.set_source(None)


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


@dataclass
class World:
    service: RouteService
    dynamodb: object
    sqs: object
    queue_url: str
    scheduler: object

    def emitted(self) -> list[dict]:
        """Every `Nurture Action` the bus delivered to the observing queue."""
        events = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = batch.get("Messages", [])
            if not messages:
                return events
            for message in messages:
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def item(self, pk: str, sk: str) -> dict | None:
        return self.dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}}).get("Item")

    def put(self, pk: str, sk: str, kind: str) -> None:
        self.dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": sk}, "kind": {"S": kind}})


@pytest.fixture
def world(aws, tmp_path) -> World:
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    events = boto3.client("events")
    bus_arn = events.create_event_bus(Name=BUS)["EventBusArn"]
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="observed-actions")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    queue_arn = attributes["QueueArn"]
    events.put_rule(Name="nurture-actions", EventBusName=BUS,
                    EventPattern=json.dumps({"source": ["pqlflow"], "detail-type": ["Nurture Action"]}))
    events.put_targets(Rule="nurture-actions", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue_arn}])
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    settings = RouteSettings(
        TABLE_NAME=TABLE, EVENT_BUS_NAME=BUS, EVENT_BUS_ARN=bus_arn,
        SCHEDULER_ROLE_ARN="arn:aws:iam::123456789012:role/pqlflow-scheduler", POLICY_FILE=str(policy_file),
    )
    return World(build(settings), dynamodb, sqs, queue_url, boto3.client("scheduler"))


def qualified(transition_id="tr-1", account_id="acme", touch="low", users=None) -> dict:
    detail = {
        "transition_id": transition_id,
        "account_id": account_id,
        "definition": {"name": "default", "version": 3},
        "qualified_at": "2026-11-23T14:59:00Z",
        "touch": touch,
        "reasons": [{"code": "messages", "text": "1,200 messages this week", "kind": "usage"}],
        "users": users if users is not None else [
            {"user_id": "u-1", "traits": {"email": "ana@acme.test", "timezone": "America/New_York"},
             "last_seen": "2026-11-23T14:00:00Z"},
        ],
    }
    return pqlflow_event(detail, "PQL Qualified", time="2026-11-23T14:59:01Z", event_id=f"evt-{transition_id}")


def invoke(world: World, event: dict, service=None) -> dict:
    return app.handler(event, LambdaContext(), service=service or world.service)


# --- exactly once -----------------------------------------------------------------------------------


def test_a_redelivered_trigger_gives_one_action_and_one_event(world):
    # Given a qualification delivered three times
    event = qualified()
    # When the route function handles every delivery
    results = [invoke(world, event) for _ in range(3)]
    # Then one email action was decided and exactly one Nurture Action reached the bus
    assert [r["replayed"] for r in results] == [False, True, True]
    emitted = world.emitted()
    assert len(emitted) == 1
    detail = emitted[0]["detail"]
    assert (detail["action_id"], detail["channel"], detail["outcome"]) == (action_id("tr-1"), "email", "send")
    assert detail["recipient_user_id"] == "u-1" and detail["template"] == "upgrade_nudge"
    stored = world.item("A#acme", "NURTURE#tr-1")
    assert stored["emitted"]["BOOL"] is True and stored["policy"]["S"] == "integration@2"


class FailingOnce:
    """A publisher that crashes on its first call (after the action was stored), then works."""

    def __init__(self, real: EventPublisher):
        self.real, self.calls = real, 0

    def publish(self, details):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("crash between storing and emitting")
        return self.real.publish(details)


def test_a_crash_between_store_and_emit_still_ends_with_exactly_one_event(world):
    # Given the first delivery crashes after storing the action, before emitting it
    flaky = RouteService(world.service.policy, world.service.store, FailingOnce(world.service.publisher),
                         world.service.deferrer)
    with pytest.raises(RuntimeError):
        invoke(world, qualified(), service=flaky)
    assert world.emitted() == []
    # When the trigger is redelivered (twice)
    invoke(world, qualified(), service=flaky)
    invoke(world, qualified(), service=flaky)
    # Then the stored action went out exactly once
    emitted = world.emitted()
    assert [e["detail"]["action_id"] for e in emitted] == [action_id("tr-1")]


def test_rep_task_for_high_touch_is_emitted_for_the_channel(world):
    invoke(world, qualified(touch="high"))
    (event,) = world.emitted()
    assert (event["detail"]["channel"], event["detail"]["template"]) == ("rep_task", "rep_follow_up")
    assert event["source"] == "pqlflow" and event["detail-type"] == "Nurture Action"


# --- caps -------------------------------------------------------------------------------------------


def test_a_second_qualification_within_the_account_cap_is_capped(world):
    # Given the account was nudged for an earlier qualification
    invoke(world, qualified("tr-1"))
    # When it qualifies again two days later
    clock.set_source(lambda: NOW + 2 * 86_400)
    result = invoke(world, qualified("tr-2"))
    # Then the second action is recorded as capped, with why, and nothing goes to a channel
    assert result["outcome"] == "capped"
    details = [e["detail"] for e in world.emitted()]
    outcomes = [(d["transition_id"], d["channel"], d["outcome"]) for d in details]
    assert outcomes == [("tr-1", "email", "send"), ("tr-2", "none", "capped")]


class RacingStore(DynamoNurtureStore):
    """Lets another qualification be routed between this one's read and its write."""

    def __init__(self, table, client, rival):
        super().__init__(table, client)
        self.rival = rival

    def read(self, q, look, **kwargs):
        snapshot = super().read(q, look, **kwargs)
        if self.rival:
            rival, self.rival = self.rival, None
            rival()
        return snapshot


def test_two_concurrent_qualifications_cannot_both_pass_the_cap(world):
    # Given two qualifications of the same account (different transitions, different users) in flight:
    # the second is routed completely after the first has read the caps but before it writes
    other = qualified("tr-b", users=[{"user_id": "u-2", "traits": {"email": "bo@acme.test"}}])
    racing = RouteService(world.service.policy,
                          RacingStore(TABLE, world.dynamodb, rival=lambda: invoke(world, other)),
                          world.service.publisher, world.service.deferrer)
    # When the first one finishes
    result = invoke(world, qualified("tr-a"), service=racing)
    # Then only one of them was sent; the one that lost the race is capped
    assert result["outcome"] == "capped"
    outcomes = sorted((e["detail"]["transition_id"], e["detail"]["outcome"]) for e in world.emitted())
    assert outcomes == [("tr-a", "capped"), ("tr-b", "send")]
    cap = world.item("A#acme", "NURTURE#CAP")
    assert cap["transition_id"]["S"] == "tr-b"


# --- consent and suppression -------------------------------------------------------------------------


def test_a_suppressed_account_gets_nothing(world):
    world.put("A#acme", "SUPPRESSED", "account_suppression")
    assert invoke(world, qualified(touch="high"))["outcome"] == "suppressed"
    (event,) = world.emitted()
    assert event["detail"]["channel"] == "none"


def test_an_unsubscribed_address_gets_no_email_and_the_policy_offer_instead(world):
    # Given the recipient's address is on the suppression list (stored as a hash, any case)
    world.put(f"SUP#{address_hash('ANA@acme.test')}", "EMAIL", "suppression")
    # When the account qualifies
    invoke(world, qualified())
    # Then the action is the fallback in-app offer, not an email
    (event,) = world.emitted()
    assert (event["detail"]["channel"], event["detail"]["offer"]) == ("offer", "extended_trial")


# --- quiet hours --------------------------------------------------------------------------------------


def test_email_outside_local_daytime_is_deferred_with_a_one_time_schedule(world):
    # Given the recipient is in Tokyo, where it is midnight
    users = [{"user_id": "u-jp", "traits": {"email": "kei@acme.test", "timezone": "Asia/Tokyo"}}]
    # When the account qualifies (and the trigger is redelivered)
    invoke(world, qualified(users=users))
    invoke(world, qualified(users=users))
    # Then one deferred action is recorded now ...
    (event,) = world.emitted()
    deferred = event["detail"]
    assert (deferred["channel"], deferred["outcome"]) == ("email", "deferred")
    assert deferred["send_after"] == "2026-11-24T00:00:00Z"  # Tuesday 09:00 in Tokyo
    # ... and a one-time schedule puts the same action, to be sent, on the bus at send_after
    schedule = world.scheduler.get_schedule(Name=f"pqlflow-{deferred['action_id']}", GroupName="default")
    assert schedule["ScheduleExpression"] == "at(2026-11-24T00:00:00)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    target = schedule["Target"]
    assert target["EventBridgeParameters"] == {"DetailType": "Nurture Action", "Source": "pqlflow"}
    delivery = json.loads(target["Input"])
    assert (delivery["action_id"], delivery["outcome"]) == (deferred["action_id"], "send")


def test_a_crash_after_scheduling_but_before_emitting_reuses_the_schedule(world):
    # Given a deferred email whose first delivery crashed after creating its schedule
    users = [{"user_id": "u-jp", "traits": {"email": "kei@acme.test", "timezone": "Asia/Tokyo"}}]
    flaky = RouteService(world.service.policy, world.service.store, FailingOnce(world.service.publisher),
                         world.service.deferrer)
    with pytest.raises(RuntimeError):
        invoke(world, qualified(users=users), service=flaky)
    # When the trigger is redelivered
    invoke(world, qualified(users=users), service=flaky)
    # Then the existing schedule is kept and the deferred action is emitted once
    assert [e["detail"]["outcome"] for e in world.emitted()] == ["deferred"]
    names = [s["Name"] for s in world.scheduler.list_schedules()["Schedules"]]
    assert names == [f"pqlflow-{action_id('tr-1')}"]


# --- configuration ------------------------------------------------------------------------------------


def test_a_missing_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("TABLE_NAME", raising=False)
    with pytest.raises(SettingsError, match="TABLE_NAME"):
        build()
