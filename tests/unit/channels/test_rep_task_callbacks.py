"""Reading the connectors' callbacks: what each signature covers, and which bodies close a task."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from pqlflow.channels.rep_tasks import callbacks
from pqlflow.channels.rep_tasks.callbacks import BadCallback, Unverified

NOW = 1_800_000_000.0


def test_hubspot_signs_the_uri_with_the_characters_it_decodes():
    # HubSpot decodes %3A, %2F, %3F, %40, ... in the URI before signing: a receiver must do the same
    encoded = "https://api.example.test/rep-tasks/hubspot?portal%3D1%3Aa%40b"
    decoded = "https://api.example.test/rep-tasks/hubspot?portal%3D1:a@b"
    body, ts = b"[]", str(int(NOW * 1000))
    assert callbacks.hubspot_signature("s", "POST", encoded, body, ts) == callbacks.hubspot_signature(
        "s", "post", decoded, body, ts)
    signature = callbacks.hubspot_signature("s", "POST", decoded, body, ts)
    headers = {"x-hubspot-request-timestamp": ts, "x-hubspot-signature-v3": signature}
    callbacks.verify_hubspot("s", headers, "POST", encoded, body, NOW)  # header names in any case
    with pytest.raises(Unverified, match="bad signature"):
        callbacks.verify_hubspot("s", headers, "POST", encoded, body + b" ", NOW)
    with pytest.raises(Unverified, match="stale"):
        callbacks.verify_hubspot("s", headers, "POST", encoded, body, NOW + 301)


def test_a_timestamp_that_is_not_a_number_is_refused_with_its_reason():
    with pytest.raises(Unverified, match="not a number"):
        callbacks.verify_slack("s", {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=0"}, b"", NOW)


def test_only_completions_of_hs_task_status_close_tasks():
    events = [
        {"subscriptionType": "object.propertyChange", "objectId": 11, "propertyName": "hs_task_status",
         "propertyValue": "COMPLETED", "occurredAt": int(NOW * 1000)},
        {"subscriptionType": "object.propertyChange", "objectId": 12, "propertyName": "hs_task_status",
         "propertyValue": "WAITING"},
        {"subscriptionType": "object.propertyChange", "objectId": 13, "propertyName": "hs_task_priority",
         "propertyValue": "COMPLETED"},
        {"subscriptionType": "object.creation", "objectId": 14},
    ]
    (closure,) = callbacks.read_hubspot(json.dumps(events).encode())
    assert (closure.hubspot_id, closure.via, closure.outcome) == ("11", "hubspot", "completed")
    assert closure.occurred_at == NOW


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"{not json", "not JSON"),
        (b'{"objectId": 1}', "not a JSON array"),
        (json.dumps([{"subscriptionType": "object.propertyChange", "propertyName": "hs_task_status",
                      "propertyValue": "COMPLETED", "objectId": "../1"}]).encode(), "event 0: field objectId"),
    ],
)
def test_a_hubspot_body_pqlflow_cannot_read_names_what_is_wrong(body, names):
    with pytest.raises(BadCallback, match=names):
        callbacks.read_hubspot(body)


def test_a_webhook_body_names_its_bad_field():
    with pytest.raises(BadCallback, match="task_id"):
        callbacks.read_webhook(b'{"task_id": "someone@example.com"}')
    closure = callbacks.read_webhook(b'{"task_id": "rt_' + b"a" * 24 + b'", "closed_at": 1800000000}')
    assert (closure.outcome, closure.occurred_at) == ("completed", NOW)


def test_slack_interactions_other_than_mark_done_close_nothing():
    def form(payload):
        return urlencode({"payload": json.dumps(payload)}).encode()

    assert callbacks.read_slack(form({"type": "view_submission"})) is None
    other = {"type": "block_actions", "actions": [{"action_id": "other", "value": "x"}]}
    assert callbacks.read_slack(form(other)) is None
    with pytest.raises(BadCallback, match="payload"):
        callbacks.read_slack(b"token=abc")
