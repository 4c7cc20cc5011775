"""Journeys on moto: later steps come due through their one-time schedules, run once, and stop for good.

Every test drives the route function's handler with the events the bus would deliver: `PQL Qualified`,
the `Journey Step Due` that the step's EventBridge Scheduler schedule carries (read back from moto's
Scheduler, fired at its time on the simulated clock), and the events that stop a journey. What comes out
is read from the bus (a rule on every pqlflow event into an SQS queue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from pqlflow.contracts.bus import EventPublisher
from pqlflow.ingest.batch import IngestConfig, UsageBatchProcessor
from pqlflow.ingest.store import DynamoUsageStore
from pqlflow.kernel import clock
from pqlflow.nurture.journey import schedule_name
from pqlflow.nurture.journey_store import JourneyStore
from pqlflow.nurture.policy import parse_policy
from pqlflow.nurture.routing import action_id, address_hash
from pqlflow.nurture.schedule import SchedulerDeferrer
from pqlflow.nurture.service import RouteService
from pqlflow.nurture.store import DynamoNurtureStore
from pqlflow.nurture.usage_now import UsageNow
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.store import DefinitionStore

from functions.ingest import app as ingest_app
from functions.route import app
from tests.support.aws_calls import CallRecorder, Crash
from tests.support.channels import pqlflow_event
from tests.support.events import sqs_event, track
from tests.support.lambda_context import LambdaContext

TABLE = "pqlflow-test"
BUS = "pqlflow-test-bus"
DAY = 86_400
# Monday 2026-11-23 15:00 UTC: 10:00 in New York, inside the sending window.
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()

POLICY = """\
name: journeys
version: 1
holdout: {share: 0}
caps: {account_days: 1, user_days: 0}
quiet_hours: {enabled: false}
rules:
  - name: nurture
    then:
      - {channel: email, template: upgrade_nudge}
      - name: offer-if-not-clicked
        after_days: 3
        when:
          not: {engaged: {step: 0, event: email_clicked}}
        channel: offer
        offer: extended_trial
      - name: demo
        after_days: 7
        channel: email
        template: demo_invite
      - name: last-call
        after_days: 14
        channel: offer
        offer: pro-discount-20
"""


@pytest.fixture(autouse=True)
def simulated_time():
    clock.set_source(lambda: NOW)
    yield
    clock.set_source(None)


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        yield


@dataclass
class World:
    service: RouteService
    dynamodb: object
    events: object
    scheduler: object
    sqs: object
    queue_url: str

    def out(self) -> list[tuple[str, dict]]:
        """(detail-type, detail) of every pqlflow event put on the bus since the last call."""
        seen = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return seen
            for message in messages:
                body = json.loads(message["Body"])
                seen.append((body["detail-type"], body["detail"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def steps_out(self) -> list[tuple[int, str, str]]:
        """(step, channel, outcome) of the Nurture Actions put on the bus since the last call."""
        return [(d["step"], d["channel"], d["outcome"]) for t, d in self.out() if t == "Nurture Action"]

    def schedules(self) -> set[str]:
        return {s["Name"] for s in self.scheduler.list_schedules()["Schedules"]}

    def due_event(self, transition_id: str, step: int) -> dict:
        """The event step `step`'s schedule puts on the bus, and the simulated clock moved to its time."""
        schedule = self.scheduler.get_schedule(Name=schedule_name(transition_id, step), GroupName="default")
        at = datetime.fromisoformat(schedule["ScheduleExpression"][3:-1]).replace(tzinfo=UTC).timestamp()
        clock.set_source(lambda: at)
        target = schedule["Target"]
        assert target["EventBridgeParameters"] == {"DetailType": "Journey Step Due", "Source": "pqlflow"}
        return pqlflow_event(json.loads(target["Input"]), "Journey Step Due")

    def fire(self, transition_id: str, step: int, service: RouteService | None = None) -> dict:
        """Fire the step's schedule as Scheduler does: the event on the bus, then the schedule deleted."""
        event = self.due_event(transition_id, step)
        self.scheduler.delete_schedule(Name=schedule_name(transition_id, step), GroupName="default")
        return invoke(self, event, service)


def make_world(policy_text: str = POLICY) -> World:
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
    queue_url = sqs.create_queue(QueueName="observed")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="everything", EventBusName=BUS, EventPattern=json.dumps({"source": ["pqlflow"]}))
    events.put_targets(Rule="everything", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue_arn}])
    scheduler = boto3.client("scheduler")
    service = RouteService(
        parse_policy(policy_text, "policy.yaml"), DynamoNurtureStore(TABLE, dynamodb), EventPublisher(BUS, events),
        SchedulerDeferrer(group="default", bus_arn=bus_arn, role_arn="arn:aws:iam::123456789012:role/scheduler",
                          client=scheduler),
    )
    return World(service, dynamodb, events, scheduler, sqs, queue_url)


