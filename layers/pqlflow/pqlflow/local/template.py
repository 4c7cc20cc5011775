"""Turn a SAM template into the wiring model the local runtime runs (`load_template`).

Parameters take their defaults unless overridden, conditions are evaluated, Globals are merged into
functions, and every `!Ref` / `!GetAtt` / `!Sub` of a resource resolves to its local name or ARN (see
`pqlflow.local.names`). Understood resources: AWS::Serverless::Function (SQS, DynamoDB,
EventBridgeRule/CloudWatchEvent, HttpApi, Schedule/ScheduleV2 events), AWS::Lambda::EventSourceMapping,
AWS::Events::Rule, AWS::Events::EventBus, AWS::SQS::Queue, AWS::DynamoDB::Table,
AWS::Serverless::SimpleTable, AWS::Serverless::HttpApi and AWS::Scheduler::Schedule; anything else
only gets a local name so references to it resolve. Pure: reads the template file, nothing else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pqlflow.kernel.errors import UsageError
from pqlflow.local import names
from pqlflow.local.cfn_yaml import load_yaml
from pqlflow.local.intrinsics import Resolver
from pqlflow.local.model import (
    ACCOUNT,
    DEFAULT_STACK_NAME,
    REGION,
    EventBus,
    Function,
    HttpApi,
    HttpRoute,
    Queue,
    Redrive,
    Rule,
    Schedule,
    SqsSource,
    StreamSource,
    Table,
    Wiring,
)
from pqlflow.local.naming import ResourceNames
from pqlflow.local.triggers import TriggerReader

__all__ = ["build_wiring", "load_template"]


def load_template(
    template_path: str | Path,
    parameter_overrides: Mapping[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    stack_name: str = DEFAULT_STACK_NAME,
    imports: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Wiring:
    """The wiring of the template at `template_path`.

    `root` is the folder CodeUri paths are relative to (default: the template's folder), so a temp copy
    of a template can still point at the repository's functions. `imports` supplies `Fn::ImportValue`s.
    `defaults`: values that stand in for the template's own Default of parameters it declares (the local
    runtime's, for what it cannot run); `parameter_overrides` still win.
    """
    path = Path(template_path)
    return build_wiring(
        load_yaml(path),
        template_path=path,
        parameter_overrides=parameter_overrides,
        root=Path(root) if root is not None else path.parent,
        stack_name=stack_name,
        imports=imports,
        defaults=defaults,
    )


def build_wiring(
    document: Mapping[str, Any],
    *,
    template_path: Path,
    parameter_overrides: Mapping[str, Any] | None = None,
    root: Path | None = None,
    stack_name: str = DEFAULT_STACK_NAME,
    imports: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Wiring:
    """The wiring of an already-parsed template document (`defaults`: see `load_template`)."""
    declared = document.get("Parameters") or {}
    given = {k: v for k, v in (defaults or {}).items() if k in declared}
    given.update(parameter_overrides or {})
    return _Builder(document, template_path, given, root, stack_name, imports).build()


class _Builder(TriggerReader):
    """Reads one template document into a `Wiring` (triggers are read by `TriggerReader`)."""

    def __init__(
        self,
        document: Mapping[str, Any],
        template_path: Path,
        overrides: Mapping[str, Any],
        root: Path | None,
        stack_name: str,
        imports: Mapping[str, Any] | None,
    ) -> None:
        self.doc = document
        self.file = str(template_path)
        self.template_path = template_path
        self.root = root if root is not None else template_path.parent
        self.stack = stack_name
        self.resources: dict[str, dict[str, Any]] = {
            lid: r for lid, r in document["Resources"].items() if isinstance(r, dict)
        }
        self.parameters = self._parameters(document.get("Parameters") or {}, overrides)
        self.names = ResourceNames(self.resources, stack_name, self.file)
        self.resolver = Resolver(
            parameters=self.parameters,
            pseudo={
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT,
                "AWS::StackName": stack_name,
                "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack_name}/local",
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::NotificationARNs": [],
            },
            conditions=document.get("Conditions") or {},
            mappings=document.get("Mappings") or {},
            ref=self.names.ref,
            get_att=self.names.get_att,
            imports=imports,
            region=REGION,
        )
        self.names.resolve = self.resolver.resolve
        self.warnings: list[str] = []
        self.queues: dict[str, Queue] = {}
        self.tables: dict[str, Table] = {}
        self.buses: dict[str, EventBus] = {}
        self.functions: dict[str, Function] = {}
        self.rules: list[Rule] = []
        self.sqs_sources: list[SqsSource] = []
        self.stream_sources: list[StreamSource] = []
        self.http_routes: list[HttpRoute] = []
        self.http_apis: dict[str, HttpApi] = {}
        self.schedules: list[Schedule] = []

    # -- parameters ---
    def _parameters(self, declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise UsageError(f"{self.file}: parameter override {unknown[0]!r}: the template has no such parameter")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            spec = spec or {}
            if name in overrides:
                value = overrides[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise UsageError(f"{self.file}: Parameters.{name} has no Default; pass a value for it")
            allowed = spec.get("AllowedValues")
            if allowed and str(value) not in [str(a) for a in allowed]:
                raise UsageError(f"{self.file}: Parameters.{name}: {value!r} is not one of {allowed}")
            kind = str(spec.get("Type", "String"))
            if kind == "Number":
                try:
                    float(value)
                except (TypeError, ValueError) as exc:
                    raise UsageError(f"{self.file}: Parameters.{name}: {value!r} is not a number") from exc
            if "List" in kind and isinstance(value, str):
                value = [v.strip() for v in value.split(",")] if value else []
            values[name] = value
        return values

    def active(self, logical_id: str) -> bool:
        condition = self.resources[logical_id].get("Condition")
        return not condition or self.resolver.condition(condition, f"Resources.{logical_id}.Condition")

    def resolve(self, value: Any, where: str) -> Any:
        try:
            return self.resolver.resolve(value, where)
        except UsageError as exc:
            message = str(exc)
            raise UsageError(message if message.startswith(self.file) else f"{self.file}: {message}") from exc

    # -- build ---
    def build(self) -> Wiring:
        try:
            conditions = self.resolver.conditions()
        except UsageError as exc:
            raise UsageError(f"{self.file}: {exc}") from exc
        for logical_id in self.resources:
            if self.active(logical_id):
                self._resource(logical_id)
        self._apply_http_authorizers((self.doc.get("Globals") or {}).get("HttpApi") or {})
        for rule in self.rules:
            self._ensure_bus(rule.bus_name)
            for target in rule.targets:
                if target.kind == "sqs":
                    self._ensure_queue(target.arn)
        for source in self.stream_sources:
            if self.tables_by_name().get(source.table_name) is None:
                raise UsageError(
                    f"{self.file}: Resources.{source.function}.Events.{source.event_name}: "
                    f"stream of table {source.table_name!r}, which the template does not define"
                )
            if source.on_failure_arn:
                self._ensure_queue(source.on_failure_arn)
        for sqs in self.sqs_sources:
            self._ensure_queue(sqs.queue_arn)
        for queue in list(self.queues.values()):
            if queue.redrive:
                self._ensure_queue(queue.redrive.dead_letter_arn)
        for fn in self.functions.values():
            if fn.async_on_failure_arn:
                self._ensure_queue(fn.async_on_failure_arn)
        return Wiring(
            template_path=self.template_path,
            stack_name=self.stack,
            parameters=self.parameters,
            conditions=conditions,
            functions=self.functions,
            queues=self.queues,
            tables=self.tables,
            buses=self.buses,
            rules=tuple(self.rules),
            sqs_sources=tuple(self.sqs_sources),
            stream_sources=tuple(self.stream_sources),
            http_routes=tuple(self.http_routes),
            schedules=tuple(self.schedules),
            http_apis=self.http_apis,
            schedule_groups=tuple(
                self.names.name_of(lid, lid)
                for lid, r in self.resources.items()
                if r.get("Type") == "AWS::Scheduler::ScheduleGroup" and self.active(lid)
            ),
            outputs=self._outputs(),
            warnings=tuple(self.warnings),
        )

    def tables_by_name(self) -> dict[str, Table]:
        return {t.name: t for t in self.tables.values()}

    def _resource(self, logical_id: str) -> None:
        kind = self.resources[logical_id].get("Type", "")
        handler = {
            "AWS::Serverless::Function": self._function,
            "AWS::Lambda::Function": self._function,
            "AWS::Lambda::EventSourceMapping": self._event_source_mapping,
            "AWS::SQS::Queue": self._queue,
            "AWS::DynamoDB::Table": self._table,
            "AWS::Serverless::SimpleTable": self._simple_table,
            "AWS::Events::EventBus": self._bus,
            "AWS::Events::Rule": self._rule,
            "AWS::Scheduler::Schedule": self._scheduler_schedule,
            "AWS::Serverless::HttpApi": self._http_api,
        }.get(kind)
        if handler is not None:
            handler(logical_id, self.resources[logical_id].get("Properties") or {})

    def _props(self, logical_id: str, props: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        """Only the properties the runtime needs are resolved, so unrelated exotic intrinsics don't matter."""
        return {k: self.resolve(props[k], f"Resources.{logical_id}.Properties.{k}") for k in keys if k in props}

    # -- queues, tables, buses ---
    def _queue(self, logical_id: str, props: Mapping[str, Any]) -> None:
        p = self._props(
            logical_id,
            props,
            (
                "FifoQueue",
                "VisibilityTimeout",
                "RedrivePolicy",
                "MessageRetentionPeriod",
                "DelaySeconds",
                "ContentBasedDeduplication",
                "MaximumMessageSize",
                "ReceiveMessageWaitTimeSeconds",
            ),
        )
        name = self.names.name_of(logical_id, logical_id)
        redrive = None
        policy = p.pop("RedrivePolicy", None)
        if isinstance(policy, str):
            policy = json.loads(policy)
        if policy:
            try:
                redrive = Redrive(str(policy["deadLetterTargetArn"]), int(policy["maxReceiveCount"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise UsageError(
                    f"{self.file}: Resources.{logical_id}.Properties.RedrivePolicy needs deadLetterTargetArn "
                    "and maxReceiveCount"
                ) from exc
        attributes = {k: _attr(v) for k, v in p.items() if k != "FifoQueue" or v}
        visibility = p.get("VisibilityTimeout")
        self.queues[logical_id] = Queue(
            logical_id=logical_id,
            name=name,
            url=names.queue_url(name),
            arn=names.queue_arn(name),
            fifo=bool(p.get("FifoQueue", False)),
            visibility_timeout=int(visibility) if visibility is not None else None,
            redrive=redrive,
            attributes=attributes,
        )

    def _ensure_queue(self, arn: str) -> None:
        """A queue referenced by ARN but not declared (e.g. an existing one) is created locally too."""
        parsed = names.parse_arn(arn)
        name = parsed.name if parsed else arn
        if any(q.name == name for q in self.queues.values()):
            return
        self.warnings.append(f"queue {name!r} is not defined in the template; creating it locally")
        self.queues[name] = Queue(
            logical_id=name,
            name=name,
            url=names.queue_url(name),
            arn=names.queue_arn(name),
            fifo=name.endswith(".fifo"),
            attributes={"FifoQueue": "true"} if name.endswith(".fifo") else {},
        )

    def _table(self, logical_id: str, props: Mapping[str, Any]) -> None:
        p = self._props(
            logical_id,
            props,
            (
                "KeySchema",
                "AttributeDefinitions",
                "GlobalSecondaryIndexes",
                "LocalSecondaryIndexes",
                "StreamSpecification",
                "TimeToLiveSpecification",
            ),
        )
        where = f"{self.file}: Resources.{logical_id}.Properties"
        if not p.get("KeySchema") or not p.get("AttributeDefinitions"):
            raise UsageError(f"{where}: a table needs KeySchema and AttributeDefinitions")
        ttl = p.get("TimeToLiveSpecification") or {}
        stream = p.get("StreamSpecification") or {}
        name = self.names.name_of(logical_id, logical_id)
        self.tables[logical_id] = Table(
            logical_id=logical_id,
            name=name,
            arn=names.table_arn(name),
            key_schema=list(p["KeySchema"]),
            attribute_definitions=list(p["AttributeDefinitions"]),
            global_secondary_indexes=[_index(i) for i in p.get("GlobalSecondaryIndexes") or []],
            local_secondary_indexes=[_index(i) for i in p.get("LocalSecondaryIndexes") or []],
            stream_view_type=stream.get("StreamViewType"),
            ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled", True) else None,
        )

    def _simple_table(self, logical_id: str, props: Mapping[str, Any]) -> None:
        p = self._props(logical_id, props, ("PrimaryKey",))
        key = p.get("PrimaryKey") or {"Name": "id", "Type": "String"}
        kind = {"String": "S", "Number": "N", "Binary": "B"}.get(key.get("Type", "String"), "S")
        name = self.names.name_of(logical_id, logical_id)
        self.tables[logical_id] = Table(
            logical_id=logical_id,
            name=name,
            arn=names.table_arn(name),
            key_schema=[{"AttributeName": key["Name"], "KeyType": "HASH"}],
            attribute_definitions=[{"AttributeName": key["Name"], "AttributeType": kind}],
        )

    def _bus(self, logical_id: str, props: Mapping[str, Any]) -> None:
        name = self.names.name_of(logical_id, logical_id)
        self.buses[name] = EventBus(name=name, arn=names.bus_arn(name), logical_id=logical_id)

    def _ensure_bus(self, name: str) -> None:
        if name not in self.buses:
            self.buses[name] = EventBus(name=name, arn=names.bus_arn(name))

    # -- functions ---
    def _function(self, logical_id: str, props: Mapping[str, Any]) -> None:
        where = f"Resources.{logical_id}.Properties"
        merged = _merge_globals(((self.doc.get("Globals") or {}).get("Function") or {}), props)
        if merged.get("PackageType") == "Image" or "InlineCode" in merged or "Code" in merged:
            self.warnings.append(f"{where}: only CodeUri + Handler functions run locally; skipped")
            return
        p = self._props(
            logical_id,
            merged,
            (
                "CodeUri",
                "Handler",
                "Runtime",
                "Timeout",
                "MemorySize",
                "Environment",
                "EventInvokeConfig",
                "DeadLetterQueue",
            ),
        )
        code_uri, handler = p.get("CodeUri", "."), p.get("Handler")
        if not isinstance(code_uri, str):
            raise UsageError(f"{self.file}: {where}.CodeUri: the local runtime needs a local folder, got {code_uri!r}")
        if not isinstance(handler, str) or "." not in handler:
            raise UsageError(f"{self.file}: {where}.Handler: expected module.function, got {handler!r}")
        variables = ((p.get("Environment") or {}).get("Variables")) or {}
        invoke_config = p.get("EventInvokeConfig") or {}
        on_failure = ((invoke_config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        dlq = (p.get("DeadLetterQueue") or {}).get("TargetArn")
        name = self.names.name_of(logical_id, logical_id)
        self.functions[logical_id] = Function(
            logical_id=logical_id,
            name=name,
            arn=names.function_arn(name),
            code_uri=(self.root / code_uri).resolve(),
            handler=handler,
            runtime=p.get("Runtime"),
            timeout=int(p.get("Timeout", 3)),
            memory_size=int(p.get("MemorySize", 128)),
            environment={str(k): _env_text(v) for k, v in variables.items()},
            async_max_retry_attempts=int(invoke_config.get("MaximumRetryAttempts", 2)),
            async_on_failure_arn=str(on_failure or dlq) if (on_failure or dlq) else None,
        )
        for event_name, event in (merged.get("Events") or {}).items():
            self._event(logical_id, event_name, event or {})

    def _outputs(self) -> dict[str, Any]:
        outputs = {}
        for name, output in (self.doc.get("Outputs") or {}).items():
            condition = (output or {}).get("Condition")
            if condition and not self.resolver.condition(condition):
                continue
            try:
                outputs[name] = self.resolver.resolve((output or {}).get("Value"), f"Outputs.{name}")
            except UsageError as exc:
                self.warnings.append(str(exc))
        return outputs


def _merge_globals(globals_: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's Globals rules: maps merge (the resource wins), lists concatenate, scalars are overridden."""
    merged = copy.deepcopy(dict(globals_))
    for key, value in props.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict) and not _is_intrinsic(value):
            merged[key] = _merge_globals(base, value)
        elif isinstance(base, list) and isinstance(value, list):
            merged[key] = base + list(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_intrinsic(value: Mapping[str, Any]) -> bool:
    return len(value) == 1 and next(iter(value)).startswith(("Fn::", "Ref"))


def _index(index: Mapping[str, Any]) -> dict[str, Any]:
    return {k: index[k] for k in ("IndexName", "KeySchema", "Projection") if k in index}


def _attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_env_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
