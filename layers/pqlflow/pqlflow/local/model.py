"""The wiring model: what a SAM template says about functions, triggers, queues, tables, buses and rules.

Plain frozen dataclasses with every intrinsic already resolved to local names and ARNs (region
us-east-1, account 123456789012). Built by `pqlflow.local.template.load_template`; read by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

REGION = "us-east-1"
ACCOUNT = "123456789012"
DEFAULT_STACK_NAME = "pqlflow-local"


@dataclass(frozen=True)
class Redrive:
    """A queue's RedrivePolicy: after `max_receive_count` receives a message moves to `dead_letter_arn`."""

    dead_letter_arn: str
    max_receive_count: int


@dataclass(frozen=True)
class Queue:
    logical_id: str
    name: str
    url: str
    arn: str
    fifo: bool = False
    visibility_timeout: int | None = None
    redrive: Redrive | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """An AWS::DynamoDB::Table; key schema, indexes and stream settings are kept in the API's shape."""

    logical_id: str
    name: str
    arn: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]
    global_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    local_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    stream_view_type: str | None = None
    ttl_attribute: str | None = None


@dataclass(frozen=True)
class EventBus:
    name: str
    arn: str
    logical_id: str | None = None


@dataclass(frozen=True)
class InputTransformer:
    paths_map: dict[str, str]
    template: str


TargetKind = Literal["sqs", "function", "unsupported"]


@dataclass(frozen=True)
class RuleTarget:
    """Where a matching event goes: an SQS queue or a function of the template (others are skipped)."""

    id: str
    arn: str
    kind: TargetKind
    name: str
    input: str | None = None
    input_path: str | None = None
    input_transformer: InputTransformer | None = None
    message_group_id: str | None = None


@dataclass(frozen=True)
class Rule:
    """An EventBridge rule: AWS::Events::Rule or a function's EventBridgeRule event."""

    logical_id: str
    name: str
    bus_name: str
    pattern: dict[str, Any]
    enabled: bool
    targets: tuple[RuleTarget, ...]


@dataclass(frozen=True)
class SqsSource:
    """An SQS event source mapping (a function's `Type: SQS` event)."""

    function: str
    event_name: str
    queue_name: str
    queue_arn: str
    batch_size: int = 10
    batching_window_seconds: int = 0
    report_batch_item_failures: bool = False
    filters: tuple[dict[str, Any], ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class StreamSource:
    """A DynamoDB stream event source mapping (a function's `Type: DynamoDB` event)."""

    function: str
    event_name: str
    table_name: str
    batch_size: int = 100
    batching_window_seconds: int = 0
    starting_position: str = "TRIM_HORIZON"
    filters: tuple[dict[str, Any], ...] = ()
    bisect_on_error: bool = False
    maximum_retry_attempts: int = -1
    on_failure_arn: str | None = None
    report_batch_item_failures: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class HttpRoute:
    """A function's `Type: HttpApi` event: METHOD /path on an HTTP API (`api` is its logical id).

    `authorizer` is the authorizer in effect: the route's own, else the API's default (None: public).
    """

    function: str
    event_name: str
    api: str
    method: str
    path: str
    authorizer: str | None = None
    payload_format_version: str = "2.0"


@dataclass(frozen=True)
class JwtAuthorizer:
    """An HTTP API JWT authorizer: the token's issuer and audience it accepts."""

    name: str
    issuer: str | None
    audience: tuple[str, ...]
    identity_source: str = "$request.header.Authorization"


@dataclass(frozen=True)
class HttpApi:
    logical_id: str
    api_id: str
    default_authorizer: str | None = None
    authorizers: dict[str, JwtAuthorizer] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    """A scheduled invocation: a Schedule/ScheduleV2 event, an AWS::Scheduler::Schedule, or a rate rule."""

    name: str
    expression: str
    target_kind: TargetKind
    target_name: str
    input: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Function:
    """An AWS::Serverless::Function with Globals merged and its environment resolved."""

    logical_id: str
    name: str
    arn: str
    code_uri: Path
    handler: str
    runtime: str | None = None
    timeout: int = 3
    memory_size: int = 128
    environment: dict[str, str] = field(default_factory=dict)
    async_max_retry_attempts: int = 2
    async_on_failure_arn: str | None = None

    @property
    def handler_file(self) -> Path:
        module, _, _ = self.handler.rpartition(".")
        return self.code_uri / (module.replace(".", "/") + ".py")

    @property
    def handler_attribute(self) -> str:
        return self.handler.rpartition(".")[2]


_Resource = TypeVar("_Resource", Function, Queue, Table)


@dataclass(frozen=True)
class Wiring:
    """Everything the local runtime needs from one template."""

    template_path: Path
    stack_name: str
    parameters: dict[str, Any]
    conditions: dict[str, bool]
    functions: dict[str, Function]
    queues: dict[str, Queue]
    tables: dict[str, Table]
    buses: dict[str, EventBus]
    rules: tuple[Rule, ...]
    sqs_sources: tuple[SqsSource, ...]
    stream_sources: tuple[StreamSource, ...]
    http_routes: tuple[HttpRoute, ...]
    schedules: tuple[Schedule, ...]
    schedule_groups: tuple[str, ...] = ()
    http_apis: dict[str, HttpApi] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    region: str = REGION
    account: str = ACCOUNT

    def function_named(self, name: str) -> Function | None:
        """The function with this physical name or logical id."""
        return _named(self.functions, name)

    def queue_named(self, name: str) -> Queue | None:
        return _named(self.queues, name)

    def table_named(self, name: str) -> Table | None:
        return _named(self.tables, name)


def _named(resources: dict[str, _Resource], name: str) -> _Resource | None:
    """The first resource whose physical name or logical id is `name`."""
    return next((r for r in resources.values() if name in (r.name, r.logical_id)), None)