@pytest.fixture
def world(aws) -> World:
    return make_world()


def qualified(transition_id="tr-1", account_id="acme", touch="low", user_id=None) -> dict:
    detail = {
        "transition_id": transition_id, "account_id": account_id, "user_id": user_id,
        "definition": {"name": "default", "version": 3}, "qualified_at": "2026-11-23T14:59:00Z", "touch": touch,
        "reasons": [{"code": "messages", "text": "1,200 messages this week", "kind": "usage"}],
        "users": [{"user_id": "u-1", "traits": {"email": "ana@acme.test"}, "last_seen": "2026-11-23T14:00:00Z"}],
    }
    return pqlflow_event(detail, "PQL Qualified", event_id=f"evt-{transition_id}")


def invoke(world: World, event: dict, service: RouteService | None = None) -> dict:
    return app.handler(event, LambdaContext(), service=service or world.service)


def engagement(detail_type: str, step: int, transition_id: str = "tr-1", **fields) -> dict:
    detail = {"engagement_id": f"eng-{detail_type}-{step}", "action_id": action_id(transition_id, step=step),
              "transition_id": transition_id, "account_id": "acme", "user_id": "u-1", "step": step,
              "occurred_at": "2026-11-23T16:00:00Z", **fields}
    return pqlflow_event(detail, detail_type)


STOPS = {
    "converted": pqlflow_event({"account_id": "acme", "converted_at": "2026-11-27T10:00:00Z"}, "Account Converted"),
    "disqualified": pqlflow_event({"transition_id": "tr-dq", "account_id": "acme", "user_id": None,
                                   "definition": {"name": "default", "version": 3},
                                   "disqualified_at": "2026-11-27T10:00:00Z"}, "PQL Disqualified"),
    "offer_accepted": pqlflow_event({"offer_id": "of-1", "account_id": "acme", "user_id": "u-1",
                                     "offer": "extended_trial", "accepted_at": "2026-11-27T10:00:00Z"},
                                    "Offer Accepted"),
    "task_closed": engagement("Rep Task Closed", 0, task_id="task-1", outcome="completed", via="hubspot"),
    "suppressed": engagement("Email Complained", 0, template="upgrade_nudge", ses_message_id="ses-1"),
}


# --- the journey runs -------------------------------------------------------------------------------


def test_a_journey_runs_its_steps_at_their_days_once_each_and_completes(world):
    # Given an account qualifies under a rule with a four-step journey
    invoke(world, qualified())
    assert world.steps_out() == [(0, "email", "send")]
    # Then step 1 is scheduled for day 3 of the journey, as a one-time schedule
    due = world.due_event("tr-1", 1)
    assert due["detail"]["due_at"] == "2026-11-26T15:00:00Z" and due["detail"]["rule"] == "nurture"
    # When each step's schedule fires (and each is delivered twice)
    for step, expected in ((1, (1, "offer", "send")), (2, (2, "email", "send")), (3, (3, "offer", "send"))):
        event = world.due_event("tr-1", step)
        first, again = invoke(world, event), invoke(world, event)
        assert (first["ran"], again["replayed"]) == (True, True)
        out = world.out()
        actions = [(d["step"], d["channel"], d["outcome"]) for t, d in out if t == "Nurture Action"]
        # Then each step's action goes out once, named for its step
        assert actions == [expected]
        (action,) = [d for t, d in out if t == "Nurture Action"]
        assert action["action_id"] == action_id("tr-1", step=step) and action["rule"] == "nurture"
    # And after the last step the journey is completed
    journey = world.dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "A#acme"}, "sk": {"S": "JOURNEY"}})["Item"]
    assert journey["status"]["S"] == "completed"


def test_the_last_step_publishes_journey_completed_exactly_once(world):
    invoke(world, qualified())
    for step in (1, 2):
        world.fire("tr-1", step)
    world.out()
    event = world.due_event("tr-1", 3)
    world.fire("tr-1", 3)
    invoke(world, event)  # redelivered
    stops = [d for t, d in world.out() if t == "Journey Stopped"]
    assert [(s["reason"], s["after_step"]) for s in stops] == [("completed", 3)]
    assert not any(name.startswith("pqlflow-j-") for name in world.schedules())


def test_a_step_whose_condition_does_not_hold_is_skipped_and_the_journey_goes_on(world):
    # Given the recipient clicked the first email
    invoke(world, qualified())
    invoke(world, engagement("Email Clicked", 0, template="upgrade_nudge", ses_message_id="ses-1"))
    world.out()
    # When step 1 ("offer if not clicked") comes due
    result = world.fire("tr-1", 1)
    # Then it sends nothing, and step 2 still runs on day 7
    assert result["ran"] and result["actions"] == []
    assert world.steps_out() == []
    world.fire("tr-1", 2)
    assert world.steps_out() == [(2, "email", "send")]


