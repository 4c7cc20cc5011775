"""The runtime's own boto3 clients and the creation of a template's tables, queues and buses in the emulator.

The runtime uses a private boto3 session (never the default one handlers use), pointed at moto either
in-process (`mock_aws`) or at an endpoint URL (a moto server). Creation tolerates resources that
already exist, so a dev stack can restart against a running server.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from pqlflow.local.model import ACCOUNT, REGION, Queue, Table, Wiring
from pqlflow.local.names import queue_arn

_EXISTS = {"ResourceInUseException", "ResourceAlreadyExistsException", "QueueAlreadyExists"}


def _service(service: str) -> cached_property[Any]:
    """A client of `service` made by `Clients.client` on first use, then kept."""
    return cached_property(lambda clients: clients.client(service))


class Clients:
    """Lazily created clients of the services the runtime drives."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the emulator accepts any credentials
            region_name=REGION,
        )
        # Account-based endpoints (e.g. for dynamodbstreams) are not routed by moto.
        self._config = Config(account_id_endpoint_mode="disabled", retries={"mode": "standard", "max_attempts": 3})

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self.endpoint_url, config=self._config)

    sqs = _service("sqs")
    dynamodb = _service("dynamodb")
    streams = _service("dynamodbstreams")
    events = _service("events")


def create_table(clients: Clients, table: Table) -> str | None:
    """Create the table (on-demand billing) with its indexes, stream and TTL; returns its stream ARN."""
    request: dict[str, Any] = {
        "TableName": table.name,
        "KeySchema": table.key_schema,
        "AttributeDefinitions": table.attribute_definitions,
        "BillingMode": "PAY_PER_REQUEST",
    }
    if table.global_secondary_indexes:
        request["GlobalSecondaryIndexes"] = [_with_projection(i) for i in table.global_secondary_indexes]
    if table.local_secondary_indexes:
        request["LocalSecondaryIndexes"] = [_with_projection(i) for i in table.local_secondary_indexes]
    if table.stream_view_type:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": table.stream_view_type}
    try:
        clients.dynamodb.create_table(**request)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in _EXISTS:
            raise
    if table.ttl_attribute:
        try:
            clients.dynamodb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )
        except ClientError as exc:
            if "already enabled" not in str(exc):
                raise
    description = clients.dynamodb.describe_table(TableName=table.name)["Table"]
    return description.get("LatestStreamArn")


def _with_projection(index: dict[str, Any]) -> dict[str, Any]:
    return {"Projection": {"ProjectionType": "ALL"}, **index}


def create_queue(clients: Clients, queue: Queue) -> str:
    attributes = dict(queue.attributes)
    if queue.redrive:
        attributes["RedrivePolicy"] = json.dumps(
            {
                "deadLetterTargetArn": queue.redrive.dead_letter_arn,
                "maxReceiveCount": queue.redrive.max_receive_count,
            }
        )
    return clients.sqs.create_queue(QueueName=queue.name, Attributes=attributes)["QueueUrl"]


def create_all(clients: Clients, wiring: Wiring) -> tuple[dict[str, str], dict[str, str]]:
    """Create everything; returns (queue name → URL, table name → stream ARN)."""
    stream_arns = {}
    for table in wiring.tables.values():
        arn = create_table(clients, table)
        if arn:
            stream_arns[table.name] = arn
    urls = {}
    # Dead-letter queues must exist before the queues that redrive to them.
    dead_letters = {q.redrive.dead_letter_arn for q in wiring.queues.values() if q.redrive}
    ordered = sorted(wiring.queues.values(), key=lambda q: (queue_arn(q.name) not in dead_letters, q.name))
    for queue in ordered:
        urls[queue.name] = create_queue(clients, queue)
    if wiring.schedule_groups:
        scheduler = clients.client("scheduler")
        for group in wiring.schedule_groups:
            try:
                scheduler.create_schedule_group(Name=group)
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in _EXISTS | {"ConflictException"}:
                    raise
    for bus in wiring.buses.values():
        if bus.name != "default":
            create_bus(clients, bus.name)
    return urls, stream_arns


def create_bus(clients: Clients, name: str) -> None:
    """A custom bus, or a partner bus (`aws.partner/...`, e.g. Segment's) with its partner event source."""
    request = {"Name": name}
    try:
        if name.startswith("aws.partner/"):
            clients.events.create_partner_event_source(Name=name, Account=ACCOUNT)
            request["EventSourceName"] = name
        clients.events.create_event_bus(**request)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in _EXISTS:
            raise
