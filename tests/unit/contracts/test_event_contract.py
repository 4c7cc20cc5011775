"""The usage-event contract: schemas match the models, samples validate, page/screen become tracked events."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pqlflow.contracts.usage_events import PAGE_EVENT, Rejection, UsageEvent, json_schemas, parse_body, parse_message

from tests.support.events import load_event

ROOT = Path(__file__).resolve().parents[3]


def test_committed_schemas_are_the_ones_the_models_generate():
    for name, schema in json_schemas().items():
        committed = json.loads((ROOT / "events" / "schemas" / f"{name}.schema.json").read_text())
        assert committed == json.loads(json.dumps(schema)), f"events/schemas/{name} is stale: run make schemas"


@pytest.mark.parametrize("name", ["track", "identify", "group", "track-b2b", "page"])
def test_every_sample_validates_against_the_schema_and_the_parser(name):
    schemas = json_schemas()
    message = load_event(f"segment/{name}.json")
    envelope = load_event(f"eventbridge/{name}.json")
    jsonschema.validate(message, schemas["segment-message"])
    jsonschema.validate(envelope, schemas["eventbridge-event"])
    ts = json.loads(json.dumps(message))["timestamp"]
    from datetime import datetime

    now = datetime.fromisoformat(ts).timestamp() + 60
    assert isinstance(parse_body(json.dumps(envelope), now), UsageEvent)
    sqs = load_event(f"sqs/{name}.json")
    assert json.loads(sqs["Records"][0]["body"]) == envelope


def test_a_page_call_is_the_tracked_event_page_viewed_with_its_name_in_the_properties():
    message = load_event("segment/page.json")
    from datetime import datetime

    event = parse_message(message, datetime.fromisoformat(message["timestamp"]).timestamp())
    assert isinstance(event, UsageEvent)
    assert event.kind == "track" and event.name == PAGE_EVENT
    assert event.properties["name"] == "Pricing" and event.properties["path"] == "/pricing"
    assert event.account_id == "acct_initech"


def test_an_event_without_an_account_belongs_to_the_user_alone():
    message = load_event("segment/track.json")
    from datetime import datetime

    event = parse_message(message, datetime.fromisoformat(message["timestamp"]).timestamp())
    assert isinstance(event, UsageEvent) and event.account_id == "user:AiUGstSDIg"


def test_detail_type_must_match_the_message_type():
    envelope = load_event("eventbridge/track-b2b.json")
    envelope["detail-type"] = "identify"
    from datetime import datetime

    result = parse_body(json.dumps(envelope), datetime.fromisoformat(envelope["detail"]["timestamp"]).timestamp())
    assert isinstance(result, Rejection) and result.field == "detail-type"
