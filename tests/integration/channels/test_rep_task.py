"""The rep_task function on moto, delivering to local HubSpot and Slack fakes on 127.0.0.1: one task
per qualification however often the action arrives, the owner trait wins, round-robin stays balanced,
and a failing connector retries while the task survives."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.channels.rep_tasks import service
from pqlflow.channels.rep_tasks.http import Backoff, Http
from pqlflow.channels.rep_tasks.hubspot import HubSpotConnector
from pqlflow.channels.rep_tasks.slack import SlackConnector
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.channels.rep_tasks.task import load_roster
from pqlflow.contracts.emitted import DefinitionRef, NurtureAction, PqlQualified, Reason, RepTaskCreated, UserSummary
from pqlflow.kernel import clock

import functions.rep_task.app as app
from tests.support.channels import FakePublisher, pqlflow_event
from tests.support.demo_account import demo_qualification
from tests.support.http_fakes import TOKEN, FakeHubSpot, FakeSlack, LocalServer, Seen, SleepLog
from tests.support.lambda_context import LambdaContext
from tests.unit.channels.test_rep_tasks import action_for

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

ROOT = Path(__file__).resolve().parents[3]
ROSTER_FILE = ROOT / "examples" / "reps" / "roster.yaml"
ROSTER = load_roster(ROSTER_FILE)
NOW = 1_795_705_200.0  # Friday 2026-11-27 15:00 UTC, 10:00 in New York
SLACK_PATH = "/services/T000/B000/XXXX"


def action_event(transition_id: str, account: str = "acct-1", **traits: Any) -> dict[str, Any]:
    q = PqlQualified(
        transition_id=transition_id,
        account_id=account,
        definition=DefinitionRef(name="slack-messages", version=1),
        qualified_at="2026-11-27T14:59:00Z",
        touch="high",
        score=72,
        reasons=[
            Reason(
                code="limit.messages",
                text="2,000 messages: the free plan's limit",
                kind="limit",
                signal="messages",
                value=2000,
                threshold=2000,
            )
        ],
        signals={"messages": 2000, "active_users": 9},
        account_traits={"name": "Initech", "hubspot_company_id": "6666"} | traits,
        users=[UserSummary(user_id="u1", traits={"name": "Peter", "email": "peter@initech.test"})],
    )
    detail = NurtureAction(
        action_id=f"act-{transition_id}",
        transition_id=transition_id,
        account_id=account,
        channel="rep_task",
        touch="high",
        reasons=q.reasons,
        context=q.model_dump(mode="json"),
    ).model_dump(mode="json")
    return pqlflow_event(detail, time="2026-11-27T15:00:00Z")


@pytest.fixture
def store(table_name: str) -> RepTaskStore:
    clock.set_source(lambda: NOW)
    return RepTaskStore(table_name)


@pytest.fixture
def crm() -> Iterator[dict[str, Any]]:
    hubspot, slack = FakeHubSpot(), FakeSlack()
    with LocalServer(hubspot) as hs, LocalServer(slack) as sl:
        sleeps = SleepLog()
        http = Http(timeout=2, backoff=Backoff(attempts=3, base=0.5, cap=4, sleep=sleeps, rand=lambda: 1.0))
        yield {
            "hubspot": hubspot,
            "slack": slack,
            "sleeps": sleeps,
            "connectors": [
                # The operator's mapping (connector secret): the account's `hubspot_company_id` trait is not trusted.
                HubSpotConnector(TOKEN, hs.url, http=http, companies={"acct-1": "5150"}),
                SlackConnector(sl.url + SLACK_PATH, http=http),
            ],
        }


def run(event: dict[str, Any], store: RepTaskStore, publisher: FakePublisher, connectors: list) -> dict[str, Any]:
    return app.handler(event, LambdaContext(), store=store, publisher=publisher, roster=ROSTER, connectors=connectors)


def task_items(table: str) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=table)["Items"]
    return [i for i in items if i["kind"]["S"] == "rep_task"]


def test_redelivery_gives_one_task_one_event_one_crm_task(store, table_name, crm):
    # Given one Nurture Action for a rep task, delivered three times
    event = action_event("tr-1", territory="amer")
    publisher = FakePublisher()

    # When the function handles every copy
    results = [run(event, store, publisher, crm["connectors"]) for _ in range(3)]

    # Then there is one stored task, one Rep Task Created, one HubSpot task and one Slack message
    assert {r["outcome"] for r in results} == {"delivered"}
    assert len({r["task_id"] for r in results}) == 1
    (item,) = task_items(table_name)
    assert item["sk"]["S"] == "TASK#tr-1" and item["status"]["S"] == "delivered"
    assert [type(e) for e in publisher.published] == [RepTaskCreated]
    assert len(crm["hubspot"].tasks) == 1
    assert len(crm["slack"].messages) == 1

    # And the stored task records where it went
    task = store.get("acct-1", "tr-1")
    assert task.deliveries["hubspot"].ref == "1000"
    assert task.deliveries["slack"].status == "delivered"


def test_two_rep_task_steps_of_one_journey_are_two_tasks_each_once(store, table_name, crm):
    # Given a journey whose steps 0 and 2 both ask the rep to follow up the same qualification
    first = action_event("tr-1", territory="amer")
    later = action_event("tr-1", territory="amer")
    later["detail"] |= {"action_id": "act-tr-1-step2", "step": 2}
    publisher = FakePublisher()
    # When both actions are handled, each delivered twice
    results = [run(e, store, publisher, crm["connectors"]) for e in (first, first, later, later)]
    # Then there are two tasks, one per step, each created and sent once
    assert len({r["task_id"] for r in results}) == 2
    assert sorted(i["sk"]["S"] for i in task_items(table_name)) == ["TASK#tr-1", "TASK#tr-1#S2"]
    assert len(crm["hubspot"].tasks) == 2 and len(publisher.published) == 2
    assert store.get("acct-1", "tr-1", 2).action_id == "act-tr-1-step2"


def test_owner_trait_wins(store, crm):
    # Given an account whose owner trait names a rep
    publisher = FakePublisher()

    # When its task is created
    result = run(action_event("tr-1", owner="rep-emea-1", territory="amer"), store, publisher, crm["connectors"])

    # Then the owner gets it, in HubSpot too, and the round-robin did not move
    assert result["owner"] == "rep-emea-1"
    (created,) = crm["hubspot"].tasks.values()
    assert created["properties"]["hubspot_owner_id"] == "64492919"
    assert created["associations"][0]["to"] == {"id": "5150"}
    counter = boto3.client("dynamodb").get_item(
        TableName=store.table, Key={"pk": {"S": "ROSTER#any:amer"}, "sk": {"S": "COUNTER"}}
    )
    assert "Item" not in counter


def counter_value(store: RepTaskStore, pool: str) -> int:
    item = boto3.client("dynamodb").get_item(
        TableName=store.table, Key={"pk": {"S": f"ROSTER#{pool}"}, "sk": {"S": "COUNTER"}}
    )["Item"]
    return int(item["n"]["N"])


def test_round_robin_stays_balanced_across_invocations_and_redeliveries(store):
    # Given 60 qualifications in AMER (3 eligible reps), every fifth delivered twice
    publisher = FakePublisher()
    owners: dict[str, str] = {}

    # When the function handles each (no connectors: the task is stored and announced)
    for n in range(60):
        event = action_event(f"tr-{n}", account=f"acct-{n}", territory="amer")
        for _ in range(2 if n % 5 == 0 else 1):
            owners[f"tr-{n}"] = run(event, store, publisher, [])["owner"]

    # Then each rep got exactly a third, in turn, and the redeliveries drew nothing
    assert Counter(owners.values()) == {"rep-amer-1": 20, "rep-amer-2": 20, "rep-any-1": 20}
    assert [owners[f"tr-{n}"] for n in range(3)] == ["rep-amer-1", "rep-amer-2", "rep-any-1"]
    assert counter_value(store, "any:amer") == 60
    assert len(publisher.published) == 60


@pytest.mark.slow
def test_round_robin_stays_balanced_over_1000_tasks(store):
    # Given 1,000 qualifications across two territories, every tenth delivered twice
    c = service.Collaborators(store=store, publisher=FakePublisher(), roster=ROSTER, connectors=[])
    owners: dict[str, str] = {}

    # When each is processed
    for n in range(1000):
        territory = "amer" if n % 2 else "emea"
        action = NurtureAction.model_validate(
            action_event(f"tr-{n}", account=f"acct-{n}", territory=territory)["detail"]
        )
        for _ in range(2 if n % 10 == 0 else 1):
            owners[f"tr-{n}"] = service.process(action, c)["owner"]

    # Then within each pool every rep's share differs by at most one, and no draw was wasted
    amer = Counter(owners[f"tr-{n}"] for n in range(1, 1000, 2))
    emea = Counter(owners[f"tr-{n}"] for n in range(0, 1000, 2))
    assert set(amer) == {"rep-amer-1", "rep-amer-2", "rep-any-1"}
    assert set(emea) == {"rep-emea-1", "rep-any-1"}
    for pool in (amer, emea):
        assert max(pool.values()) - min(pool.values()) <= 1
    assert counter_value(store, "any:amer") == counter_value(store, "any:emea") == 500


def test_a_crash_after_the_draw_skips_no_rep(table_name):
    # Given a store that crashes once right after drawing a slot, before the task is written
    class CrashOnce(RepTaskStore):
        crashed = False

        def create(self, task):
            if not self.crashed:
                self.crashed = True
                raise ConnectionError("Lambda timed out")
            return super().create(task)

    clock.set_source(lambda: NOW)
    store = CrashOnce(table_name)
    publisher = FakePublisher()
    first = action_event("tr-1", territory="amer")
    with pytest.raises(ConnectionError):
        run(first, store, publisher, [])

    # When another task is drawn meanwhile and then the first is redelivered
    second = run(action_event("tr-2", account="acct-2", territory="amer"), store, publisher, [])
    first_retry = run(first, store, publisher, [])

    # Then the first kept its slot (the first rep) and the second got the next rep
    assert first_retry["owner"] == "rep-amer-1"
    assert second["owner"] == "rep-amer-2"
    assert counter_value(store, "any:amer") == 2


def test_a_failing_connector_retries_and_the_task_survives(store, table_name, crm):
    # Given HubSpot down (every call 503) while Slack works
    crm["hubspot"].fail_first = 10**6
    publisher = FakePublisher()
    event = action_event("tr-1", territory="emea")

    # When the action is handled
    with pytest.raises(service.TaskDeliveryFailed, match="hubspot"):
        run(event, store, publisher, crm["connectors"])

    # Then HubSpot was retried with backoff, and the task is stored as delivery_failed, announced once
    assert crm["sleeps"].delays == [0.5, 1.0]
    task = store.get("acct-1", "tr-1")
    assert task.status == "delivery_failed"
    assert task.deliveries["hubspot"].status == "failed" and task.deliveries["hubspot"].attempts == 3
    assert task.deliveries["slack"].status == "delivered"
    assert len(publisher.published) == 1

    # When HubSpot recovers and the trigger retries the action
    crm["hubspot"].fail_first = 0
    result = run(event, store, publisher, crm["connectors"])

    # Then the task reaches HubSpot once, Slack is not posted twice, and nothing is announced again
    assert result["outcome"] == "delivered"
    assert store.get("acct-1", "tr-1").status == "delivered"
    assert len(crm["hubspot"].tasks) == 1
    assert len(crm["slack"].messages) == 1
    assert len(publisher.published) == 1
    assert len(task_items(table_name)) == 1


def test_crm_answer_lost_after_create_does_not_duplicate_the_task(store, crm):
    # Given HubSpot that creates the task but whose answer is lost (a 502 from its edge)
    hubspot = crm["hubspot"]
    real = hubspot.__call__
    lost = {"n": 0}

    def create_then_fail(req: Seen):
        reply = real(req)
        if req.path == "/crm/v3/objects/tasks" and lost["n"] == 0:
            lost["n"] += 1
            return 502, {"status": "error"}
        return reply

    hubspot.__class__ = type("LossyHubSpot", (FakeHubSpot,), {"__call__": lambda self, req: create_then_fail(req)})

    # When the task is delivered (the connector retries after the 502)
    result = run(action_event("tr-1"), store, FakePublisher(), crm["connectors"])

    # Then HubSpot holds exactly one task: the retry found it by its idempotency key
    assert result["outcome"] == "delivered"
    assert len(hubspot.tasks) == 1
    assert store.get("acct-1", "tr-1").deliveries["hubspot"].ref == "1000"


def test_other_channels_are_ignored(store, table_name):
    event = action_event("tr-1")
    event["detail"]["channel"] = "email"
    assert run(event, store, FakePublisher(), [])["outcome"] == "ignored"
    assert task_items(table_name) == []


def test_deployed_configuration_with_secrets_manager(table_name, bus_name, monkeypatch):
    # Given the function configured as deployed: roster file, HubSpot credentials in Secrets Manager
    hubspot = FakeHubSpot()
    with LocalServer(hubspot) as server:
        secret = boto3.client("secretsmanager").create_secret(
            Name="pqlflow/connectors", SecretString=json.dumps({"hubspot": {"token": TOKEN, "base_url": server.url}})
        )
        monkeypatch.setenv("ROSTER_FILE", str(ROSTER_FILE))
        monkeypatch.setenv("CONNECTORS", "hubspot")
        monkeypatch.setenv("CONNECTOR_SECRET_ARN", secret["ARN"])
        app.settings.cache_clear()
        app._defaults.cache_clear()
        service._secrets.clear()
        clock.set_source(lambda: NOW)
        try:
            # When it handles an action with no injected collaborators
            result = app.handler(action_event("tr-7", territory="amer"), LambdaContext())
        finally:
            app.settings.cache_clear()
            app._defaults.cache_clear()
            service._secrets.clear()

    # Then the task went to HubSpot with the secret's token, and is stored as delivered
    assert result["outcome"] == "delivered"
    (seen,) = [s for s in server.seen if s.path == "/crm/v3/objects/tasks"]
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert RepTaskStore(table_name).get("acct-1", "tr-7").status == "delivered"


def test_connectors_without_a_secret_is_a_named_configuration_error(monkeypatch):
    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.setenv("EVENT_BUS_NAME", "b")
    monkeypatch.setenv("ROSTER_FILE", str(ROSTER_FILE))
    monkeypatch.setenv("CONNECTORS", "hubspot")
    monkeypatch.delenv("CONNECTOR_SECRET_ARN", raising=False)
    app.settings.cache_clear()
    with pytest.raises(RuntimeError, match="CONNECTOR_SECRET_ARN is required"):
        app.settings()
    app.settings.cache_clear()


def test_the_deployed_roster_is_the_one_next_to_the_function(monkeypatch):
    monkeypatch.setenv("TABLE_NAME", "t")
    monkeypatch.setenv("EVENT_BUS_NAME", "b")
    monkeypatch.delenv("ROSTER_FILE", raising=False)
    monkeypatch.delenv("CONNECTORS", raising=False)
    app.settings.cache_clear()
    path = app.settings().roster_path()
    app.settings.cache_clear()
    assert path == ROOT / "functions" / "rep_task" / "roster.yaml"
    assert load_roster(path).reps


def test_a_task_stored_by_an_older_version_still_loads_without_its_trait_company(store, crm):
    # Given a task stored before the company stopped coming from a trait (it carries `crm_company_id`)
    publisher = FakePublisher()
    run(action_event("tr-old"), store, publisher, [])
    boto3.client("dynamodb").update_item(
        TableName=store.table, Key={"pk": {"S": "A#acct-1"}, "sk": {"S": "TASK#tr-old"}},
        UpdateExpression="SET crm_company_id = :c", ExpressionAttributeValues={":c": {"S": "6666"}},
    )
    # When its delivery is retried with HubSpot configured
    run(action_event("tr-old"), store, publisher, crm["connectors"])
    # Then it loads and goes to the mapped company, not the stored trait value
    (created,) = crm["hubspot"].tasks.values()
    assert created["associations"][0]["to"] == {"id": "5150"}



def test_the_demo_task_reaches_the_crm_saying_why_now_and_what_to_offer(store, crm):
    # Given the Nurture Action for a demo-shaped qualification (a pricing page visit among invites and sign-ins)
    detail = action_for(demo_qualification()).model_dump(mode="json")
    # When the function handles it and delivers over HTTP to HubSpot and Slack
    result = run(pqlflow_event(detail, time="2026-11-27T15:00:00Z"), store, FakePublisher(), crm["connectors"])
    assert result["outcome"] == "delivered"
    (hubspot_task,) = crm["hubspot"].tasks.values()
    props = hubspot_task["properties"]
    # Then the CRM task leads with the buying intent and says what changed and what to offer
    assert props["hs_task_subject"] == "PQL follow-up: Bold Bridge Labs — Buying intent: 1 pricing page view"
    body = props["hs_task_body"]
    assert "Why now:\n- Buying intent: 1 pricing page view\n- Team growing: 5 invites sent" in body
    assert "- invites sent: 5, none a week ago" in body
    assert "What to offer:\n- A walkthrough of the paid plan and a quote" in body
    assert "advanced tips" not in body
    # And the Slack message's talking points start with the purchase being weighed
    (message,) = crm["slack"].messages
    assert "weighing a purchase" in json.dumps(message)
