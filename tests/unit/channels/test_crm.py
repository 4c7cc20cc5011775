"""CRM sync's pure parts: the record a transition becomes, the webhook signature a receiver checks, and the
configuration errors an operator sees."""

from __future__ import annotations

import pytest
from pqlflow.channels.crm.record import (
    CrmEventInvalid,
    company_properties,
    explanation_link,
    from_event,
)
from pqlflow.channels.crm.service import CrmSyncSettings, build_targets
from pqlflow.channels.crm.webhook import SignatureError, signature, verify
from pqlflow.channels.rep_tasks.http import Http
from pqlflow.cli import main
from pqlflow.kernel.errors import UsageError
from pydantic import ValidationError

from tests.integration.crm.conftest import converted, disqualified, qualified

SECRET = "whsec_unit_0123456789abcdef"  # noqa: S105 - a test value
BODY = b'{"type":"pqlflow.crm.sync"}'


def test_a_newer_transition_always_orders_after_an_older_one_whatever_its_kind():
    q = from_event("PQL Qualified", qualified(at="2026-11-27T14:00:00Z"))
    d = from_event("PQL Disqualified", disqualified(at="2026-11-27T14:00:01Z"))
    c = from_event("Account Converted", converted(at="2026-11-27T14:00:01Z"))
    assert q.sequence < d.sequence < c.sequence
    # And a conversion, which carries no transition id, gets the same one each time it arrives
    assert from_event("Account Converted", converted(at="2026-11-27T14:00:01Z")).transition_id == c.transition_id
    assert from_event("Account Converted", converted(at="2026-11-27T15:00:00Z")).transition_id != c.transition_id


def test_a_disqualification_leaves_the_score_and_qualified_at_on_the_record_and_says_why():
    props = company_properties(from_event("PQL Disqualified", disqualified()), None)
    assert props["pqlflow_pql_status"] == "disqualified"
    assert props["pqlflow_pql_reasons"] == "no sign-in for 30 days"
    assert "pqlflow_pql_score" not in props and "pqlflow_qualified_at" not in props
    assert "pqlflow_explanation_url" not in props


@pytest.mark.parametrize(("detail_type", "detail", "named"), [
    ("PQL Qualified", {"account_id": "a"}, "transition_id"),
    ("PQL Disqualified", disqualified() | {"disqualified_at": "yesterday"}, "time field"),
    ("Nurture Action", {}, "'Nurture Action'"),
])
def test_an_event_crm_sync_cannot_read_is_refused_naming_the_field(detail_type, detail, named):
    with pytest.raises(CrmEventInvalid, match=named):
        from_event(detail_type, detail)


def test_the_explanation_link_quotes_the_ids_and_is_never_template_code():
    record = from_event("PQL Qualified", qualified(account="a/b?c", tid="t {x}"))
    link = explanation_link("https://x.test/e/{account_id}?t={transition_id}&{{7*7}}", record)
    assert link == "https://x.test/e/a%2Fb%3Fc?t=t%20%7Bx%7D&{{7*7}}"


def test_a_signed_body_verifies_and_returns_its_timestamp():
    header = signature(SECRET, 1_800_000_000, BODY)
    assert header.startswith("t=1800000000,v1=")
    assert verify(SECRET, header, BODY, now=1_800_000_100) == 1_800_000_000


@pytest.mark.parametrize(("header", "body", "now", "says"), [
    (None, BODY, 1_800_000_000, "missing"),
    ("v1=abc", BODY, 1_800_000_000, "no integer t="),
    ("t=1800000000", BODY, 1_800_000_000, "no v1="),
    (signature(SECRET, 1_800_000_000, BODY), BODY + b" ", 1_800_000_000, "does not match"),
    (signature("another-secret-0123456789", 1_800_000_000, BODY), BODY, 1_800_000_000, "does not match"),
    (signature(SECRET, 1_800_000_000, BODY), BODY, 1_800_000_301, "tolerance"),
])
def test_a_tampered_stale_or_malformed_signature_is_refused_saying_why(header, body, now, says):
    with pytest.raises(SignatureError, match=says):
        verify(SECRET, header, body, now=now)


def test_a_receiver_rotating_its_secret_accepts_either_signature():
    old, new = signature("old-secret-0123456789", 1_800_000_000, BODY), signature(SECRET, 1_800_000_000, BODY)
    both = f"{new},v1={old.rpartition('v1=')[2]}"
    assert verify("old-secret-0123456789", both, BODY, now=1_800_000_000) == 1_800_000_000


def test_unknown_targets_and_a_missing_secret_are_named_at_cold_start():
    with pytest.raises(ValidationError, match="unknown target 'salesforce'"):
        CrmSyncSettings(TABLE_NAME="t", CRM_TARGETS="hubspot,salesforce", CONNECTOR_SECRET_ARN="arn")
    with pytest.raises(ValidationError, match="CONNECTOR_SECRET_ARN is required"):
        CrmSyncSettings(TABLE_NAME="t", CRM_TARGETS="webhook")
    assert CrmSyncSettings(TABLE_NAME="t").CRM_TARGETS == ""


def test_a_bad_secret_names_the_field_never_the_value():
    with pytest.raises(UsageError, match=r"field hubspot\.token") as exc:
        build_targets(["hubspot"], {"hubspot": {"token": ""}}, Http())
    with pytest.raises(UsageError, match=r"field crm\.explanation_url") as exc:
        build_targets(["webhook"], {"crm": {"explanation_url": "http://leak.test/secret-path"}}, Http())
    assert "secret-path" not in str(exc.value)
    with pytest.raises(UsageError, match="missing object 'webhook'"):
        build_targets(["webhook"], {}, Http())


def test_crm_setup_without_a_token_says_where_to_put_one(monkeypatch, capsys):
    monkeypatch.delenv("PQLFLOW_HUBSPOT_TOKEN", raising=False)
    monkeypatch.delenv("CONNECTOR_SECRET_ARN", raising=False)
    assert main(["crm", "setup"]) == 2
    assert "set $PQLFLOW_HUBSPOT_TOKEN or give --secret-arn" in capsys.readouterr().err
