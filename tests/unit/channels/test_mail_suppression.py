"""Which SES events suppress an address, and how an address is keyed (never stored in clear)."""

from __future__ import annotations

from pqlflow.nurture.suppression import Suppression, address_hash, from_ses_event

NOW = 1_800_000_000.0


def bounce(kind: str, *addresses: str) -> dict:
    return {
        "eventType": "Bounce",
        "mail": {"messageId": "m-1", "tags": {"pqlflow_template": ["upgrade_nudge"]}},
        "bounce": {
            "bounceType": kind,
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": a, "status": "5.1.1"} for a in addresses],
        },
    }


def complaint(feedback: str | None, *addresses: str) -> dict:
    return {
        "eventType": "Complaint",
        "complaint": {
            "complaintFeedbackType": feedback,
            "complainedRecipients": [{"emailAddress": a} for a in addresses],
        },
    }


def test_an_address_is_keyed_by_the_hash_of_its_normal_form():
    assert address_hash(" Ana@Example.COM ") == address_hash("ana@example.com")
    assert len(address_hash("ana@example.com")) == 64


def test_a_permanent_bounce_suppresses_each_bounced_recipient_once():
    found = from_ses_event(bounce("Permanent", "a@example.com", "A@example.com", "b@example.com"), now=NOW)
    assert [s.address_hash for s in found] == [address_hash("a@example.com"), address_hash("b@example.com")]
    assert {s.reason for s in found} == {"bounced"}
    assert found[0].source == "ses:bounce:Permanent/General"


def test_a_transient_bounce_suppresses_nothing():
    assert from_ses_event(bounce("Transient", "a@example.com"), now=NOW) == []
    assert from_ses_event(bounce("Undetermined", "a@example.com"), now=NOW) == []


def test_a_complaint_suppresses_unless_marked_not_spam():
    assert [s.reason for s in from_ses_event(complaint("abuse", "a@example.com"), now=NOW)] == ["complained"]
    assert [s.reason for s in from_ses_event(complaint(None, "a@example.com"), now=NOW)] == ["complained"]
    assert from_ses_event(complaint("not-spam", "a@example.com"), now=NOW) == []


def test_deliveries_and_opens_suppress_nothing():
    assert from_ses_event({"eventType": "Delivery"}, now=NOW) == []
    assert from_ses_event({"eventType": "Open"}, now=NOW) == []


def test_the_stored_item_has_no_address_in_it():
    item = Suppression(
        address_hash("ana@example.com"), "unsubscribed", "unsubscribe:one-click", NOW, "acc_1"
    ).item()
    assert item["pk"] == f"SUP#{address_hash('ana@example.com')}" and item["sk"] == "EMAIL"
    assert item["kind"] == "suppression" and item["reason"] == "unsubscribed"
    assert "ana" not in str(item)
