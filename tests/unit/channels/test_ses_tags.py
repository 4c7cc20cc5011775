"""SES message tags: values SES accepts, read back as they were sent."""

from __future__ import annotations

import re

import pytest
from pqlflow.channels.email import tags
from pqlflow.channels.email.ses_events import safe_link

SES_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@pytest.mark.parametrize("value", ["acc_42", "tr:acc/42#v3", "ünïcode ✓", "b64-looks-encoded", "a" * 150, "-", "x y"])
def test_every_value_is_one_ses_accepts_and_decodes_to_itself(value):
    encoded = tags.encode(value)
    assert SES_VALUE.match(encoded)
    assert tags.decode(encoded) == value


def test_plain_ids_stay_readable():
    assert tags.encode("na_acc_fieldstone-1") == "na_acc_fieldstone-1"


def test_a_message_whose_ids_cannot_fit_keeps_only_its_template_tag():
    found = tags.for_message(action_id="a" * 300, transition_id="t", account_id="acc", step=0,
                             template="upgrade_nudge", user_id="u1")
    assert found == {tags.TEMPLATE: "upgrade_nudge"}
    assert tags.read({k: [v] for k, v in found.items()}) is None  # counted, not an engagement


def test_tags_round_trip_through_ses_event_shape():
    sent = tags.for_message(action_id="na:1", transition_id="tr 1", account_id="acc@b2c.example", step=3,
                            template="demo_invite", user_id="u1")
    back = tags.read({k: [v] for k, v in sent.items()} | {"ses:configuration-set": ["cs"]})
    assert back == tags.EngagementTags("na:1", "tr 1", "acc@b2c.example", 3, "demo_invite", "u1")


@pytest.mark.parametrize(
    ("link", "kept"),
    [
        ("https://app.example.com/billing/upgrade?token=abc#x", "https://app.example.com/billing/upgrade"),
        ("HTTPS://user:pw@App.Example.com:8443/a;b?q=1", "https://app.example.com:8443/a;b"),
        ("mailto:someone@example.com", None),
        ("https://exa mple.com:99999/", None),
        (None, None),
    ],
)
def test_a_clicked_link_keeps_scheme_host_and_path_only(link, kept):
    assert safe_link(link) == kept