def test_an_open_does_not_satisfy_a_condition_on_a_click(world):
    invoke(world, qualified())
    invoke(world, engagement("Email Opened", 0, template="upgrade_nudge", ses_message_id="ses-1"))
    world.out()
    world.fire("tr-1", 1)
    assert world.steps_out() == [(1, "offer", "send")]


def test_caps_apply_to_every_step(aws):
    # Given a policy whose account cap (5 days) is longer than the gap between steps 0 and 1 (3 days)
    world = make_world(POLICY.replace("account_days: 1", "account_days: 5"))
    invoke(world, qualified())
    world.out()
    # When step 1 comes due
    world.fire("tr-1", 1)
    # Then it is recorded as capped, and the journey goes on to step 2
    assert world.steps_out() == [(1, "none", "capped")]
    world.fire("tr-1", 2)
    assert world.steps_out() == [(2, "email", "send")]


def test_holdout_accounts_get_no_journey(aws):
    world = make_world(POLICY.replace("holdout: {share: 0}", "holdout: {share: 0.5, salt: s}"))
    # Given accounts in and out of the holdout
    held = []
    for n in range(12):
        invoke(world, qualified(f"tr-{n}", account_id=f"acct-{n}"))
    for t, d in world.out():
        if t == "Nurture Action" and d["outcome"] == "holdout":
            held.append(d["transition_id"])
    assert held, "the 50% holdout of 12 accounts holds some"
    # Then only the others have a step scheduled
    scheduled = world.schedules()
    for n in range(12):
        assert (schedule_name(f"tr-{n}", 1) in scheduled) == (f"tr-{n}" not in held)


# --- stops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(STOPS))
def test_each_stop_ends_the_journey_before_its_next_step_exactly_once(world, reason):
    # Given a journey that ran step 0 and step 1
    invoke(world, qualified())
    world.fire("tr-1", 1)
    world.out()
    step_2 = world.due_event("tr-1", 2)
    # When the stop arrives (twice: redelivered)
    invoke(world, STOPS[reason])
    invoke(world, STOPS[reason])
    # Then one Journey Stopped, after step 1, and step 2's schedule is gone
    stops = [d for t, d in world.out() if t == "Journey Stopped"]
    assert [(s["reason"], s["after_step"], s["transition_id"]) for s in stops] == [(reason, 1, "tr-1")]
    assert schedule_name("tr-1", 2) not in world.schedules()
    # And if step 2's event was already on its way, it does nothing
    result = invoke(world, step_2)
    assert not result["ran"] and world.out() == []


def test_a_stop_for_another_qualification_leaves_the_journey_alone(world):
    invoke(world, qualified())
    world.out()
    invoke(world, engagement("Rep Task Closed", 0, transition_id="tr-other", task_id="t", outcome="completed",
                             via="slack"))
    assert world.out() == []
    world.fire("tr-1", 1)
    assert world.steps_out() == [(1, "offer", "send")]


def test_an_unsubscribed_recipient_stops_the_journey_at_its_next_step(world):
    invoke(world, qualified())
    world.out()
    # Given the recipient unsubscribed after the first email
    world.dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": f"SUP#{address_hash('ana@acme.test')}"},
                                                   "sk": {"S": "EMAIL"}, "kind": {"S": "suppression"}})
    # When step 1 comes due
    world.fire("tr-1", 1)
    # Then no step runs, the journey stops (unsubscribed), and nothing more is scheduled
    out = world.out()
    assert [t for t, _ in out] == ["Journey Stopped"]
    assert (out[0][1]["reason"], out[0][1]["after_step"]) == ("unsubscribed", 0)
    assert not any(name.startswith("pqlflow-j-") for name in world.schedules())


def test_a_newer_qualification_replaces_the_journey(world):
    invoke(world, qualified("tr-1"))
    old_step = world.due_event("tr-1", 1)
    clock.set_source(lambda: NOW + DAY)
    invoke(world, qualified("tr-2"))
    out = world.out()
    stops = [d for t, d in out if t == "Journey Stopped"]
    assert [(s["transition_id"], s["reason"]) for s in stops] == [("tr-1", "requalified")]
    assert schedule_name("tr-1", 1) not in world.schedules() and schedule_name("tr-2", 1) in world.schedules()
    assert not invoke(world, old_step)["ran"]


