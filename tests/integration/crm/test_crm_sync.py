"""The crm_sync handler on moto, writing to a local HubSpot CRM v3 fake and a verifying webhook receiver:
what lands on the company record, once per transition under redelivery, never an older status over a
newer one, and HubSpot's 429/Retry-After, 5xx and timeouts honoured."""

from __future__ import annotations

import pytest
from pqlflow.channels.crm.hubspot import HubSpotCompanies
from pqlflow.channels.crm.service import CrmSync
from pqlflow.channels.crm.store import CrmSyncStore
from pqlflow.channels.crm.webhook import CrmWebhook

import functions.crm_sync.app as app
from tests.integration.crm.conftest import (
    COMPANY,
    bus_event,
    converted,
    disqualified,
    http,
    qualified,
    sqs_batch,
)
from tests.integration.crm.fakes import WEBHOOK_SECRET
from tests.support.http_fakes import TOKEN
from tests.support.lambda_context import LambdaContext

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")


def handle(sync: CrmSync, *events) -> dict:
    return app.handler(sqs_batch(*events), LambdaContext(), sync=sync)


def test_a_qualification_is_written_onto_the_company_in_words(sync, hubspot, receiver):
    fake, _ = hubspot
    webhook, _ = receiver
    # When a PQL Qualified event arrives
    result = handle(sync, bus_event(qualified()))
    # Then nothing failed, and the mapped company carries the PQL in the properties `crm setup` made
    assert result == {"batchItemFailures": []}
    ((company_id, props),) = fake.patches
    assert company_id == COMPANY
    assert props["pqlflow_pql_status"] == "qualified"
    assert props["pqlflow_pql_score"] == "72"
    assert props["pqlflow_definition"] == "slack-messages"
    assert props["pqlflow_definition_version"] == "3"
    assert props["pqlflow_touch_level"] == "high"
    assert props["pqlflow_qualified_at"] == "1795788000000"  # 2026-11-27T14:00:00Z in epoch ms
    # And the top reasons are words a rep reads, the limit first, with the author's talking point
    assert props["pqlflow_pql_reasons"].splitlines() == [
        "2,000 messages: the free plan's limit (say: offer the Pro trial)",
        "9 sign-ins in the last 30 days",
    ]
    # And the record links to the explanation
    assert props["pqlflow_explanation_url"] == "https://pql.example.com/explain?account=acct-1&transition=tr-1"
    # And the webhook receiver verified the signature and got the same record under the transition's key
    assert webhook.rejected == []
    record = webhook.received["tr-1"]["record"]
    assert (record["status"], record["score"], record["touch"]) == ("qualified", 72, "high")


def test_a_redelivered_event_writes_once_per_target(sync, hubspot, receiver):
    fake, _ = hubspot
    webhook, _ = receiver
    event = bus_event(qualified())
    # When the same event arrives three times (SQS redelivery, and twice in one batch)
    handle(sync, event)
    handle(sync, event, event)
    # Then HubSpot got one PATCH and the receiver one delivery
    assert len(fake.patches) == 1
    assert webhook.deliveries == 1


def test_an_older_transition_arriving_after_a_newer_one_does_not_overwrite_it(sync, hubspot, receiver, table_name):
    fake, _ = hubspot
    webhook, _ = receiver
    # Given the account was disqualified at 14:30 and that is on the record
    handle(sync, bus_event(disqualified(at="2026-11-27T14:30:00Z"), "PQL Disqualified"))
    # When its qualification of 14:00 arrives late
    handle(sync, bus_event(qualified(at="2026-11-27T14:00:00Z")))
    # Then the record still says disqualified, and the late one is recorded as superseded for both targets
    assert fake.companies[COMPANY]["pqlflow_pql_status"] == "disqualified"
    assert [p["pqlflow_pql_status"] for _, p in fake.patches] == ["disqualified"]
    assert list(webhook.received) == ["tr-2"]
    store = CrmSyncStore(table_name)
    late = store.get("acct-1", "hubspot", "tr-1")
    assert late is not None and late.status == "superseded" and "tr-2" in (late.reason or "")
    # And a conversion after both is written
    handle(sync, bus_event(converted(at="2026-11-27T14:45:00Z"), "Account Converted"))
    assert fake.companies[COMPANY]["pqlflow_pql_status"] == "converted"


def test_hubspot_429_waits_the_retry_after_it_asks_for(sync, hubspot, sleeps):
    fake, _ = hubspot
    # Given HubSpot rate-limits the first PATCH and asks for 2 seconds
    fake.script = [(429, {"status": "error", "category": "RATE_LIMITS"}, {"Retry-After": "2"})]
    # When the event is synced
    assert handle(sync, bus_event(qualified())) == {"batchItemFailures": []}
    # Then the sync waited 2 s, then wrote once
    assert 2.0 in sleeps.delays
    assert len(fake.patches) == 1


def test_hubspot_5xx_is_retried_with_backoff_and_written_once(sync, hubspot, sleeps):
    fake, _ = hubspot
    fake.script = [(502, {"status": "error"}), (503, {"status": "error"})]
    assert handle(sync, bus_event(qualified())) == {"batchItemFailures": []}
    # Then two backoff waits (full jitter at its maximum here: 0.5 s then 1 s), then one write
    assert sleeps.delays[-2:] == [0.5, 1.0]
    assert len(fake.patches) == 1


def test_a_timeout_is_retried(table_name, hubspot, sleeps):
    fake, server = hubspot
    # Given HubSpot answers the first PATCH later than the client waits
    fake.slow, fake.delay = 1, 0.6
    sync = CrmSync(CrmSyncStore(table_name),
                   [HubSpotCompanies(TOKEN, server.url, companies={"acct-1": COMPANY}, http=http(sleeps, timeout=0.3))])
    # When synced / Then the retry wrote it (PATCH is idempotent: the same values twice are one state)
    assert handle(sync, bus_event(qualified())) == {"batchItemFailures": []}
    assert fake.companies[COMPANY]["pqlflow_pql_status"] == "qualified"
    assert len(sleeps.delays) == 1


