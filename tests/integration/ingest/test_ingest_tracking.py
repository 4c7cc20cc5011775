"""Ingest keeps what the definition in force needs: publishing a definition with a gauge starts keeping it."""

from __future__ import annotations

import boto3
import pytest
from pqlflow.ingest.store import read_usage
from pqlflow.kernel import clock
from pqlflow.kernel.settings import IngestSettings
from pqlflow.qualify import tracking
from pqlflow.qualify.store import DefinitionStore

from functions.ingest import app
from tests.support.events import sqs_event, track
from tests.support.lambda_context import LambdaContext

NOW_MS = 1_795_341_600_000
CRM = """
name: crm-test
version: 7
signals:
  contacts:
    gauge: {event: Contacts Updated, property: total}
qualify:
  signal: contacts
  gte: 8000
"""


@pytest.fixture
def fresh_ingest_settings():
    """The handler caches its settings per cold start; start and end this test cold."""
    app.ingest_settings.cache_clear()
    yield
    app.ingest_settings.cache_clear()


def test_a_published_definitions_gauge_is_kept_by_ingest(table_name, monkeypatch, fresh_ingest_settings):
    # Given the CRM definition published, and ingest configured from its environment
    clock.set_source(lambda: NOW_MS / 1000)
    client = boto3.client("dynamodb")
    DefinitionStore(table_name, client).publish(CRM, "crm.yaml")
    monkeypatch.setattr(tracking, "_store", None)
    monkeypatch.setattr(app, "_processor", None)
    # When a Contacts Updated event arrives through the real handler
    app.handler(sqs_event([track("Contacts Updated", NOW_MS - 1000, "c1", total=8123)]), LambdaContext())
    # Then the gauge the definition names is in the usage state
    assert read_usage(client, table_name, "acme").gauge("Contacts Updated.total") == 8123
    assert IngestSettings(TABLE_NAME=table_name).DEFINITION_CACHE_SECONDS == 60
