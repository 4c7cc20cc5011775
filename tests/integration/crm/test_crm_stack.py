"""CRM sync as template.yaml wires it, in the local runtime (moto): the rule on the bus, CrmSyncQueue and
its redrive, the function's environment and the ConnectorSecret; and `pqlflow crm setup` over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pqlflow.cli import main
from pqlflow.local.emulator import create_extra_resources
from pqlflow.local.runtime import LocalRuntime

from tests.integration.crm.conftest import COMPANY, qualified
from tests.integration.crm.fakes import WEBHOOK_SECRET, FakeHubSpotCrm, WebhookReceiver
from tests.support.http_fakes import TOKEN, LocalServer

TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")
FAST = {"CRM_ATTEMPTS": "1", "CRM_TIMEOUT_SECONDS": "2"}  # one try per delivery: SQS redelivery does the rest


def put_qualified(runtime: LocalRuntime, **kw: str) -> None:
    runtime.put_events([{"Source": "pqlflow", "DetailType": "PQL Qualified", "Detail": json.dumps(qualified(**kw))}])


def crm_items(runtime: LocalRuntime) -> dict[str, dict]:
    table = runtime.table_name("PqlflowTable")
    items = runtime.client("dynamodb").scan(TableName=table)["Items"]
    return {i["sk"]["S"]: i for i in items if i["sk"]["S"].startswith("CRM#")}


@pytest.fixture
def crm() -> Iterator[tuple[FakeHubSpotCrm, WebhookReceiver, str, str]]:
    hubspot = FakeHubSpotCrm(companies={COMPANY: {"name": "Initech"}})
    receiver = WebhookReceiver()
    with LocalServer(hubspot) as hs, LocalServer(receiver) as wh:
        yield hubspot, receiver, hs.url, wh.url


def stack(targets: str) -> LocalRuntime:
    return LocalRuntime(TEMPLATE, parameter_overrides={"LogLevel": "WARNING", "CrmTargets": targets},
                        environment=FAST, record_invocations=True)


def configure(runtime: LocalRuntime, hubspot_url: str, webhook_url: str) -> None:
    create_extra_resources(runtime)
    arn = runtime.wiring.functions["CrmSyncFunction"].environment["CONNECTOR_SECRET_ARN"]
    runtime.client("secretsmanager").put_secret_value(SecretId=arn, SecretString=json.dumps({
        "hubspot": {"token": TOKEN, "base_url": hubspot_url, "companies": {"acct-1": COMPANY}},
        "webhook": {"url": webhook_url, "secret": WEBHOOK_SECRET},
    }))


def test_crm_setup_creates_the_properties_once_and_a_transition_on_the_bus_reaches_the_record(crm, monkeypatch,
                                                                                              capsys):
    hubspot, receiver, hs_url, wh_url = crm
    # Given `pqlflow crm setup` run twice with the token in the environment
    monkeypatch.setenv("PQLFLOW_HUBSPOT_TOKEN", TOKEN)
    assert main(["crm", "setup", "--base-url", hs_url]) == 0
    assert main(["crm", "setup", "--base-url", hs_url]) == 0
    out = capsys.readouterr().out
    # Then the group and each property were created once, and the second run said they were there
    assert list(hubspot.groups) == ["pqlflow"]
    assert len(hubspot.properties) == 10
    assert hubspot.creates == 11  # the group and ten properties, each asked for once over both runs
    assert "10 created, 0 already there" in out and "0 created, 10 already there" in out
    # When the stack with CrmTargets hubspot,webhook sees a PQL Qualified on its bus
    with stack("hubspot,webhook") as runtime:
        configure(runtime, hs_url, wh_url)
        put_qualified(runtime)
        runtime.run_until_idle()
        # Then the company record and the webhook have it, once each
        assert [p["pqlflow_pql_status"] for _, p in hubspot.patches] == ["qualified"]
        assert list(receiver.received) == ["tr-1"]
        statuses = {sk: i["status"]["S"] for sk, i in crm_items(runtime).items() if "status" in i}
        assert statuses == {"CRM#hubspot#tr-1": "written", "CRM#webhook#tr-1": "written"}


def test_a_target_that_stays_down_ends_in_the_alarmed_dead_letter_queue(crm):
    hubspot, receiver, hs_url, wh_url = crm
    # Given HubSpot answers 503 to every PATCH (and has its properties)
    hubspot.script = [(503, {"status": "error"})] * 100
    with stack("hubspot") as runtime:
        configure(runtime, hs_url, wh_url)
        # When a qualification arrives and SQS redelivers it until maxReceiveCount
        put_qualified(runtime)
        runtime.run_until_idle()
        # Then it was tried five times (the queue's maxReceiveCount), then kept in CrmSyncDeadLetterQueue
        tries = [i for i in runtime.invocations if i.function == "CrmSyncFunction"]
        assert len(tries) == 5
        (dead,) = runtime.take_messages("CrmSyncDeadLetterQueue")
        assert dead["Body"]["detail"]["transition_id"] == "tr-1"
        # And its sync record says why, for the operator who redrives it
        record = crm_items(runtime)["CRM#hubspot#tr-1"]
        assert record["status"]["S"] == "failed" and "HTTP 503" in record["reason"]["S"]
        assert hubspot.patches == []


def test_with_no_targets_crm_sync_does_nothing_and_fails_nothing():
    # Given the template's defaults (CrmTargets empty), as `pqlflow dev` and replay run it
    with LocalRuntime(TEMPLATE, parameter_overrides={"LogLevel": "WARNING"}, record_invocations=True) as runtime:
        # When a transition is on the bus
        put_qualified(runtime)
        runtime.run_until_idle()
        # Then crm_sync ran once, without error, and wrote nothing
        (run,) = [i for i in runtime.invocations if i.function == "CrmSyncFunction"]
        assert run.error is None and run.result == {"batchItemFailures": []}
        assert crm_items(runtime) == {}
        assert runtime.take_messages("CrmSyncDeadLetterQueue") == []


def test_crm_setup_reads_the_token_and_base_url_from_the_stacks_secret(crm, aws, monkeypatch, capsys):
    import boto3

    hubspot, _, hs_url, _ = crm
    # Given the token only in the connector secret
    monkeypatch.delenv("PQLFLOW_HUBSPOT_TOKEN", raising=False)
    arn = boto3.client("secretsmanager").create_secret(
        Name="pqlflow-connectors", SecretString=json.dumps({"hubspot": {"token": TOKEN, "base_url": hs_url}})
    )["ARN"]
    # When setup is pointed at the secret / Then it creates the properties with that token
    assert main(["crm", "setup", "--secret-arn", arn]) == 0
    assert len(hubspot.properties) == 10
    # And a secret without hubspot.token is named, not a traceback
    empty = boto3.client("secretsmanager").create_secret(Name="empty", SecretString="{}")["ARN"]
    assert main(["crm", "setup", "--secret-arn", empty]) == 2
    assert "no hubspot.token" in capsys.readouterr().err