class StopInBetween(DynamoNurtureStore):
    """Delivers a stop event between the step's read of the state and its write (once)."""

    def __init__(self, world: World, stop: dict):
        super().__init__(TABLE, world.dynamodb)
        self.world, self.stop = world, stop

    def read_state_items(self, *args, **kwargs):
        found = super().read_state_items(*args, **kwargs)
        if self.stop is not None:
            stop, self.stop = self.stop, None
            invoke(self.world, stop)
        return found


def test_a_stop_landing_while_a_step_decides_wins_and_the_step_does_nothing(world):
    invoke(world, qualified())
    world.out()
    racing = RouteService(world.service.policy, StopInBetween(world, STOPS["converted"]), world.service.publisher,
                          world.service.deferrer)
    result = world.fire("tr-1", 1, service=racing)
    assert not result["ran"]
    out = world.out()
    assert [(t, d.get("reason")) for t, d in out] == [("Journey Stopped", "converted")]


def test_a_stop_and_a_step_delivered_together_give_at_most_the_step_then_the_stop(world):
    # Given step 1's event and a conversion arrive at the same moment, the step handled first
    invoke(world, qualified())
    world.out()
    step = world.due_event("tr-1", 1)
    invoke(world, step)
    invoke(world, STOPS["converted"])
    invoke(world, step)
    out = world.out()
    assert [(t, d.get("step"), d.get("reason")) for t, d in out] == [
        ("Nurture Action", 1, None), ("Journey Stopped", None, "converted")]
    assert out[1][1]["after_step"] == 1


# --- faults -----------------------------------------------------------------------------------------


def _recorded(world: World) -> CallRecorder:
    recorder = CallRecorder(world.dynamodb)
    recorder.attach(world.events)
    recorder.attach(world.scheduler)
    return recorder


def _outcome(world: World) -> list[tuple]:
    """What a consumer sees after deduping on ids: the step actions and stops, in order of first arrival."""
    seen, out = set(), []
    for t, d in world.out():
        key = (t, d.get("action_id") or d.get("transition_id"))
        if key not in seen:
            seen.add(key)
            out.append((t, d.get("step"), d.get("outcome") or d.get("reason")))
    return out


def _fired(world: World, step: int) -> dict:
    """Step `step`'s event, its schedule deleted as Scheduler does once it fired."""
    event = world.due_event("tr-1", step)
    world.scheduler.delete_schedule(Name=schedule_name("tr-1", step), GroupName="default")
    return event


def _clean_run() -> tuple[int, list[tuple]]:
    with mock_aws():
        world = make_world()
        invoke(world, qualified())
        world.out()
        event = _fired(world, 1)
        recorder = _recorded(world)
        invoke(world, event)
        calls = recorder.total
        world.fire("tr-1", 2)
        world.fire("tr-1", 3)
        return calls, _outcome(world)


@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_fault_at_every_aws_call_of_a_step_gives_no_duplicate_and_no_lost_step(aws_env, failure):
    calls, expected = _clean_run()
    assert expected == [("Nurture Action", 1, "send"), ("Nurture Action", 2, "send"), ("Nurture Action", 3, "send"),
                        ("Journey Stopped", None, "completed")]
    assert calls >= 6  # reads, the transaction, the schedule, the publish, the mark
    for n in range(1, calls + 1):
        with mock_aws():
            world = make_world()
            invoke(world, qualified())
            world.out()
            event = _fired(world, 1)
            recorder = _recorded(world)
            recorder.fail_at, recorder.failure = n, failure
            with pytest.raises((Crash, ClientError)):
                invoke(world, event)
            recorder.fail_at = None
            invoke(world, event)  # the trigger's retry
            world.fire("tr-1", 2)
            world.fire("tr-1", 3)
            assert _outcome(world) == expected, f"{failure} at call {n}"


@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_fault_at_every_aws_call_of_a_stop_publishes_it_once_and_no_step_runs_after(aws_env, failure):
    with mock_aws():
        world = make_world()
        invoke(world, qualified())
        world.out()
        recorder = _recorded(world)
        invoke(world, STOPS["converted"])
        calls = recorder.total
    for n in range(1, calls + 1):
        with mock_aws():
            world = make_world()
            invoke(world, qualified())
            world.out()
            step = world.due_event("tr-1", 1)
            recorder = _recorded(world)
            recorder.fail_at, recorder.failure = n, failure
            with pytest.raises((Crash, ClientError)):
                invoke(world, STOPS["converted"])
            recorder.fail_at = None
            invoke(world, STOPS["converted"])
            invoke(world, step)
            assert _outcome(world) == [("Journey Stopped", None, "converted")], f"{failure} at call {n}"


