"""EmailSender.deliver with in-memory fakes: at most one email per action, never to a suppressed address."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pqlflow.channels.email.brand import load_brand
from pqlflow.channels.email.errors import MailError, SendRejected
from pqlflow.channels.email.render import EmailTemplates
from pqlflow.channels.email.sender import EmailSender
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.nurture import suppression

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = ROOT / "templates"


class FakeLedger:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def claim(self, account_id, action_id, attributes):
        if (account_id, action_id) in self.items:
            return False
        self.items[(account_id, action_id)] = {"status": "sending", **attributes}
        return True

    def finish(self, account_id, action_id, status, attributes):
        self.items[(account_id, action_id)].update(status=status, **attributes)

    def release(self, account_id, action_id):
        if self.items.get((account_id, action_id), {}).get("status") == "sending":
            del self.items[(account_id, action_id)]


class FakeSuppressions:
    def __init__(self, *addresses: str) -> None:
        self.hashes = {suppression.address_hash(a) for a in addresses}

    def is_suppressed(self, hashed):
        return hashed in self.hashes


class FakeOutbox:
    def __init__(self, fail_with: list[Exception] | None = None) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.tags: list[dict[str, str]] = []
        self.fail_with = list(fail_with or [])

    def send(self, raw, *, to, tags):
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append((to, raw))
        self.tags.append(dict(tags))
        return f"msg-{len(self.sent)}"


@cache
def shipped():
    return EmailTemplates(TEMPLATES), load_brand(TEMPLATES)


def sender(ledger=None, suppressions=None, outbox=None) -> EmailSender:
    templates, brand = shipped()
    return EmailSender(
        templates=templates,
        brand=brand,
        sender="Northwind <hello@mail.example.com>",
        unsubscribe_url="https://api.example.com/unsubscribe",
        signing_key=b"s" * 40,
        ledger=ledger or FakeLedger(),
        suppressions=suppressions or FakeSuppressions(),
        outbox=outbox or FakeOutbox(),
    )


def action(name: str = "crm_contacts_80pct", **update: Any) -> NurtureAction:
    data = json.loads((ROOT / "examples" / "email-contexts" / f"{name}.json").read_text())
    return NurtureAction.model_validate(data).model_copy(update=update)


def test_a_redelivered_action_sends_one_email():
    # Given a sender
    outbox, ledger = FakeOutbox(), FakeLedger()
    s = sender(ledger=ledger, outbox=outbox)
    # When the same action arrives three times
    outcomes = [s.deliver(action()).outcome for _ in range(3)]
    # Then one email went out and the marker says so
    assert outcomes == ["sent", "duplicate", "duplicate"]
    assert len(outbox.sent) == 1
    marker = ledger.items[("acc_fieldstone", action().action_id)]
    assert marker["status"] == "sent" and marker["message_id"] == "msg-1"
    assert "priya@" not in json.dumps(marker)  # the marker keeps the address hash only


def test_a_different_action_for_the_same_person_is_a_new_email():
    outbox = FakeOutbox()
    s = sender(outbox=outbox)
    s.deliver(action())
    s.deliver(action(action_id="another-action"))
    assert len(outbox.sent) == 2


def test_a_suppressed_address_gets_no_email():
    # Given Priya unsubscribed (in another case)
    outbox, ledger = FakeOutbox(), FakeLedger()
    s = sender(ledger=ledger, outbox=outbox, suppressions=FakeSuppressions("  PRIYA@fieldstone.example "))
    # When her nudge is delivered
    delivery = s.deliver(action())
    # Then nothing is sent, and a redelivery does not send either
    assert delivery.outcome == "suppressed"
    assert outbox.sent == []
    assert s.deliver(action()).outcome == "duplicate"
    assert ledger.items[("acc_fieldstone", action().action_id)]["status"] == "suppressed"


def test_when_ses_refuses_the_claim_is_released_and_the_retry_sends():
    # Given SES throttles the first attempt
    outbox = FakeOutbox(fail_with=[SendRejected("Throttling")])
    s = sender(outbox=outbox)
    # When the trigger delivers, fails, and retries
    with pytest.raises(SendRejected):
        s.deliver(action())
    delivery = s.deliver(action())
    # Then the retry sends the one email
    assert delivery.outcome == "sent"
    assert len(outbox.sent) == 1


def test_when_the_send_has_no_answer_the_retry_does_not_send_again():
    # Given the SES call times out: the email may or may not have gone
    outbox, ledger = FakeOutbox(fail_with=[TimeoutError("read timeout")]), FakeLedger()
    s = sender(ledger=ledger, outbox=outbox)
    with pytest.raises(TimeoutError):
        s.deliver(action())
    # When the trigger retries
    delivery = s.deliver(action())
    # Then it is not sent a second time (at most once), and the marker records the doubt
    assert delivery.outcome == "duplicate"
    assert outbox.sent == []
    assert ledger.items[("acc_fieldstone", action().action_id)]["status"] == "unknown"


def test_a_template_error_claims_nothing_so_a_fixed_template_still_sends():
    ledger, outbox = FakeLedger(), FakeOutbox()
    s = sender(ledger=ledger, outbox=outbox)
    with pytest.raises(MailError):
        s.deliver(action(template="no_such_template"))
    assert ledger.items == {}
    assert s.deliver(action()).outcome == "sent"


def test_an_action_without_a_reachable_recipient_is_skipped():
    outbox, ledger = FakeOutbox(), FakeLedger()
    s = sender(ledger=ledger, outbox=outbox)
    assert s.deliver(action(recipient_user_id="u_nobody")).outcome == "no_recipient"
    assert outbox.sent == [] and ledger.items == {}


@pytest.mark.parametrize("update", [{"channel": "offer"}, {"outcome": "deferred"}, {"outcome": "holdout"}])
def test_only_email_actions_to_send_are_sent(update):
    outbox = FakeOutbox()
    assert sender(outbox=outbox).deliver(action(**update)).outcome == "ignored"
    assert outbox.sent == []


def test_a_deferred_action_coming_back_as_send_is_sent():
    # Given the route deferred an email for quiet hours and the schedule re-emits it as `send`
    outbox = FakeOutbox()
    again = action(outcome="send", send_after="2026-11-23T14:00:00+00:00")
    # When it arrives, Then it is sent
    assert sender(outbox=outbox).deliver(again).outcome == "sent"
    assert outbox.sent[0][0] == "priya@fieldstone.example"
