"""`LocalRuntime`: the SAM application of a template.yaml running in-process against moto.

Everything comes from the template (`pqlflow.local.template`): tables, queues and buses are created
in the emulator (the queues' messages are held by the runtime, `pqlflow.local.queues`); functions run
in-process (`pqlflow.local.functions`), never in moto's Lambda; and the event sources are emulated:
EventBridge rules (`eventbus`), SQS event source mappings (`sqs`), DynamoDB stream mappings
(`streams`) and one-time Scheduler schedules (`scheduler`). `run_until_idle()` pumps them all until
nothing moves.

    with LocalRuntime("template.yaml") as runtime:
        runtime.put_events([{"Source": "app", "DetailType": "track", "Detail": {...}}])
        runtime.run_until_idle()
        runtime.counters()   # invocations per function, AWS requests by service and operation

Simulated time: pass `before_invoke(function_logical_id, event)` to set `pqlflow.kernel.clock` before each
delivery (replay sets it from event timestamps).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.local import calls, moto_transactions
from pqlflow.local.aws import Clients, create_all
from pqlflow.local.eventbus import EventRouter
from pqlflow.local.functions import FunctionHost, FunctionLoadError, Outcome
from pqlflow.local.http import Unauthorized, http_event, http_response, jwt_claims, match_route
from pqlflow.local.model import ACCOUNT, DEFAULT_STACK_NAME, REGION, Function, Wiring
from pqlflow.local.names import parse_arn
from pqlflow.local.patterns import matches
from pqlflow.local.putevents import PutEventsRejected
from pqlflow.local.queues import LocalQueue, Queues
from pqlflow.local.scheduler import ScheduleRunner
from pqlflow.local.sqs import SqsPoller
from pqlflow.local.streams import StreamPoller
from pqlflow.local.template import load_template

log = logging.getLogger(__name__)

BeforeInvoke = Callable[[str, Any], None]


class LocalRuntimeError(RuntimeError):
    """The local run cannot go on (e.g. events rejected by PutEvents, or no progress after max_rounds)."""


@dataclass(frozen=True)
class Invocation:
    """One recorded invocation (only kept with `record_invocations=True`)."""

    function: str
    event: Any
    result: Any
    error: BaseException | None


# What the local runtime runs in place of a template default it cannot emulate: usage reaches ingest through
# the queue (the deployed default is Firehose, which moto cannot deliver to S3 on a schedule). Pricing still
# prices the template's own default transport (pqlflow.local.pricing).
LOCAL_DEFAULTS: dict[str, Any] = {"IngestTransport": "sqs"}


class LocalRuntime:
    """Runs the application a SAM template describes, in-process, against moto."""

    def __init__(
        self,
        template_path: str | Path,
        parameter_overrides: Mapping[str, Any] | None = None,
        root: str | Path | None = None,
        *,
        endpoint_url: str | None = None,
        start_mock: bool = True,
        stack_name: str = DEFAULT_STACK_NAME,
        before_invoke: BeforeInvoke | None = None,
        environment: Mapping[str, str] | None = None,
        record_invocations: bool = False,
        unbounded_retry_limit: int = 10,
        imports: Mapping[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        tap: Iterable[str] = (),
    ) -> None:
        """Read the template; nothing is created until `start()` (or `with`).

        `root`: folder CodeUri paths are relative to (default: the template's folder).
        `endpoint_url`: drive an emulator server (e.g. a moto server for a dev stack) instead of an
        in-process `mock_aws`; `start_mock=False` when the caller already runs `mock_aws`.
        `environment`: extra variables for every function (after the template's own).
        `unbounded_retry_limit`: how many attempts stand for "retry until the message or record
        expires" (an SQS queue without a RedrivePolicy, a stream with MaximumRetryAttempts -1).
        `on_event(bus, event)`: called with every event put on a bus, before it is routed.
        `tap`: "service.Operation" names (e.g. "sesv2.SendEmail") whose calls by handlers are kept, with
        their parameters, in `requests.tapped`.
        """
        transport = (parameter_overrides or {}).get("IngestTransport")
        if transport is not None and str(transport) != "sqs":
            raise UsageError(
                f"IngestTransport {transport!r}: the local runtime has no Firehose; it runs IngestTransport sqs "
                "(the ingest handler folds a Firehose object as one batch of the same code: docs/ingest.md)"
            )
        self.wiring: Wiring = load_template(
            template_path, parameter_overrides, root=root, stack_name=stack_name, imports=imports,
            defaults=LOCAL_DEFAULTS,
        )
        self.endpoint_url = endpoint_url
        self._start_mock = start_mock and endpoint_url is None
        self.before_invoke = before_invoke
        self._extra_environment = dict(environment or {})
        self.record_invocations = record_invocations
        self.unbounded_retry_limit = unbounded_retry_limit
        self.invocations: list[Invocation] = []
        self.invocation_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self.failed_async: list[tuple[str, Any, BaseException]] = []
        self.requests = calls.RequestLog(tap=frozenset(tap))
        self.on_event = on_event
        self.events_put = 0
        self._mock: Any = None
        self._started = False
        self.clients: Clients | None = None
        self.queue_urls: dict[str, str] = {}
        self.queues = Queues(())
        self.stream_arns: dict[str, str] = {}
        self._hosts: dict[str, FunctionHost] = {}
        self._router: EventRouter | None = None
        self._sqs: list[SqsPoller] = []
        self._streams: list[StreamPoller] = []
        self._scheduler: ScheduleRunner | None = None
        # Functions run one at a time (as os.environ is theirs while they run), even when a dev stack
        # serves HTTP requests on another thread than the pump's.
        self._invoking = threading.RLock()

    # -- lifecycle ---
    def start(self) -> LocalRuntime:
        """Start the emulator (unless given an endpoint) and create the template's resources."""
        if self._started:
            return self
        calls.install()
        moto_transactions.install()
        if self._start_mock:
            from moto import mock_aws  # a dev dependency: imported only when running locally

            self._mock = mock_aws()
            self._mock.start()
        self._started = True
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        self.clients = Clients(self.endpoint_url)
        self.queue_urls, self.stream_arns = create_all(self.clients, self.wiring)
        self.queues = Queues(self.wiring.queues.values())
        environment = dict(self._extra_environment)
        if self.endpoint_url:
            environment.setdefault("AWS_ENDPOINT_URL", self.endpoint_url)
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if key not in os.environ:
                    environment.setdefault(key, "testing")  # the emulator accepts any credentials
        self._hosts = {
            lid: FunctionHost(fn, extra_environment=environment) for lid, fn in self.wiring.functions.items()
        }
        self._router = EventRouter(self.wiring, self.clients, self.queues, self._invoke_async, on_event=self.on_event)
        self._router.setup()
        self._sqs = [
            SqsPoller(source, self.queues[source.queue_name], self._invoke, expire_after=self.unbounded_retry_limit)
            for source in self.wiring.sqs_sources
            if source.enabled and source.function in self._hosts
        ]
        self._streams = []
        for source in self.wiring.stream_sources:
            if not source.enabled or source.function not in self._hosts:
                continue
            arn = self.stream_arns.get(source.table_name)
            if arn is None:
                raise UsageError(
                    f"{self.wiring.template_path}: {source.function}.Events.{source.event_name}: table "
                    f"{source.table_name!r} has no StreamSpecification"
                )
            poller = StreamPoller(
                source,
                arn,
                self.wiring.functions[source.function].arn,
                self.clients,
                self._invoke,
                self._send_on_failure,
                unbounded_retry_limit=self.unbounded_retry_limit,
            )
            if source.starting_position == "LATEST":
                poller.skip_existing()
            self._streams.append(poller)
        self._scheduler = ScheduleRunner(
            self.clients,
            put_event=lambda entry: self.put_events([entry]),
            invoke_async=self._invoke_async,
            send_message=lambda queue, body: self.send_message(queue, body),
            function_by_name=self._function_logical_id,
        )

    def close(self) -> None:
        """Unload the functions and stop the in-process emulator (its data is gone)."""
        for host in self._hosts.values():
            host.unload()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        self._started = False

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding the application ---
    def bus_for(self, entry: Mapping[str, Any]) -> str:
        """Where an entry without EventBusName goes: the first matching enabled rule's bus, else "default".

        So replay can put Segment messages without knowing which bus the template reads them from.
        """
        detail = entry.get("Detail")
        if isinstance(detail, str):
            try:
                detail = json.loads(detail)
            except ValueError:
                detail = None
        probe = {
            "version": "0",
            "detail-type": entry.get("DetailType"),
            "source": entry.get("Source"),
            "account": ACCOUNT,
            "region": REGION,
            "resources": list(entry.get("Resources") or []),
            "detail": detail,
        }
        for rule in self.wiring.rules:
            if rule.enabled and matches(rule.pattern, probe):
                return rule.bus_name
        return "default"

    def put_events(self, entries: Iterable[Mapping[str, Any]]) -> list[str]:
        """PutEvents (boto3 entry shape; `Detail` may be a dict), in chunks of 10; returns the event ids.

        Entries without `EventBusName` go to `bus_for(entry)`, without `Time` get `pqlflow.kernel.clock` time.
        """
        ids: list[str] = []
        chunk: list[dict[str, Any]] = []
        for entry in entries:
            chunk.append(self._entry(entry))
            if len(chunk) == 10:
                ids.extend(self._put_chunk(chunk))
                chunk = []
        if chunk:
            ids.extend(self._put_chunk(chunk))
        return ids

    def put_event(
        self,
        detail_type: str,
        detail: Mapping[str, Any],
        source: str = "pqlflow.local",
        bus: str | None = None,
    ) -> str:
        entry = {"DetailType": detail_type, "Detail": detail, "Source": source}
        if bus:
            entry["EventBusName"] = bus
        return self.put_events([entry])[0]

    def _entry(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(entry)
        if not out.get("EventBusName"):
            out["EventBusName"] = self.bus_for(out)
        if not isinstance(out.get("Detail"), str):
            out["Detail"] = json.dumps(out.get("Detail"))
        if out.get("Time") is None:
            out["Time"] = dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC)
        return out

    def _put_chunk(self, chunk: list[dict[str, Any]]) -> list[str]:
        try:
            response = self._started_router().put_events(chunk)
        except PutEventsRejected as exc:
            raise LocalRuntimeError(f"PutEvents rejected the request: {exc.message}") from exc
        failed = [e for e in response["Entries"] if "ErrorCode" in e]
        if failed:
            raise LocalRuntimeError(f"PutEvents rejected {len(failed)} entries: {failed[0].get('ErrorMessage')}")
        self.events_put += len(chunk)
        return [e["EventId"] for e in response["Entries"]]

    def _started_router(self) -> EventRouter:
        if self._router is None:
            raise _not_started()
        return self._router

    def send_message(
        self, queue: str, body: str | Mapping[str, Any], *, group_id: str | None = None, dedup_id: str | None = None
    ) -> str | None:
        """Send a message to a template queue (logical id or name); its id (None: a FIFO duplicate)."""
        text = body if isinstance(body, str) else json.dumps(body)
        return self._queue(queue).send(text, group_id=group_id, dedup_id=dedup_id)

    def invoke(self, function: str, event: Any) -> Any:
        """Invoke a function synchronously (RequestResponse): its result, or its exception raised."""
        outcome = self._invoke(self._function(function).logical_id, event)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def invoke_http(
        self,
        method: str,
        path: str,
        *,
        query: str | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Serve one HTTP API request through the template's HttpApi routes (404 when none matches).

        A route behind a JWT authorizer needs a bearer token it accepts (see `pqlflow.local.http`), or
        `claims` given here, which stand for an already-verified token.
        """
        match = match_route(self.wiring.http_routes, method, path)
        if match is None:
            return _json_response(404, {"message": "Not Found"})
        route = match.route
        if route.authorizer is not None and claims is None:
            authorizer = self.wiring.http_apis[route.api].authorizers[route.authorizer]
            try:
                claims = jwt_claims(authorizer, headers or {})
            except Unauthorized:
                return _json_response(401, {"message": "Unauthorized"})
        event = http_event(match, method, path, query=query, headers=headers, body=body, claims=claims)
        outcome = self._invoke(match.route.function, event)
        if outcome.error is not None:
            return _json_response(500, {"message": "Internal Server Error"})
        return http_response(outcome.result)

    def fire_schedule(self, name: str) -> None:
        """Run one scheduled invocation now (a schedule's name from the template)."""
        for schedule in self.wiring.schedules:
            if schedule.name == name:
                event = json.loads(schedule.input) if schedule.input else _scheduled_event(schedule.name)
                if schedule.target_kind == "function":
                    self._invoke_async(schedule.target_name, event)
                elif schedule.target_kind == "sqs":
                    self.send_message(schedule.target_name, event)
                return
        raise UsageError(f"no schedule named {name!r}; the template has {[s.name for s in self.wiring.schedules]}")

    # -- pumping ---
    def pump(self) -> int:
        """One round: route captured events, one batch per SQS mapping, new records per stream mapping."""
        moved = self._started_router().pump()
        for poller in self._sqs:
            name = poller.queue.name
            self.queues.absorb(name, self._need().sqs, self.queue_urls[name])
            moved += poller.poll()
        for stream in self._streams:
            moved += stream.poll()
        if self._scheduler is not None:
            moved += self._scheduler.pump()
        return moved

    def run_until_idle(self, max_rounds: int | None = None) -> int:
        """Pump until a whole round moves nothing; returns the number of rounds that moved something."""
        rounds = 0
        while self.pump():
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                raise LocalRuntimeError(f"still busy after {max_rounds} rounds (a loop between functions?)")
        return rounds

    drain = run_until_idle

    def next_schedule_time(self) -> float | None:
        """When the next one-time Scheduler schedule is due (epoch seconds), or None.

        A replay advances `pqlflow.kernel.clock` to it (before later events, and after the last one) so
        deferred work happens at its simulated time.
        """
        return self._scheduler.next_due() if self._scheduler is not None else None

    # -- invoking ---
    def _function(self, name: str) -> Function:
        fn = self.wiring.function_named(name)
        if fn is None:
            raise UsageError(f"no function {name!r}; the template has {sorted(self.wiring.functions)}")
        return fn

    def _function_logical_id(self, name: str) -> str | None:
        fn = self.wiring.function_named(name)
        return fn.logical_id if fn else None

    def _invoke(self, function: str, event: Any) -> Outcome:
        host = self._hosts.get(function)
        if host is None:
            raise UsageError(f"function {function!r} is not runnable locally")
        if self.before_invoke is not None:
            self.before_invoke(function, event)
        self.invocation_counts[function] += 1
        with self._invoking, calls.attributed_to(function, self.requests, self._started_router().put_events):
            try:
                outcome = Outcome(result=host.invoke(event))
            except FunctionLoadError:
                raise
            except Exception as exc:  # the event source decides what a failure means
                # The type only: exception messages may carry personal data.
                log.info("function %s failed: %s", function, type(exc).__name__)
                self.error_counts[function] += 1
                outcome = Outcome(error=exc)
        if self.record_invocations:
            self.invocations.append(Invocation(function, event, outcome.result, outcome.error))
        return outcome

    def _invoke_async(self, function: str, event: Any) -> None:
        """Asynchronous invocation: Lambda retries twice by default, then the OnFailure destination."""
        fn = self.wiring.functions[function]
        outcome = Outcome()
        for _attempt in range(1 + max(0, fn.async_max_retry_attempts)):
            outcome = self._invoke(function, event)
            if outcome.ok:
                return
        assert outcome.error is not None
        self.failed_async.append((function, event, outcome.error))
        if fn.async_on_failure_arn:
            self._send_on_failure(
                fn.async_on_failure_arn,
                {
                    "version": "1.0",
                    "timestamp": dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC)
                    .isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "requestContext": {
                        "requestId": str(uuid.uuid4()),
                        "functionArn": fn.arn,
                        "condition": "RetriesExhausted",
                        "approximateInvokeCount": 1 + fn.async_max_retry_attempts,
                    },
                    "requestPayload": event,
                    "responseContext": {
                        "statusCode": 200,
                        "executedVersion": "$LATEST",
                        "functionError": "Unhandled",
                    },
                    "responsePayload": {
                        "errorMessage": str(outcome.error),
                        "errorType": type(outcome.error).__name__,
                    },
                },
            )

    def _send_on_failure(self, destination_arn: str, payload: dict[str, Any]) -> None:
        arn = parse_arn(destination_arn)
        if arn is None or arn.service != "sqs":
            log.warning("OnFailure destination %s is not emulated; record dropped", destination_arn)
            return
        self._queue(arn.name).send(json.dumps(payload))

    # -- observing ---
    def counters(self) -> dict[str, Any]:
        """Invocations per function and AWS requests handlers made, by service and operation."""
        router = self._router
        return {
            "invocations": dict(sorted(self.invocation_counts.items())),
            "invocation_errors": dict(sorted(self.error_counts.items())),
            "requests": self.requests.as_dict(),
            "requests_by_function": self.requests.by_function_dict(),
            "events_put": self.events_put,
            "events_routed": router.events_seen if router else 0,
            "rule_matches": dict(sorted((router.delivered if router else {}).items())),
            "filtered_out": {**_per_mapping(self._sqs, "filtered_out"), **_per_mapping(self._streams, "filtered_out")},
            "stream_records_discarded": _per_mapping(self._streams, "discarded"),
            "sqs_messages_expired": _per_mapping(self._sqs, "expired"),
            "async_failures": len(self.failed_async),
            "schedules_fired": self._scheduler.fired if self._scheduler else 0,
        }

    def queue_url(self, queue: str) -> str:
        """The URL of a queue by logical id or name."""
        return self.queue_urls[self._queue_name(queue, self.queue_urls)]

    def table_name(self, table: str) -> str:
        found = self.wiring.table_named(table)
        if found is None:
            raise UsageError(f"no table {table!r}; the template has {sorted(self.wiring.tables)}")
        return found.name

    def take_messages(self, queue: str) -> list[dict[str, Any]]:
        """Receive and delete every visible message of a queue (e.g. a DLQ); JSON bodies are decoded."""
        local = self._queue(queue)
        self.queues.absorb(local.name, self._need().sqs, self.queue_urls[local.name])
        taken: list[dict[str, Any]] = []
        while batch := local.receive(10):
            local.delete(m["ReceiptHandle"] for m in batch)
            for message in batch:
                with contextlib.suppress(ValueError):
                    message["Body"] = json.loads(message["Body"])
                taken.append(message)
        return taken

    def _queue(self, queue: str) -> LocalQueue:
        return self.queues[self._queue_name(queue, self.queues)]

    def _queue_name(self, queue: str, known: Container[str]) -> str:
        """The name of a template queue (by logical id or name) that `known` holds."""
        found = self.wiring.queue_named(queue)
        if found is None or found.name not in known:
            raise UsageError(f"no queue {queue!r}; the template has {sorted(self.wiring.queues)}")
        return found.name

    def client(self, service: str) -> Any:
        """A boto3 client on the runtime's emulator (for inspection; its calls are not counted)."""
        return self._need().client(service)

    def _need(self) -> Clients:
        if self.clients is None:
            raise _not_started()
        return self.clients


def _per_mapping(pollers: Iterable[SqsPoller | StreamPoller], counter: str) -> dict[str, int]:
    """One poller counter by event source mapping ("Function.EventName")."""
    return {f"{p.source.function}.{p.source.event_name}": getattr(p, counter) for p in pollers}


def _not_started() -> LocalRuntimeError:
    return LocalRuntimeError("the runtime is not started; use start() or `with LocalRuntime(...)`")


def _scheduled_event(name: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": dt.datetime.fromtimestamp(clock.now(), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [name],
        "detail": {},
    }


def _json_response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}