def test_steps_spaced_by_the_cap_are_not_capped_when_their_schedules_fire_late(aws):
    # Given steps exactly one account cap (7 days) apart, qualified at a fractional second
    policy = POLICY.replace("account_days: 1", "account_days: 7").replace("after_days: 3", "after_days: 7") \
        .replace("after_days: 7\n        channel: email", "after_days: 14\n        channel: email") \
        .replace("after_days: 14\n        channel: offer", "after_days: 21\n        channel: offer")
    world = make_world(policy)
    clock.set_source(lambda: NOW + 0.4)
    invoke(world, qualified())
    world.out()
    # When step 1's schedule fires five hours late, and step 2's on time
    event = world.due_event("tr-1", 1)
    clock.set_source(lambda: NOW + 7 * DAY + 5 * 3600)
    invoke(world, event)
    world.fire("tr-1", 2)
    # Then neither is capped: each is decided as of the time it was planned for
    assert world.steps_out() == [(1, "offer", "send"), (2, "email", "send")]


# --- the account as it is when a step comes due -------------------------------------------------------

DRIFT = Path(__file__).resolve().parents[3] / "examples" / "definitions" / "drift-conversations.yaml"


def _ingest(world: World, conversations: int, first: int = 0) -> None:
    """Conversations of account acme (ids c<first>...) through the real ingest handler into its usage item."""
    spec = parse_definition(DRIFT.read_text(), str(DRIFT)).tracking_spec()
    processor = UsageBatchProcessor(DynamoUsageStore(TABLE, world.dynamodb), IngestConfig(spec=spec), clock.now_ms)
    start = int((clock.now() - 3600) * 1000)
    messages = [track("Conversation Started", start + i * 1000, f"c{first + i}") for i in range(conversations)]
    for chunk in range(0, len(messages), 10):
        assert ingest_app.handler(sqs_event(messages[chunk:chunk + 10]), LambdaContext(),
                                  processor=processor) == {"batchItemFailures": []}


@pytest.mark.parametrize(("more", "runs"), [(0, False), (40, True)])
def test_a_steps_signal_condition_reads_the_usage_when_it_comes_due(aws, more, runs):
    # Given the drift definition in force, a step that waits for 130 conversations, and an account that
    # qualified at 100
    world = make_world(POLICY.replace("not: {engaged: {step: 0, event: email_clicked}}",
                                      'signal: {name: conversations, op: ">=", value: 130}'))
    world.service.usage_now = UsageNow(TABLE, world.dynamodb)
    DefinitionStore(TABLE, world.dynamodb).publish(DRIFT.read_text(), str(DRIFT))
    _ingest(world, 100)
    event = qualified()
    event["detail"]["signals"] = {"conversations": 100.0}
    invoke(world, event)
    world.out()
    # When the account has had `more` conversations by the time step 1 comes due
    step = world.due_event("tr-1", 1)
    _ingest(world, more, first=100)
    invoke(world, step)
    # Then the step runs only if the usage then meets its condition, and its message carries today's count
    out = [d for t, d in world.out() if t == "Nurture Action"]
    assert [(d["step"], d["channel"]) for d in out] == ([(1, "offer")] if runs else [])
    if runs:
        assert out[0]["context"]["signals"]["conversations"] == 140


def test_a_conversion_routed_before_its_qualification_still_stops_the_journey(aws):
    # Given the account's conversion reached route before its qualification did (EventBridge keeps no order)
    world = make_world()
    world.service.usage_now = UsageNow(TABLE, world.dynamodb)
    DefinitionStore(TABLE, world.dynamodb).publish(DRIFT.read_text(), str(DRIFT))
    _ingest(world, 100)
    invoke(world, STOPS["converted"])  # no journey yet: nothing to stop
    processor_messages = [track("Subscription Started", int(clock.now() * 1000), "sub-1")]
    spec = parse_definition(DRIFT.read_text(), str(DRIFT)).tracking_spec()
    processor = UsageBatchProcessor(DynamoUsageStore(TABLE, world.dynamodb), IngestConfig(spec=spec), clock.now_ms)
    ingest_app.handler(sqs_event(processor_messages), LambdaContext(), processor=processor)
    invoke(world, qualified())
    world.out()
    # When step 1 comes due
    result = world.fire("tr-1", 1)
    # Then it does not run: the journey stops as converted, once
    assert not result["ran"]
    out = world.out()
    assert [(t, d["reason"], d["after_step"]) for t, d in out] == [("Journey Stopped", "converted", 0)]


# --- quiet-hour deferrals and stops ---------------------------------------------------------------------

QUIET = """\
name: journeys
version: 1
holdout: {share: 0}
caps: {account_days: 1, user_days: 0}
quiet_hours: {enabled: true, default_timezone: UTC, start: "09:00", end: "18:00"}
rules:
  - name: nurture
    then:
      - {channel: email, template: upgrade_nudge}
      - name: weekend-email          # day 5 of a journey that starts on a Monday: a Saturday
        after_days: 5
        channel: email
        template: demo_invite
      - name: last-call
        after_days: 14
        channel: offer
        offer: pro-discount-20
"""


