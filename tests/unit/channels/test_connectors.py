"""Connectors against local HTTP servers on 127.0.0.1 that check each request the way the real
service would (path, auth, content type, JSON shape) and answer like it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pqlflow.channels.rep_tasks.connectors import build_connectors, parse_names
from pqlflow.channels.rep_tasks.http import Backoff, DeliveryError, Http
from pqlflow.channels.rep_tasks.hubspot import HubSpotConfig, HubSpotConnector, connect
from pqlflow.channels.rep_tasks.slack import SlackConnector
from pqlflow.channels.rep_tasks.task import RepTask, build_task, parse_roster
from pqlflow.channels.rep_tasks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookConnector, verify
from pqlflow.contracts.emitted import DefinitionRef, NurtureAction, PqlQualified, Reason, UserSummary
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError

from tests.support.http_fakes import TOKEN, FakeHubSpot, FakeSlack, LocalServer, Reply, Seen, SleepLog


def sample_task(**traits: Any) -> RepTask:
    q = PqlQualified(
        transition_id="tr-42",
        account_id="acct-42",
        definition=DefinitionRef(name="drift-conversations", version=2),
        qualified_at="2026-11-20T15:00:00Z",
        touch="high",
        score=91,
        reasons=[
            Reason(
                code="limit.conversations",
                text="100 conversations: the free plan's limit",
                kind="limit",
                signal="conversations",
                value=100,
                threshold=100,
            )
        ],
        signals={"conversations": 100},
        account_traits={"name": "Globex <script>", "hubspot_company_id": "9001"} | traits,
        users=[UserSummary(user_id="u1", traits={"name": "Hank", "email": "hank@globex.test"})],
    )
    action = NurtureAction(
        action_id="act-42",
        transition_id=q.transition_id,
        account_id=q.account_id,
        channel="rep_task",
        touch="high",
        context=q.model_dump(mode="json"),
    )
    roster = parse_roster({"reps": [{"id": "rep-1", "hubspot_owner_id": "77001", "slack_user_id": "U123"}]})
    return build_task(action, q, "rep-1", "round_robin", roster, datetime(2026, 11, 20, 15, tzinfo=UTC))


def http(sleep: SleepLog | None = None, attempts: int = 4) -> Http:
    return Http(
        timeout=2,
        backoff=Backoff(attempts=attempts, base=0.5, cap=8, sleep=sleep or SleepLog(), rand=lambda: 1.0),
    )


@pytest.fixture
def hubspot() -> Iterator[tuple[FakeHubSpot, LocalServer]]:
    fake = FakeHubSpot()
    with LocalServer(fake) as server:
        yield fake, server


def test_hubspot_task_has_the_documented_shape(hubspot):
    # Given a HubSpot connector pointed at the fake, which maps the account to its company
    fake, server = hubspot
    task = sample_task()

    # When the task is delivered
    ref, _ = HubSpotConnector(TOKEN, server.url, companies={"acct-42": "9001"}, http=http()).deliver(task)

    # Then HubSpot got one task with subject, body, due timestamp, status, priority, owner and company
    assert ref == "1000" and not fake.problems
    created = fake.tasks["1000"]
    props = created["properties"]
    assert props["hs_task_subject"] == task.title
    assert "100 conversations" in props["hs_task_body"]
    assert props["hs_timestamp"] == int(datetime.fromisoformat(task.due_at.replace("Z", "+00:00")).timestamp() * 1000)
    assert (props["hs_task_status"], props["hs_task_priority"]) == ("NOT_STARTED", "HIGH")
    assert props["hubspot_owner_id"] == "77001"
    assert props["pqlflow_task_id"] == task.task_id
    assert created["associations"] == [
        {
            "to": {"id": "9001"},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 192}],
        }
    ]
    # and the request carried the bearer token as JSON
    create = [s for s in server.seen if s.path == "/crm/v3/objects/tasks"][0]
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.headers["content-type"] == "application/json"


def test_hubspot_does_not_create_a_second_copy(hubspot):
    # Given a task already delivered once
    fake, server = hubspot
    connector = HubSpotConnector(TOKEN, server.url, http=http())
    first, _ = connector.deliver(sample_task())

    # When it is delivered again (a retry after pqlflow lost the answer)
    second, _ = connector.deliver(sample_task())

    # Then HubSpot still has one task, and the same id comes back
    assert first == second and len(fake.tasks) == 1


def test_hubspot_without_a_company_mapping_sends_no_association(hubspot):
    fake, server = hubspot
    HubSpotConnector(TOKEN, server.url, idempotency_property=None, http=http()).deliver(sample_task())
    (created,) = fake.tasks.values()
    assert "associations" not in created and "pqlflow_task_id" not in created["properties"]
    assert all(s.path != "/crm/v3/objects/tasks/search" for s in server.seen)


class FakeHubSpotCompanies(FakeHubSpot):
    """FakeHubSpot that also answers the CRM companies search, over companies holding a property."""

    def __init__(self, companies: dict[str, dict[str, str]], **kw: Any) -> None:
        super().__init__(**kw)
        self.companies = companies

    def __call__(self, req: Seen) -> Reply:
        if req.path != "/crm/v3/objects/companies/search":
            return super().__call__(req)
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"status": "error", "category": "INVALID_AUTHENTICATION"}
        body = req.json()
        (flt,) = body["filterGroups"][0]["filters"]
        hits = [{"id": cid, "properties": props} for cid, props in self.companies.items()
                if flt["operator"] == "EQ" and props.get(flt["propertyName"]) == flt["value"]]
        return 200, {"total": len(hits), "results": hits[: body.get("limit", 10)]}


def _associated(fake: FakeHubSpot) -> list[str]:
    (created,) = fake.tasks.values()
    return [a["to"]["id"] for a in created.get("associations", [])]


def test_hubspot_never_associates_the_company_an_account_trait_names():
    # Given an account whose users set its `hubspot_company_id` trait to another customer's company
    fake = FakeHubSpotCompanies({"9001": {"name": "Someone else"}})
    task = sample_task(hubspot_company_id="9001")
    with LocalServer(fake) as server:
        # When the task is delivered with no mapping configured
        HubSpotConnector(TOKEN, server.url, idempotency_property=None, http=http()).deliver(task)
    # Then the task is attached to no company: event data never chooses one
    assert _associated(fake) == []


def test_hubspot_associates_through_the_mapping_in_the_connector_secret():
    # Given the operator's mapping account → company, and a trait that says otherwise
    fake = FakeHubSpotCompanies({})
    task = sample_task(hubspot_company_id="9001")
    with LocalServer(fake) as server:
        HubSpotConnector(TOKEN, server.url, idempotency_property=None, companies={"acct-42": "555"},
                         http=http()).deliver(task)
    # Then the task is on the mapped company
    assert _associated(fake) == ["555"]


@pytest.mark.parametrize(("portal_id", "link"), [("4100", "https://app.hubspot.com/contacts/4100/record/0-2/555"),
                                                  (None, None)])
def test_a_hubspot_task_links_to_the_company_record_when_the_portal_is_configured(portal_id, link):
    # Given the mapping account → company, and the portal id in the connector secret (or not)
    fake = FakeHubSpotCompanies({})
    task = sample_task()
    config = HubSpotConfig(token=TOKEN, companies={"acct-42": "555"}, portal_id=portal_id)
    with LocalServer(fake) as server:
        connector = connect(config, http())
        connector.base_url, connector.idempotency_property = server.url, None
        connector.deliver(task)
    # Then the rep reads, in the task, where the company record is (CRM sync writes the PQL status there)
    (created,) = fake.tasks.values()
    body = created["properties"]["hs_task_body"]
    assert body.startswith(task.body)
    assert (f"Company record: {link}" in body) if link else ("Company record" not in body)


@pytest.mark.parametrize(
    ("companies", "expected"),
    [
        ({"777": {"pqlflow_account_id": "acct-42"}, "778": {"pqlflow_account_id": "acct-7"}}, ["777"]),
        ({"778": {"pqlflow_account_id": "acct-7"}}, []),  # no company carries the account: none
        ({"777": {"pqlflow_account_id": "acct-42"}, "779": {"pqlflow_account_id": "acct-42"}}, []),  # ambiguous
    ],
)
def test_hubspot_finds_the_company_by_the_account_id_your_crm_recorded(companies, expected):
    # Given companies whose `pqlflow_account_id` property was set on the CRM side, and a lying trait
    fake = FakeHubSpotCompanies(companies | {"9001": {"pqlflow_account_id": "someone-else"}})
    task = sample_task(hubspot_company_id="9001")
    with LocalServer(fake) as server:
        # When the task is delivered with that property configured
        HubSpotConnector(TOKEN, server.url, idempotency_property=None, company_property="pqlflow_account_id",
                         http=http()).deliver(task)
        searches = [s.json() for s in server.seen if s.path == "/crm/v3/objects/companies/search"]
    # Then the company is the one, and only one, recorded for the account id (searched by it, not a trait)
    assert _associated(fake) == expected
    assert [s["filterGroups"][0]["filters"][0]["value"] for s in searches] == ["acct-42"]


def test_the_company_mapping_is_read_from_the_connector_secret():
    (connector,) = build_connectors(
        ["hubspot"], {"hubspot": {"token": "t", "companies": {"acct-42": "555"}, "company_property": "acct_id"}}
    )
    assert isinstance(connector, HubSpotConnector)
    assert (connector.companies, connector.company_property) == ({"acct-42": "555"}, "acct_id")
    with pytest.raises(UsageError, match=r"hubspot\.companies"):
        build_connectors(["hubspot"], {"hubspot": {"token": "t", "companies": {"acct-42": "not a number"}}})


def test_wrong_token_is_a_permanent_failure_without_retries(hubspot):
    fake, server = hubspot
    sleep = SleepLog()
    with pytest.raises(DeliveryError) as err:
        HubSpotConnector("wrong", server.url, http=http(sleep)).deliver(sample_task())
    assert not err.value.transient and "401" in str(err.value)
    assert sleep.delays == [] and fake.tasks == {}
    assert "wrong" not in str(err.value)


def test_transient_failures_retry_with_exponential_backoff():
    # Given HubSpot failing twice with 503
    fake = FakeHubSpot(fail_first=2)
    sleep = SleepLog()
    with LocalServer(fake) as server:
        # When the task is delivered
        ref, attempts = HubSpotConnector(TOKEN, server.url, idempotency_property=None, http=http(sleep)).deliver(
            sample_task()
        )

    # Then it got through on the third attempt after waiting 0.5 s then 1 s (jitter pinned at its max)
    assert ref is not None and attempts == 3
    assert sleep.delays == [0.5, 1.0]
    assert len(fake.tasks) == 1


def test_retry_after_is_honoured_but_capped():
    # Given a service that rate-limits twice, asking for 3 s and then for an hour
    replies = iter([(429, {}, {"Retry-After": "3"}), (429, {}, {"Retry-After": "3600"}), (201, {"id": "7"})])
    sleep = SleepLog()

    with LocalServer(lambda req: next(replies)) as server:
        resp, attempts = http(sleep).request("POST", server.url + "/x", body={}, headers={})

    # Then the client waited as asked, but never longer than its cap
    assert resp.status == 201 and attempts == 3
    assert sleep.delays == [3.0, 8.0]


def test_jitter_spreads_delays_below_the_exponential_ceiling():
    values = iter([0.0, 0.25, 0.5, 0.99])
    backoff = Backoff(base=0.5, cap=3, rand=lambda: next(values))
    assert [backoff.delay(n) for n in range(4)] == [0.0, 0.25, 1.0, 0.99 * 3]


def test_a_failing_connector_gives_up_after_its_attempts():
    fake = FakeHubSpot(fail_first=100)
    sleep = SleepLog()
    with LocalServer(fake) as server, pytest.raises(DeliveryError) as err:
        HubSpotConnector(TOKEN, server.url, idempotency_property=None, http=http(sleep, attempts=3)).deliver(
            sample_task()
        )
    assert err.value.transient and err.value.attempts == 3
    assert sleep.delays == [0.5, 1.0]


def test_unreachable_endpoint_is_transient():
    with LocalServer(FakeHubSpot()) as server:
        url = server.url
    # the server is closed now: connection refused
    with pytest.raises(DeliveryError) as err:
        SlackConnector(url + "/services/T000/B000/XXXX", http=http(attempts=2)).deliver(sample_task())
    assert err.value.transient and "connection failed" in str(err.value)


def test_a_connection_dropped_without_reply_is_retried():
    # Given a server that drops the first connection without answering
    calls = []

    def answer(req: Seen) -> Reply:
        calls.append(req)
        if len(calls) == 1:
            raise ConnectionAbortedError("dropped")
        return 200, b"ok"

    sleep = SleepLog()
    with LocalServer(answer) as server:
        # When a message is sent / Then the second attempt gets through
        _, attempts = SlackConnector(server.url + "/services/T000/B000/XXXX", http=http(sleep)).deliver(sample_task())
    assert attempts == 2 and sleep.delays == [0.5]


def test_slack_message_uses_blocks_and_escapes_text():
    # Given a Slack incoming webhook
    fake = FakeSlack()
    with LocalServer(fake) as server:
        # When a task is delivered
        ref, attempts = SlackConnector(server.url + "/services/T000/B000/XXXX", http=http()).deliver(sample_task())

    # Then Slack accepted a Block Kit message that mentions the owner and escapes the company name
    assert attempts == 1 and ref is None
    (message,) = fake.messages
    kinds = [b["type"] for b in message["blocks"]]
    assert kinds[0] == "header" and "section" in kinds and kinds[-2:] == ["context", "actions"]
    # and it ends with the "Mark done" button, which names the task for the interactivity callback
    (button,) = message["blocks"][-1]["elements"]
    assert (button["type"], button["text"]["text"], button["value"]) == ("button", "Mark done", sample_task().task_id)
    text = json.dumps(message["blocks"])
    assert "<@U123>" in text
    assert "*Talking points*" in text
    # the header is plain text (shown literally); the mrkdwn notification text is escaped
    assert message["blocks"][0]["text"]["type"] == "plain_text"
    assert "Globex &lt;script&gt;" in message["text"]


def _mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every text Slack parses as mrkdwn: the notification text and each mrkdwn object in the blocks."""
    found = [message["text"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message["blocks"])
    return found


def test_slack_escapes_every_user_supplied_field_so_nothing_pings_or_links():
    # Given an account whose name, id, owner trait and reasons carry Slack control sequences
    hostile = "<!channel> <!here|x> <@U999> <https://evil.example|click> & co"
    q = PqlQualified(
        transition_id="tr-9", account_id="acct-<!everyone>", qualified_at="2026-11-20T15:00:00Z", touch="high",
        definition=DefinitionRef(name="d", version=1), score=50,
        reasons=[Reason(code="c<!here>", text=hostile, kind="limit", signal="seats<@U999>", value=9, threshold=10),
                 Reason(code="t", text=hostile, kind="team")],
        signals={"seats<@U999>": 9}, account_traits={"name": hostile, "owner": "<!channel>"},
        users=[UserSummary(user_id="u<!here>", traits={"name": hostile, "email": "a@b.test", "title": hostile})],
    )
    action = NurtureAction(action_id="act-9", transition_id="tr-9", account_id=q.account_id, channel="rep_task",
                           touch="high", context=q.model_dump(mode="json"))
    roster = parse_roster({"reps": [{"id": "rep-1", "slack_user_id": "U123"}]})
    for owner in ("<!channel>", "rep-1"):
        task = build_task(action, q, owner, "trait", roster, datetime(2026, 11, 20, 15, tzinfo=UTC))
        fake = FakeSlack()
        with LocalServer(fake) as server:
            # When the task is posted to Slack
            SlackConnector(server.url + "/services/T000/B000/XXXX", http=http()).deliver(task)
        (message,) = fake.messages
        # Then the only control sequence in any mrkdwn text is the mention of the rostered rep, and every
        # & < > of the data arrives escaped
        for text in _mrkdwn_texts(message):
            rest = text.replace("<@U123>", "")
            assert "<" not in rest and ">" not in rest, text
            assert all(rest[i:].startswith(("&amp;", "&lt;", "&gt;")) for i, ch in enumerate(rest) if ch == "&"), text
        assert "&lt;!channel&gt;" in json.dumps(message)


def test_slack_retries_a_5xx():
    fake = FakeSlack(fail_first=1)
    sleep = SleepLog()
    with LocalServer(fake) as server:
        SlackConnector(server.url + "/services/T000/B000/XXXX", http=http(sleep)).deliver(sample_task())
    assert len(fake.messages) == 1 and sleep.delays == [0.5]


def test_generic_webhook_is_signed_and_carries_the_idempotency_key():
    # Given a receiver that checks the signature like a real consumer would
    secret = "s3cret-s3cret-s3cret"  # noqa: S105
    clock.set_source(lambda: 1_800_000_000.0)

    def answer(req: Seen) -> Reply:
        ok = verify(secret, req.headers[TIMESTAMP_HEADER.lower()], req.body, req.headers[SIGNATURE_HEADER.lower()])
        return (204, b"") if ok else (401, {"error": "bad signature"})

    with LocalServer(answer) as server:
        task = sample_task()
        WebhookConnector(server.url + "/hooks/pql", secret, http=http()).deliver(task)

        # Then it accepted the JSON task with the idempotency key and timestamp
        (req,) = server.seen
        assert req.headers["idempotency-key"] == task.task_id
        assert req.headers[TIMESTAMP_HEADER.lower()] == "1800000000"
        assert req.json()["task"]["task_id"] == task.task_id

        # And a wrong secret is refused by the receiver (and not retried)
        with pytest.raises(DeliveryError) as err:
            WebhookConnector(server.url + "/hooks/pql", "another-secret-value", http=http()).deliver(task)
        assert not err.value.transient


def test_connectors_are_built_from_the_secret_document():
    secret = {
        "hubspot": {"token": TOKEN},
        "slack": {"webhook_url": "https://hooks.slack.com/services/T/B/X"},
        "webhook": {"url": "https://example.test/hook", "secret": "0123456789abcdef"},
    }
    built = build_connectors(parse_names("hubspot, slack ,webhook,slack"), secret)
    assert [c.name for c in built] == ["hubspot", "slack", "webhook"]

    assert built[0].tasks_path == "/crm/v3/objects/tasks"
    dated = build_connectors(["hubspot"], {"hubspot": {"token": TOKEN, "tasks_path": "/crm/objects/2026-03/tasks"}})
    assert dated[0].tasks_path == "/crm/objects/2026-03/tasks"

    with pytest.raises(UsageError, match="unknown connector 'salesforce'"):
        build_connectors(["salesforce"], secret)
    with pytest.raises(UsageError, match="missing object 'slack'"):
        build_connectors(["slack"], {})
    with pytest.raises(UsageError, match=r"field webhook\.secret") as err:
        build_connectors(["webhook"], {"webhook": {"url": "https://x.test", "secret": "short"}})
    assert "short" not in str(err.value)
