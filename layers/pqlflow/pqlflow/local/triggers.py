"""Read a template's triggers: EventBridge rules, functions' events, event source mappings, schedules.

`TriggerReader` is the part of the template reader (`pqlflow.local.template`) that turns
AWS::Events::Rule, AWS::Scheduler::Schedule, AWS::Lambda::EventSourceMapping and the `Events` of
AWS::Serverless::Function (SQS, DynamoDB, EventBridgeRule/CloudWatchEvent, HttpApi, Schedule,
ScheduleV2) into the wiring model's rules, sources, routes and schedules. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pqlflow.kernel.errors import UsageError
from pqlflow.local import names as arns
from pqlflow.local.model import (
    Function,
    HttpApi,
    HttpRoute,
    InputTransformer,
    JwtAuthorizer,
    Rule,
    RuleTarget,
    Schedule,
    SqsSource,
    StreamSource,
    TargetKind,
)
from pqlflow.local.naming import ResourceNames
from pqlflow.local.patterns import PatternError, parse_pattern


class TriggerReader:
    """Mixed into the template reader, which provides the attributes annotated here."""

    file: str
    stack: str
    names: ResourceNames
    functions: dict[str, Function]
    warnings: list[str]
    rules: list[Rule]
    sqs_sources: list[SqsSource]
    stream_sources: list[StreamSource]
    http_routes: list[HttpRoute]
    http_apis: dict[str, HttpApi]
    schedules: list[Schedule]

    def resolve(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def _props(self, logical_id: str, props: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        raise NotImplementedError

    def _rule(self, logical_id: str, props: Mapping[str, Any]) -> None:
        p = self._props(logical_id, props, ("EventBusName", "EventPattern", "State", "Targets", "ScheduleExpression"))
        name = self.names.name_of(logical_id, logical_id)
        enabled = str(p.get("State", "ENABLED")).upper().startswith("ENABLED")
        targets = tuple(
            self._target(t, f"Resources.{logical_id}.Properties.Targets[{i}]")
            for i, t in enumerate(p.get("Targets") or [])
        )
        if "ScheduleExpression" in p and "EventPattern" not in p:
            for target in targets:
                self.schedules.append(
                    Schedule(
                        f"{name}-{target.id}",
                        str(p["ScheduleExpression"]),
                        target.kind,
                        target.name,
                        target.input,
                        enabled,
                    )
                )
            return
        pattern = self._pattern(p.get("EventPattern"), f"Resources.{logical_id}.Properties.EventPattern")
        bus = arns.bus_name(str(p.get("EventBusName", "default")))
        self.rules.append(Rule(logical_id, name, bus, pattern, enabled, targets))

    def _pattern(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            raise UsageError(f"{self.file}: {where}: a rule needs an event pattern")
        try:
            return parse_pattern(raw)
        except PatternError as exc:
            raise UsageError(f"{self.file}: {where}: {exc}") from exc

    def _target(self, target: Mapping[str, Any], where: str) -> RuleTarget:
        arn = str(target.get("Arn", ""))
        parsed = arns.parse_arn(arn)
        kind: TargetKind
        kind, name = "unsupported", arn
        if parsed and parsed.service == "sqs":
            kind, name = "sqs", parsed.name
        elif parsed and parsed.service == "lambda":
            fn = self.names.function_by_name(parsed.name)
            if fn:
                kind, name = "function", fn
        if kind == "unsupported":
            self.warnings.append(f"{where}: target {arn!r} is not emulated locally; events to it are dropped")
        transformer = target.get("InputTransformer")
        return RuleTarget(
            id=str(target.get("Id", name)),
            arn=arn,
            kind=kind,
            name=name,
            input=_json_text(target.get("Input")),
            input_path=target.get("InputPath"),
            input_transformer=InputTransformer(
                dict(transformer.get("InputPathsMap") or {}), str(transformer.get("InputTemplate", ""))
            )
            if transformer
            else None,
            message_group_id=(target.get("SqsParameters") or {}).get("MessageGroupId"),
        )

    def _scheduler_schedule(self, logical_id: str, props: Mapping[str, Any]) -> None:
        p = self._props(logical_id, props, ("ScheduleExpression", "Target", "State"))
        target = self._target(p.get("Target") or {}, f"Resources.{logical_id}.Properties.Target")
        self.schedules.append(
            Schedule(
                self.names.name_of(logical_id, logical_id),
                str(p.get("ScheduleExpression", "")),
                target.kind,
                target.name,
                target.input,
                str(p.get("State", "ENABLED")).upper() == "ENABLED",
            )
        )

    def _event(self, fn: str, event_name: str, event: Mapping[str, Any]) -> None:
        where = f"Resources.{fn}.Properties.Events.{event_name}"
        kind = event.get("Type")
        p = self.resolve(event.get("Properties") or {}, f"{where}.Properties")
        if kind == "SQS":
            self.sqs_sources.append(self._sqs_source(fn, event_name, p, where))
        elif kind == "DynamoDB":
            self.stream_sources.append(self._stream_source(fn, event_name, p, where))
        elif kind in ("EventBridgeRule", "CloudWatchEvent"):
            self._function_rule(fn, event_name, p, where)
        elif kind == "HttpApi":
            raw_api = (event.get("Properties") or {}).get("ApiId")
            api = raw_api["Ref"] if isinstance(raw_api, dict) and "Ref" in raw_api else raw_api
            self.http_routes.append(
                HttpRoute(
                    function=fn,
                    event_name=event_name,
                    api=str(api or "ServerlessHttpApi"),
                    method=str(p.get("Method", "ANY")).upper(),
                    path=str(p.get("Path", "$default")),
                    authorizer=(p.get("Auth") or {}).get("Authorizer"),
                    payload_format_version=str(p.get("PayloadFormatVersion", "2.0")),
                )
            )
        elif kind in ("Schedule", "ScheduleV2"):
            expression = p.get("Schedule") or p.get("ScheduleExpression") or ""
            enabled = p.get("Enabled", True) is not False and str(p.get("State", "ENABLED")).upper() == "ENABLED"
            self.schedules.append(
                Schedule(
                    p.get("Name") or f"{self.stack}-{fn}{event_name}",
                    str(expression),
                    "function",
                    fn,
                    _json_text(p.get("Input")),
                    enabled,
                )
            )
        else:
            self.warnings.append(f"{where}: event type {kind!r} is not emulated locally")

    def _sqs_source(self, fn: str, event_name: str, p: Mapping[str, Any], where: str) -> SqsSource:
        arn = str(p.get("Queue", ""))
        parsed = arns.parse_arn(arn)
        if not parsed or parsed.service != "sqs":
            raise UsageError(f"{self.file}: {where}.Properties.Queue: expected an SQS queue ARN, got {arn!r}")
        return SqsSource(
            function=fn,
            event_name=event_name,
            queue_name=parsed.name,
            queue_arn=arn,
            batch_size=int(p.get("BatchSize", 10)),
            batching_window_seconds=int(p.get("MaximumBatchingWindowInSeconds", 0)),
            report_batch_item_failures="ReportBatchItemFailures" in (p.get("FunctionResponseTypes") or []),
            filters=self._filters(p.get("FilterCriteria"), f"{where}.Properties.FilterCriteria"),
            enabled=p.get("Enabled", True) is not False,
        )

    def _stream_source(self, fn: str, event_name: str, p: Mapping[str, Any], where: str) -> StreamSource:
        arn = str(p.get("Stream", ""))
        parsed = arns.parse_arn(arn)
        if not parsed or parsed.service != "dynamodb":
            raise UsageError(f"{self.file}: {where}.Properties.Stream: expected a DynamoDB stream ARN, got {arn!r}")
        on_failure = ((p.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        return StreamSource(
            function=fn,
            event_name=event_name,
            table_name=parsed.name,
            batch_size=int(p.get("BatchSize", 100)),
            batching_window_seconds=int(p.get("MaximumBatchingWindowInSeconds", 0)),
            starting_position=str(p.get("StartingPosition", "TRIM_HORIZON")),
            filters=self._filters(p.get("FilterCriteria"), f"{where}.Properties.FilterCriteria"),
            bisect_on_error=bool(p.get("BisectBatchOnFunctionError", False)),
            maximum_retry_attempts=int(p.get("MaximumRetryAttempts", -1)),
            on_failure_arn=str(on_failure) if on_failure else None,
            report_batch_item_failures="ReportBatchItemFailures" in (p.get("FunctionResponseTypes") or []),
            enabled=p.get("Enabled", True) is not False,
        )

    def _filters(self, criteria: Any, where: str) -> tuple[dict[str, Any], ...]:
        filters = []
        for i, f in enumerate((criteria or {}).get("Filters") or []):
            try:
                filters.append(parse_pattern((f or {}).get("Pattern", "")))
            except PatternError as exc:
                raise UsageError(f"{self.file}: {where}.Filters[{i}].Pattern: {exc}") from exc
        return tuple(filters)

    def _function_rule(self, fn: str, event_name: str, p: Mapping[str, Any], where: str) -> None:
        pattern = self._pattern(p.get("Pattern"), f"{where}.Properties.Pattern")
        function = self.functions[fn]
        state = str(p.get("State", "ENABLED")).upper()
        target = {
            "Arn": function.arn,
            "Id": (p.get("Target") or {}).get("Id", f"{fn}{event_name}LambdaTarget"),
        }
        for key in ("Input", "InputPath", "InputTransformer"):
            if key in p:
                target[key] = p[key]
        self.rules.append(
            Rule(
                logical_id=f"{fn}{event_name}",
                name=str(p.get("RuleName") or f"{self.stack}-{fn}{event_name}"),
                bus_name=arns.bus_name(str(p.get("EventBusName", "default"))),
                pattern=pattern,
                enabled=p.get("Enabled", True) is not False and state.startswith("ENABLED"),
                targets=(self._target(target, where),),
            )
        )

    def _event_source_mapping(self, logical_id: str, props: Mapping[str, Any]) -> None:
        where = f"Resources.{logical_id}.Properties"
        p = self.resolve(dict(props), where)
        arn, fn_ref = str(p.get("EventSourceArn", "")), str(p.get("FunctionName", ""))
        fn_arn = arns.parse_arn(fn_ref)
        fn = self.names.function_by_name(fn_arn.name if fn_arn else fn_ref)
        parsed = arns.parse_arn(arn)
        if fn is None or parsed is None:
            self.warnings.append(f"{where}: event source mapping to {fn_ref!r} from {arn!r} is not emulated")
            return
        properties = {
            "Queue": arn,
            "Stream": arn,
            **p,
            "FunctionResponseTypes": p.get("FunctionResponseTypes") or [],
        }
        if parsed.service == "sqs":
            self.sqs_sources.append(self._sqs_source(fn, logical_id, properties, where))
        elif parsed.service == "dynamodb":
            self.stream_sources.append(self._stream_source(fn, logical_id, properties, where))

    def _http_api(self, logical_id: str, props: Mapping[str, Any]) -> None:
        auth = self._props(logical_id, props, ("Auth",)).get("Auth") or {}
        self.http_apis[logical_id] = _http_api(logical_id, self.names.name_of(logical_id, logical_id), auth)

    def _apply_http_authorizers(self, globals_http_api: Mapping[str, Any]) -> None:
        """Give each route the authorizer in effect (its own, else its API's default; "NONE" is public)."""
        if any(r.api == "ServerlessHttpApi" for r in self.http_routes) and "ServerlessHttpApi" not in self.http_apis:
            auth = self.resolve(globals_http_api.get("Auth") or {}, "Globals.HttpApi.Auth")
            self.http_apis["ServerlessHttpApi"] = _http_api("ServerlessHttpApi", "serverless", auth)
        routes = []
        for route in self.http_routes:
            api = self.http_apis.get(route.api)
            if api is None:
                raise UsageError(
                    f"{self.file}: Resources.{route.function}.Events.{route.event_name}.Properties.ApiId: "
                    f"no AWS::Serverless::HttpApi named {route.api!r}"
                )
            chosen = route.authorizer or api.default_authorizer
            if chosen == "NONE":
                chosen = None
            if chosen is not None and chosen not in api.authorizers:
                self.warnings.append(
                    f"Resources.{route.function}.Events.{route.event_name}: authorizer {chosen!r} is not "
                    "a JWT authorizer; the route is served without authorization locally"
                )
                chosen = None
            routes.append(replace(route, authorizer=chosen))
        self.http_routes[:] = routes


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _http_api(logical_id: str, api_id: str, auth: Mapping[str, Any]) -> HttpApi:
    authorizers = {}
    for name, spec in (auth.get("Authorizers") or {}).items():
        jwt = (spec or {}).get("JwtConfiguration")
        if not jwt:
            continue
        audience = jwt.get("audience") or []
        authorizers[name] = JwtAuthorizer(
            name=name,
            issuer=jwt.get("issuer"),
            audience=tuple(audience if isinstance(audience, list) else [audience]),
            identity_source=str(spec.get("IdentitySource", "$request.header.Authorization")),
        )
    return HttpApi(logical_id, api_id, auth.get("DefaultAuthorizer"), authorizers)