def pending(world: World) -> list[tuple[str, str, int | None, str | None]]:
    """What the schedules left in Scheduler will put on the bus: (detail-type, transition, step, outcome)."""
    found = []
    for name in sorted(world.schedules()):
        target = world.scheduler.get_schedule(Name=name, GroupName="default")["Target"]
        detail = json.loads(target["Input"])
        found.append((target["EventBridgeParameters"]["DetailType"], detail["transition_id"], detail.get("step"),
                      detail.get("outcome")))
    return found


def _requalified() -> dict:
    event = qualified("tr-2")
    event["detail"]["qualified_at"] = "2026-11-29T10:00:00Z"
    return event


STOP_OR_REQUALIFY = {**STOPS, "requalified": _requalified()}


@pytest.mark.parametrize("reason", ["converted", "offer_accepted", "disqualified", "task_closed", "requalified"])
def test_a_step_email_waiting_for_the_sending_window_is_not_sent_after_the_journey_stops(aws, reason):
    # Given a journey whose step 1 came due on a Saturday, so its email waits for Monday 09:00
    world = make_world(QUIET)
    invoke(world, qualified())
    result = world.fire("tr-1", 1)
    assert [(a["channel"], a["outcome"]) for a in result["actions"]] == [("email", "deferred")]
    assert ("Nurture Action", "tr-1", 1, "send") in pending(world)
    world.out()
    # When on Sunday the account converts (or accepts an offer, is disqualified, the rep closes the task,
    # or the subject qualifies again)
    clock.set_source(lambda: NOW + 6 * DAY)
    invoke(world, STOP_OR_REQUALIFY[reason])
    stops = [(d["transition_id"], d["reason"], d["after_step"]) for t, d in world.out() if t == "Journey Stopped"]
    assert stops == [("tr-1", reason, 1)]
    # Then nothing of the stopped journey is left to go out on Monday: not the email, not step 2
    assert [p for p in pending(world) if p[1] == "tr-1"] == []


def test_a_first_email_waiting_for_the_sending_window_is_not_sent_after_the_journey_stops(aws):
    # Given an account that qualifies on a Saturday: the journey's first email waits for Monday 09:00
    saturday = NOW + 5 * DAY
    clock.set_source(lambda: saturday)
    world = make_world(QUIET)
    invoke(world, qualified())
    assert [(o, s) for t, _, s, o in pending(world) if t == "Nurture Action"] == [("send", 0)]
    # When the account converts on Sunday
    clock.set_source(lambda: saturday + DAY)
    invoke(world, STOPS["converted"])
    # Then the first email never goes out
    assert pending(world) == []


def test_the_last_steps_waiting_email_still_goes_out_when_the_journey_completes(aws):
    # Given a journey whose last step is an email that comes due on a Saturday
    world = make_world(QUIET.replace("      - name: last-call\n        after_days: 14\n        channel: offer\n"
                                     "        offer: pro-discount-20\n", ""))
    invoke(world, qualified())
    world.fire("tr-1", 1)
    # When the journey completes with it
    stops = [d["reason"] for t, d in world.out() if t == "Journey Stopped"]
    assert stops == ["completed"]
    # Then the email is still sent on Monday: completing is not a stop of what the journey decided
    assert pending(world) == [("Nurture Action", "tr-1", 1, "send")]
    # But if the account converts on Sunday, it is not sent
    clock.set_source(lambda: NOW + 6 * DAY)
    invoke(world, STOPS["converted"])
    assert pending(world) == [] and world.out() == []


class StopBeforeScheduling:
    """The real deferrer, but an event is delivered to route (concurrently) just before the first schedule."""

    def __init__(self, world: World, event: dict):
        self.world, self.event, self.inner = world, event, world.service.deferrer

    def _deliver(self) -> None:
        if self.event is not None:
            event, self.event = self.event, None
            invoke(self.world, event)

    def schedule(self, delivery, at):
        self._deliver()
        self.inner.schedule(delivery, at)

    def put_later(self, name, detail, at, description):
        self._deliver()
        self.inner.put_later(name, detail, at, description)

    def cancel(self, name):
        self.inner.cancel(name)

    def unschedule(self, delivery):
        self.inner.unschedule(delivery)


