"""Shared fixtures: AWS resources on moto, created from template.yaml's own definitions."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from pqlflow.kernel import clock
from pqlflow.local import moto_transactions

from tests.support.template import load_template, table_definition

moto_transactions.install()  # moto copies whole tables per TransactWriteItems otherwise (see the module)


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for every test, so nothing can reach a real AWS account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "pqlflow-test",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(autouse=True)
def _restore_clock() -> Iterator[None]:
    yield
    clock.set_source(None)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def table_name(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The pqlflow table, created on moto from template.yaml's PqlflowTable; TABLE_NAME is set to it."""
    name = f"pqlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb").create_table(TableName=name, **table_definition())
    monkeypatch.setenv("TABLE_NAME", name)
    return name


@pytest.fixture
def bus_name(aws: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """An event bus on moto; EVENT_BUS_NAME is set to it."""
    name = f"pqlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("events").create_event_bus(Name=name)
    monkeypatch.setenv("EVENT_BUS_NAME", name)
    return name


@pytest.fixture
def template() -> dict:
    return load_template()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("POWERTOOLS_DEV", "false")