def test_a_failure_leaves_the_message_for_redelivery_and_the_rest_of_the_batch_goes_through(
    sync, hubspot, receiver, table_name
):
    fake, _ = hubspot
    webhook, _ = receiver
    # Given HubSpot keeps failing for the first event's PATCHes, and a second, good event in the batch
    fake.script = [(503, {"status": "error"})] * 3
    first, second = bus_event(qualified(tid="tr-1")), bus_event(converted(account="acct-1", at="2026-11-27T16:00:00Z"),
                                                                "Account Converted")
    # When the batch is handled
    result = handle(sync, first, second)
    # Then only the failed one is reported for redelivery, with the failure kept on its sync record
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    failed = CrmSyncStore(table_name).get("acct-1", "hubspot", "tr-1")
    assert failed is not None and failed.status == "failed" and "HTTP 503" in (failed.reason or "")
    # And the webhook, which worked, is not sent again when the failed message comes back
    assert webhook.deliveries == 2
    handle(sync, first)
    assert webhook.deliveries == 2
    # And the redelivered qualification is now older than the conversion: recorded superseded, not written
    assert fake.companies[COMPANY]["pqlflow_pql_status"] == "converted"
    assert CrmSyncStore(table_name).get("acct-1", "hubspot", "tr-1").status == "superseded"


def test_a_redelivery_after_a_failure_writes_it(sync, hubspot):
    fake, _ = hubspot
    fake.script = [(503, {"status": "error"})] * 3
    event = bus_event(qualified())
    assert handle(sync, event) == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    # When SQS redelivers it and HubSpot is back / Then it is written, once
    assert handle(sync, event) == {"batchItemFailures": []}
    assert len(fake.patches) == 1


def test_an_account_with_no_mapped_company_is_skipped_with_the_reason_not_retried(sync, hubspot, table_name):
    fake, _ = hubspot
    # When an account no mapping names qualifies
    result = handle(sync, bus_event(qualified(account="acct-unknown")))
    # Then the message is done (not redelivered forever), nothing is written, and the reason is kept
    assert result == {"batchItemFailures": []}
    assert fake.patches == []
    skipped = CrmSyncStore(table_name).get("acct-unknown", "hubspot", "tr-1")
    assert skipped is not None and skipped.status == "skipped" and "no HubSpot company" in (skipped.reason or "")


def test_the_company_is_found_by_the_operators_domain_map_or_account_property(table_name, hubspot):
    fake, server = hubspot
    fake.companies["9002"] = {"name": "Globex", "domain": "globex.test"}
    fake.companies["9003"] = {"name": "Hooli", "pqlflow_account_id": "acct-3"}
    target = HubSpotCompanies(TOKEN, server.url, company_property="pqlflow_account_id",
                              domains={"acct-2": "Globex.test"}, http=http())
    sync = CrmSync(CrmSyncStore(table_name), [target])
    handle(sync, bus_event(qualified(account="acct-2")), bus_event(qualified(account="acct-3", tid="tr-3")))
    assert sorted(cid for cid, _ in fake.patches) == ["9002", "9003"]


def test_a_bad_event_is_reported_alone_and_named(sync, hubspot, caplog):
    fake, _ = hubspot
    bad = bus_event({"account_id": "acct-1"})  # a PQL Qualified with no transition_id
    result = handle(sync, "not json", bad, bus_event(qualified()))
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}
    assert len(fake.patches) == 1


def test_a_tampered_or_replayed_webhook_is_refused_by_the_documented_check(receiver, table_name):
    webhook, server = receiver
    # Given a sender with the wrong secret
    sync = CrmSync(CrmSyncStore(table_name), [CrmWebhook(server.url, "wrong-secret-0123456789", http(attempts=1))])
    # When it sends / Then the receiver refuses it and the message stays for retry
    assert handle(sync, bus_event(qualified())) == {"batchItemFailures": [{"itemIdentifier": "m0"}]}
    assert webhook.received == {} and "does not match" in webhook.rejected[0]
    assert WEBHOOK_SECRET != "wrong-secret-0123456789"


def test_two_transitions_handled_at_once_leave_the_newer_on_the_record_whichever_write_lands_last(
    table_name, hubspot, sleeps
):
    fake, server = hubspot
    companies = HubSpotCompanies(TOKEN, server.url, companies={"acct-1": COMPANY}, http=http(sleeps))
    newer_sync = CrmSync(CrmSyncStore(table_name), [companies])

    class Slow:
        """The older transition's write, held up until the newer one (another invocation) has been handled."""
        name = "hubspot"

        def __init__(self) -> None:
            self.held = True

        def write(self, record, explanation_url):
            if self.held:
                self.held = False
                handle(newer_sync, bus_event(disqualified(at="2026-11-27T14:30:00Z"), "PQL Disqualified"))
            return companies.write(record, explanation_url)

    # Given the qualification of 14:00 claimed the record and, before its write landed, the disqualification
    # of 14:30 was claimed and written by another invocation
    older_sync = CrmSync(CrmSyncStore(table_name), [Slow()])
    handle(older_sync, bus_event(qualified(at="2026-11-27T14:00:00Z")))
    # Then the older write landed last, and the newer status was written after it: the record says disqualified
    assert [p["pqlflow_pql_status"] for _, p in fake.patches] == ["disqualified", "qualified", "disqualified"]
    assert fake.companies[COMPANY]["pqlflow_pql_status"] == "disqualified"