@pytest.mark.parametrize("policy", [POLICY, QUIET], ids=["sent", "waiting"])
@pytest.mark.parametrize("reason", ["converted", "offer_accepted", "requalified"])
def test_a_stop_landing_between_a_steps_decision_and_its_schedules_leaves_nothing_scheduled(aws, policy, reason):
    # Given a journey at step 1 (with quiet hours on, step 1's email comes due on a Saturday and waits)
    world = make_world(policy)
    invoke(world, qualified())
    world.out()
    racing = RouteService(world.service.policy, world.service.store, world.service.publisher,
                          StopBeforeScheduling(world, STOP_OR_REQUALIFY[reason]))
    # When the stop lands after step 1's transaction, before step 1 made its schedules
    result = world.fire("tr-1", 1, service=racing)
    # Then the step ran (it was decided before the stop), the journey stopped after it...
    assert result["ran"]
    stops = [(d["transition_id"], d["reason"], d["after_step"]) for t, d in world.out() if t == "Journey Stopped"]
    assert stops == [("tr-1", reason, 1)]
    # ...and nothing of the stopped journey is left scheduled: not step 2, not a waiting email
    assert [p for p in pending(world) if p[1] == "tr-1"] == []


@pytest.mark.parametrize("policy", [POLICY, QUIET], ids=["sent", "waiting"])
def test_a_stop_landing_between_the_first_steps_decision_and_its_schedules_leaves_nothing_scheduled(aws, policy):
    # Given an account that qualifies on a Saturday (its first email waits for Monday when quiet hours are on)
    clock.set_source(lambda: NOW + 5 * DAY)
    world = make_world(policy)
    racing = RouteService(world.service.policy, world.service.store, world.service.publisher,
                          StopBeforeScheduling(world, STOPS["converted"]))
    # When it converts after the first step's transaction, before its schedules are made
    invoke(world, qualified(), racing)
    stops = [(d["reason"], d["after_step"]) for t, d in world.out() if t == "Journey Stopped"]
    # Then the journey stopped after step 0, and nothing of it is left scheduled
    assert stops == [("converted", 0)]
    assert pending(world) == []


def _waiting_step(world: World) -> dict:
    """A QUIET journey qualified Monday, step 1's event (due Saturday: its email will wait for Monday)."""
    clock.set_source(lambda: NOW)
    invoke(world, qualified())
    world.out()
    return _fired(world, 1)


@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_fault_at_every_aws_call_of_a_step_whose_email_waits_leaves_one_waiting_email(aws_env, failure):
    with mock_aws():
        world = make_world(QUIET)
        event = _waiting_step(world)
        recorder = _recorded(world)
        invoke(world, event)
        calls, expected, scheduled = recorder.total, _outcome(world), pending(world)
    assert expected == [("Nurture Action", 1, "deferred")]
    assert sorted(scheduled) == [("Journey Step Due", "tr-1", 2, None), ("Nurture Action", "tr-1", 1, "send")]
    for n in range(1, calls + 1):
        with mock_aws():
            world = make_world(QUIET)
            event = _waiting_step(world)
            recorder = _recorded(world)
            recorder.fail_at, recorder.failure = n, failure
            with pytest.raises((Crash, ClientError)):
                invoke(world, event)
            recorder.fail_at = None
            invoke(world, event)  # the trigger's retry
            assert (_outcome(world), sorted(pending(world))) == (expected, sorted(scheduled)), f"{failure} at {n}"


@pytest.mark.parametrize("failure", ["throttle", "crash", "crash_after"])
def test_a_fault_at_every_aws_call_of_a_stop_leaves_no_waiting_email_behind(aws_env, failure):
    with mock_aws():
        world = make_world(QUIET)
        invoke(world, _waiting_step(world))
        world.out()
        recorder = _recorded(world)
        invoke(world, STOPS["converted"])
        calls = recorder.total
        assert pending(world) == []
    assert calls >= 6  # the query, the stop, the records' read, two deletes, the publish, the mark
    for n in range(1, calls + 1):
        with mock_aws():
            world = make_world(QUIET)
            invoke(world, _waiting_step(world))
            world.out()
            recorder = _recorded(world)
            recorder.fail_at, recorder.failure = n, failure
            with pytest.raises((Crash, ClientError)):
                invoke(world, STOPS["converted"])
            recorder.fail_at = None
            invoke(world, STOPS["converted"])
            assert (_outcome(world), pending(world)) == ([("Journey Stopped", None, "converted")], []), \
                f"{failure} at call {n}"


# --- the time an email goes out -----------------------------------------------------------------------


