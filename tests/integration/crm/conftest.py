"""CRM sync against local HTTP servers speaking HubSpot's CRM v3 shapes and a verifying webhook receiver,
with the sync records on moto."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pqlflow.channels.crm.hubspot import HubSpotCompanies, setup
from pqlflow.channels.crm.service import CrmSync
from pqlflow.channels.crm.store import CrmSyncStore
from pqlflow.channels.crm.webhook import CrmWebhook
from pqlflow.channels.rep_tasks import service as rep_task_service
from pqlflow.channels.rep_tasks.http import Backoff, Http
from pqlflow.contracts.emitted import AccountConverted, DefinitionRef, PqlDisqualified, PqlQualified, Reason
from pqlflow.kernel import clock

from tests.integration.crm.fakes import WEBHOOK_SECRET, FakeHubSpotCrm, WebhookReceiver
from tests.support.http_fakes import TOKEN, LocalServer, SleepLog

NOW = 1_795_791_600.0  # 2026-11-27 15:00 UTC
COMPANY = "9001"


def qualified(account: str = "acct-1", at: str = "2026-11-27T14:00:00Z", tid: str = "tr-1") -> dict[str, Any]:
    return PqlQualified(
        transition_id=tid, account_id=account, definition=DefinitionRef(name="slack-messages", version=3),
        qualified_at=at, touch="high", score=72,
        reasons=[
            Reason(code="usage.signins", text="9 sign-ins in the last 30 days", kind="usage", signal="signins",
                   value=9, threshold=5),
            Reason(code="limit.messages", text="2,000 messages: the free plan's limit", kind="limit",
                   signal="messages", value=2000, threshold=2000, talking_point="offer the Pro trial"),
        ],
        account_traits={"name": "Initech"},
    ).model_dump(mode="json")


def disqualified(account: str = "acct-1", at: str = "2026-11-27T14:30:00Z", tid: str = "tr-2") -> dict[str, Any]:
    return PqlDisqualified(
        transition_id=tid, account_id=account, definition=DefinitionRef(name="slack-messages", version=3),
        disqualified_at=at,
        reasons=[Reason(code="usage.signins", text="no sign-in for 30 days", kind="usage")],
    ).model_dump(mode="json")


def converted(account: str = "acct-1", at: str = "2026-11-27T14:45:00Z") -> dict[str, Any]:
    return AccountConverted(
        account_id=account, converted_at=at, qualified_at="2026-11-27T14:00:00Z",
        definition=DefinitionRef(name="slack-messages", version=3),
    ).model_dump(mode="json")


def bus_event(detail: dict[str, Any], detail_type: str = "PQL Qualified") -> dict[str, Any]:
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "pqlflow",
            "account": "123456789012", "time": "2026-11-27T15:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail}


def sqs_batch(*events: dict[str, Any]) -> dict[str, Any]:
    return {"Records": [
        {"messageId": f"m{i}", "receiptHandle": f"r{i}", "body": e if isinstance(e, str) else json.dumps(e),
         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:crm", "awsRegion": "us-east-1"}
        for i, e in enumerate(events)
    ]}


def http(sleep: SleepLog | None = None, attempts: int = 3, timeout: float = 2) -> Http:
    return Http(timeout=timeout, backoff=Backoff(attempts=attempts, sleep=sleep or SleepLog(), rand=lambda: 1.0))


@pytest.fixture(autouse=True)
def _fresh_secret_cache() -> Iterator[None]:
    clock.set_source(lambda: NOW)
    rep_task_service._secrets.clear()  # each test's fakes listen on their own ports
    yield
    rep_task_service._secrets.clear()


@pytest.fixture
def hubspot() -> Iterator[tuple[FakeHubSpotCrm, LocalServer]]:
    fake = FakeHubSpotCrm(companies={COMPANY: {"name": "Initech", "domain": "initech.test"}})
    with LocalServer(fake) as server:
        setup(HubSpotCompanies(TOKEN, server.url, http=http()))  # the properties exist, as after `crm setup`
        yield fake, server


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, LocalServer]]:
    fake = WebhookReceiver()
    with LocalServer(fake) as server:
        yield fake, server


@pytest.fixture
def sleeps() -> SleepLog:
    return SleepLog()


@pytest.fixture
def sync(table_name: str, hubspot, receiver, sleeps: SleepLog) -> CrmSync:
    _, hs = hubspot
    _, wh = receiver
    client = http(sleeps)
    return CrmSync(
        CrmSyncStore(table_name),
        [HubSpotCompanies(TOKEN, hs.url, companies={"acct-1": COMPANY}, http=client),
         CrmWebhook(f"{wh.url}/pqlflow", WEBHOOK_SECRET, client)],
        "https://pql.example.com/explain?account={account_id}&transition={transition_id}",
    )