def test_a_step_email_that_comes_due_late_still_waits_for_the_sending_window(aws):
    # Given a journey in Berlin's sending window (09:00-18:00) whose step 2 email is planned for 16:00 Berlin
    world = make_world(POLICY.replace("quiet_hours: {enabled: false}",
                                      'quiet_hours: {enabled: true, default_timezone: Europe/Berlin, '
                                      'start: "09:00", end: "18:00"}'))
    invoke(world, qualified())  # Mon 23 Nov 15:00 UTC = 16:00 Berlin
    world.fire("tr-1", 1)
    world.out()
    # When its trigger runs five hours late, at 21:00 Berlin
    event = world.due_event("tr-1", 2)
    clock.set_source(lambda: NOW + 7 * DAY + 5 * 3600)
    invoke(world, event)
    # Then the email is not sent at 21:00: it waits for 09:00 Berlin the next morning
    (action,) = [d for t, d in world.out() if t == "Nurture Action"]
    assert (action["outcome"], action["send_after"]) == ("deferred", "2026-12-01T08:00:00Z")
    assert ("Nurture Action", "tr-1", 2, "send") in pending(world)


# --- events that arrive out of order ------------------------------------------------------------------


def _disqualified(at: str) -> dict:
    return pqlflow_event({"transition_id": "tr-dq1", "account_id": "acme", "user_id": None,
                          "definition": {"name": "default", "version": 3}, "disqualified_at": at},
                         "PQL Disqualified")


def _qualified_at(transition_id: str, at: str) -> dict:
    event = qualified(transition_id)
    event["detail"]["qualified_at"] = at
    return event


def test_a_disqualification_routed_after_the_next_qualification_does_not_stop_its_journey(world):
    # Given the account qualified (tr-1), was disqualified on the 24th and qualified again on the 25th (tr-2)
    invoke(world, qualified("tr-1"))
    clock.set_source(lambda: NOW + 2 * DAY)
    # When route sees the new qualification before the (retried) disqualification
    invoke(world, _qualified_at("tr-2", "2026-11-25T15:00:00Z"))
    invoke(world, _disqualified("2026-11-24T10:00:00Z"))
    # Then only the old journey stopped (replaced), and the new one goes on to its next step
    stops = [(d["transition_id"], d["reason"]) for t, d in world.out() if t == "Journey Stopped"]
    assert stops == [("tr-1", "requalified")]
    world.fire("tr-2", 1)
    assert world.steps_out() == [(1, "offer", "send")]
    # And a disqualification after that qualification still stops it
    invoke(world, _disqualified("2026-11-28T10:00:00Z"))
    assert [(d["transition_id"], d["reason"]) for t, d in world.out() if t == "Journey Stopped"] == [
        ("tr-2", "disqualified")]


def test_an_older_qualification_routed_late_does_not_replace_the_newer_journey(world):
    # Given the subject's qualification of the 25th (tr-2) started its journey
    clock.set_source(lambda: NOW + 2 * DAY)
    invoke(world, _qualified_at("tr-2", "2026-11-25T15:00:00Z"))
    world.out()
    # When its qualification of the 23rd (tr-1) is routed only now (a retried delivery)
    result = invoke(world, qualified("tr-1"))
    # Then the stale qualification gets no nudge and no journey, and the newer journey is left alone
    assert (result["channel"], result["outcome"]) == ("none", "suppressed")
    out = world.out()
    assert [t for t, _ in out] == ["Nurture Action"] and "later qualification (tr-2)" in out[0][1]["why"]
    assert [(p[1], p[2]) for p in pending(world)] == [("tr-2", 1)]
    world.fire("tr-2", 1)
    assert world.steps_out() == [(1, "offer", "send")]


def test_an_older_qualification_routed_late_does_not_restart_after_the_newer_journey_stopped(world):
    # Given the newer qualification's journey started and was then stopped by a disqualification
    clock.set_source(lambda: NOW + 2 * DAY)
    invoke(world, _qualified_at("tr-2", "2026-11-25T15:00:00Z"))
    invoke(world, _disqualified("2026-11-26T10:00:00Z"))
    world.out()
    # When the older qualification is routed only now
    invoke(world, qualified("tr-1"))
    # Then it starts no journey: nothing is scheduled
    assert pending(world) == []


# --- logs --------------------------------------------------------------------------------------------


def test_a_stop_that_keeps_losing_its_race_does_not_put_the_account_id_in_the_error(world, monkeypatch):
    # Given a B2C account whose id is an email address, with a journey running
    invoke(world, qualified(account_id="user:ana@acme.test"))
    monkeypatch.setattr(JourneyStore, "stop", lambda self, journey, stop: False)  # a step wins every race
    # When its conversion keeps losing the race to change the journey
    with pytest.raises(RuntimeError) as raised:
        invoke(world, pqlflow_event({"account_id": "user:ana@acme.test", "converted_at": "2026-11-27T10:00:00Z"},
                                    "Account Converted"))
    # Then the error the Lambda runtime logs does not carry the address
    assert "ana@acme.test" not in str(raised.value)
    assert "kept changing" in str(raised.value)
