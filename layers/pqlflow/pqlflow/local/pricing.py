"""What a usage history costs as AWS bills it: the real ingest and qualify handlers, fed as AWS would feed them.

This is the faithful measurement behind `bench/cost_bench.py` and behind `pqlflow replay`'s cost estimate
(docs/cost-model.md). Replay runs the whole application in coarse steps, for speed; its ingest batches then
hold tens of events where AWS's hold about one, so its own counts cannot price ingest. This module prices it
the way it is billed:

- ingest batches are formed from the events' arrival times as the template's IngestTransport forms them
  (`transport_batches`): Firehose's objects of IngestBufferSeconds (`batching.firehose_batches`), or the SQS
  mapping's IngestBatchSize / IngestBatchingWindowSeconds (`batching.sqs_batches`), from its Parameters or the
  overrides given;
- the template's own IngestFunction and QualifyFunction handlers run in-process (`FunctionHost`) on a fresh
  in-process moto, `pqlflow.kernel.clock` set to each invocation's time (caches, the pending window and
  compaction see real time);
- every item write produces the stream record DynamoDB would (NEW_AND_OLD_IMAGES, none for a write that
  changed nothing), filtered by the qualify mapping's FilterCriteria and batched by `BatchWindow`
  (QualifyBatchSize, its MaximumBatchingWindowInSeconds, 6 MB);
- `pqlflow.local.billing.Meter` prices every DynamoDB request by the item's images before and after it and
  every PutEvents by its entries; SQS is priced per request (EventBridge's SendMessage per event, the poller's
  ReceiveMessage and DeleteMessageBatch per 10 messages of each batch); Lambda per invocation and billed
  duration (the handler's CPU time measured, without moto's, scaled by Lambda's CPU share at the function's
  MemorySize, plus a modelled `latency_ms` per AWS request, rounded up to 1 ms).

`price_history(events, settings, sample=N)` prices a history; with more than N accounts it runs the handlers
on a deterministic sample of N accounts (chosen by a hash of the account id) and scales what scales with
events (DynamoDB, PutEvents, Lambda duration) by events / sampled events, while everything that depends on
how full batches are (SQS requests, ingest invocations) is counted on the whole history's batches, and
qualify's invocations by the sample's qualify invocations per ingest batch.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqlflow.kernel import clock
from pqlflow.local import DEFAULT_SAMPLE_ACCOUNTS
from pqlflow.local.batching import PAYLOAD_LIMIT_BYTES, Batch, BatchWindow, firehose_batches, sqs_batches
from pqlflow.local.billing import Bill, Meter, MotoImages, chunks, item_size, sqs_poller_requests
from pqlflow.local.context import LambdaContext
from pqlflow.local.functions import FunctionHost
from pqlflow.local.model import Function, Wiring
from pqlflow.local.moto_json import attribute_json, plain_attribute_values
from pqlflow.local.patterns import filter_criteria_match

ACCOUNT, REGION = "123456789012", "us-east-1"
FULL_VCPU_MB = 1769  # Lambda: one vCPU at 1,769 MB of memory, proportionally less below
DEFAULT_LATENCY_MS = 5.0  # billed wait per AWS request a handler makes (a modelled network time)
SEGMENT_SOURCE = "aws.partner/segment.com/pqlflow"


class _Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


NULL = _Null()  # what the functions print (Powertools logs and EMF metrics) goes nowhere


# ---- the template's settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    ingest_batch_size: int
    ingest_window: float
    qualify_batch_size: int
    qualify_window: float
    ingest_memory: int
    qualify_memory: int
    stream_filters: tuple[dict[str, Any], ...]
    environment: dict[str, str]
    table: str
    bus: str
    table_args: dict[str, Any]
    ingest_function: Function
    qualify_function: Function
    transport: str = "sqs"  # how usage reaches ingest: the template's IngestTransport
    firehose_interval: float = 60.0  # with firehose: the stream's buffer interval (IngestBufferSeconds)
    firehose_mb: int = 5  # with firehose: the stream's buffer size


def covers(wiring: Wiring) -> bool:
    """Whether a template has what pricing runs: pqlflow's IngestFunction on an SQS source and its
    QualifyFunction on the table's stream."""
    return ({"IngestFunction", "QualifyFunction"} <= set(wiring.functions)
            and any(s.function == "IngestFunction" for s in wiring.sqs_sources)
            and any(s.function == "QualifyFunction" for s in wiring.stream_sources))


def template_settings(template: str | Path, root: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> Settings:
    """Everything pricing needs from a template (its Parameters defaults, or `overrides`)."""
    from pqlflow.local.template import load_template

    parameters: dict[str, Any] = {"LogLevel": "INFO"}
    parameters.update(overrides or {})
    wiring = load_template(template, parameters, root=root)
    ingest = wiring.functions["IngestFunction"]
    qualify = wiring.functions["QualifyFunction"]
    sqs = next(s for s in wiring.sqs_sources if s.function == "IngestFunction")
    stream = next(s for s in wiring.stream_sources if s.function == "QualifyFunction")
    table = wiring.table_named(ingest.environment["TABLE_NAME"])
    assert table is not None
    table_args = {"AttributeDefinitions": table.attribute_definitions, "KeySchema": table.key_schema,
                  "BillingMode": "PAY_PER_REQUEST"}  # no stream on moto: the meter reproduces its records
    environment = {**qualify.environment, **ingest.environment}
    environment.pop("POWERTOOLS_SERVICE_NAME", None)
    return Settings(
        ingest_batch_size=sqs.batch_size, ingest_window=float(sqs.batching_window_seconds),
        qualify_batch_size=stream.batch_size, qualify_window=float(stream.batching_window_seconds),
        ingest_memory=ingest.memory_size, qualify_memory=qualify.memory_size,
        stream_filters=stream.filters, environment={k: str(v) for k, v in environment.items()},
        table=ingest.environment["TABLE_NAME"], bus=qualify.environment["EVENT_BUS_NAME"], table_args=table_args,
        ingest_function=ingest, qualify_function=qualify,
        transport=str(wiring.parameters.get("IngestTransport", "sqs")),
        firehose_interval=float(wiring.parameters.get("IngestBufferSeconds", 60)),
    )


# ---- moto, faster on binaries (results unchanged) --------------------------------------------------------


@contextlib.contextmanager
def moto_speedups() -> Iterator[None]:
    """moto's hot spots, with unchanged results, while the pricing run runs:

    - its response serializer walks the API model for every element of a binary set (most of an UpdateItem's
      time on a usage item of fingerprints): AttributeValues are written as plain JSON instead
      (`moto_json.plain_attribute_values`, shared with the replay emulator);
    - its item dict re-sums the whole item's size on every attribute it sets (quadratic in the item: seconds
      per write on a 200 KB item): the 400 KB limit is checked once per UpdateItem / PutItem instead, with
      moto's own error (the write is then not undone: the handler reports the failure and the bench stops);
    - copies and JSON views of AttributeValues (several per UpdateItem) go through copy.deepcopy's generic
      machinery element by element: they are built directly (the same values).
    """
    from moto.dynamodb import exceptions

    from pqlflow.local import moto_transactions

    moto_transactions.install()  # compaction's TransactWriteItems: snapshots of its items, not of the table
    from moto.dynamodb.models import DynamoDBBackend, dynamo_type

    limited: Any = dynamo_type.LimitedSizeDict
    original_setitem = limited.__setitem__
    backend: Any = DynamoDBBackend
    original_update, original_put = backend.update_item, backend.put_item

    def checked(write: Any, error: type[Exception]) -> Any:
        def run(self: Any, table_name: str, key_or_item: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            table = self.get_table(table_name)
            hash_value = dynamo_type.DynamoType(key_or_item[table.hash_key_attr])
            range_value = (dynamo_type.DynamoType(key_or_item[table.range_key_attr])
                           if table.range_key_attr and table.range_key_attr in key_or_item else None)
            del hash_value, range_value
            item = write(self, table_name, key_or_item, *args, **kwargs)
            if item is not None and item.size() > 405_000:  # moto's own limit (LimitedSizeDict)
                raise error()
            return item

        return run

    dynamo: Any = dynamo_type.DynamoType
    sets = ("SS", "NS", "BS")
    originals = (dynamo.__deepcopy__, dynamo.to_regular_json, dynamo.size)

    def fast_copy(value: Any) -> Any:
        result = dynamo.__new__(dynamo)
        kind = result.type = value.type
        inner = value.value
        if kind == "L":
            result.value = [fast_copy(v) for v in inner]
        elif kind == "M":
            result.value = {k: fast_copy(v) for k, v in inner.items()}
        elif kind in sets:
            result.value = list(inner)
        else:
            result.value = inner
        return result

    def regular_json(self: Any) -> dict[str, Any]:
        kind, inner = self.type, self.value
        if kind == "M":
            value: Any = {k: v.to_regular_json() if isinstance(v, dynamo) else copy.deepcopy(v)
                          for k, v in inner.items()}
        elif kind == "L":
            value = [v.to_regular_json() if isinstance(v, dynamo) else copy.deepcopy(v) for v in inner]
        elif kind in sets:
            value = list(inner)
        else:
            value = inner
            if kind == "B" and isinstance(value, str):
                value = base64.b64decode(value)
        return {kind: value}

    def size(self: Any) -> int:  # moto's own size rule, without re-wrapping every element
        kind, inner = self.type, self.value
        if kind in ("BS", "SS"):
            return sum(len(v) if isinstance(v, bytes) else len(v.encode("utf-8")) for v in inner)
        if kind == "NS":
            return sum(len(str(v)) for v in inner)
        if kind == "N":
            return len(str(inner))
        if kind == "M" and all(isinstance(v, dynamo) for v in inner.values()):
            return sum(len(k.encode("utf-8")) + v.size() for k, v in inner.items())
        if kind == "L" and all(isinstance(v, dynamo) for v in inner):
            return sum(v.size() for v in inner)
        return int(originals[2](self))

    # UpdateItem copies the item twice before it runs: for the response (only ReturnValues ALL_OLD and
    # UPDATED_* use that copy) and for the table's stream (the bench's table has none: the meter is it).
    from moto.dynamodb import models as _models
    from moto.dynamodb import responses as _responses

    ddb_models: Any = _models
    ddb_responses: Any = _responses

    class _NoCopy:
        def __init__(self, real: Any, result: Callable[[Any], Any]) -> None:
            self.real, self.result = real, result

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            return self.result(value)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    handler_cls: Any = ddb_responses.DynamoHandler
    original_handler_update = handler_cls.update_item
    model_update = backend.update_item

    def handler_update(self: Any) -> Any:
        if self.body.get("ReturnValues", "NONE") not in ("NONE", "ALL_NEW"):
            return original_handler_update(self)
        ddb_responses.copy = _NoCopy(copy, lambda value: None)
        try:
            return original_handler_update(self)
        finally:
            ddb_responses.copy = copy

    def backend_update(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
        if self.get_table(table_name).stream_shard is not None:
            return model_update(self, table_name, *args, **kwargs)
        before = ddb_models.copy  # moto's, or pqlflow.local.moto_transactions' stand-in: put back as found
        ddb_models.copy = _NoCopy(before, lambda value: value)
        try:
            return model_update(self, table_name, *args, **kwargs)
        finally:
            ddb_models.copy = before

    handler_cls.update_item = handler_update
    # and the response's AttributeValues are turned into plain JSON leaf by leaf through generic checks
    original_to_dict = ddb_responses.dynamo_to_dict

    def to_dict(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {k: to_dict(v) for k, v in value.items()}
        if kind is list:
            return [to_dict(v) for v in value]
        if kind is str or kind is int or kind is bool or value is None:
            return value
        return original_to_dict(value)

    ddb_responses.dynamo_to_dict = to_dict

    # Two validators of UpdateExpression walk the whole tree from every node of it (quadratic in the clauses):
    # what they check on a sub-expression is a subset of what they check on the root, so the root alone is
    # checked (the same expressions are refused).
    from moto.dynamodb.parsing import ast_nodes as _ast_nodes
    from moto.dynamodb.parsing import validators

    ast_nodes: Any = _ast_nodes

    whole_tree = (validators.ActionCountValidator, validators.OverlappingPathsValidator)
    original_traverse = [cls.traverse for cls in whole_tree]

    def root_only(check: str) -> Any:
        def traverse(self: Any, node: Any) -> Any:
            if isinstance(node, ast_nodes.UpdateExpression):
                return getattr(self, check)(node)
            return node

        return traverse

    validators.ActionCountValidator.traverse = root_only("verify_action_counts")
    validators.OverlappingPathsValidator.traverse = root_only("check_for_overlapping_paths")
    dynamo.__deepcopy__ = lambda self, memo: fast_copy(self)
    dynamo.to_regular_json = regular_json
    dynamo.size = size
    limited.__setitem__ = dict.__setitem__
    backend.update_item = checked(backend_update, exceptions.ItemSizeToUpdateTooLarge)
    backend.put_item = checked(original_put, exceptions.ItemSizeTooLarge)
    try:
        with plain_attribute_values():
            yield
    finally:
        limited.__setitem__ = original_setitem
        backend.update_item, backend.put_item = original_update, original_put
        handler_cls.update_item = original_handler_update
        ddb_responses.dynamo_to_dict = original_to_dict
        dynamo.__deepcopy__, dynamo.to_regular_json, dynamo.size = originals
        for cls, traverse in zip(whole_tree, original_traverse, strict=True):
            cls.traverse = traverse


def wire(item: dict[str, Any]) -> dict[str, Any]:
    """An image as Lambda delivers it in a stream event (JSON: binaries as base64 text)."""
    return {name: attribute_json(value) or value for name, value in item.items()}



# ---- traffic ---------------------------------------------------------------------------------------------


def sqs_record(body: str, index: int = 0) -> dict[str, Any]:
    digest = hashlib.sha1(f"{index}:{body}".encode()).hexdigest()  # noqa: S324 - an id, not a secret
    return {
        "messageId": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
        "receiptHandle": f"rh-{digest}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),  # noqa: S324 - SQS's own checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:pqlflow-UsageQueue",
        "awsRegion": REGION,
    }


@dataclass
class Event:
    """A usage event as it arrives on the usage queue: its arrival time and the Segment message."""

    arrival_ms: int
    message: dict[str, Any]
    source: str = SEGMENT_SOURCE
    detail_type: str | None = None
    _record: dict[str, Any] | None = None

    def record(self, index: int = 0) -> dict[str, Any]:
        """The SQS record: the EventBridge event as Segment's destination sends it, as the message body."""
        if self._record is None:
            m = self.message
            envelope = {
                "version": "0", "id": hashlib.md5(str(m.get("messageId")).encode()).hexdigest(),  # noqa: S324
                "detail-type": self.detail_type or m.get("type", "track"), "source": self.source,
                "account": ACCOUNT, "time": m.get("timestamp", ""), "region": REGION, "resources": [], "detail": m,
            }
            self._record = sqs_record(json.dumps(envelope, separators=(",", ":")), index)
        return self._record

    @property
    def body_bytes(self) -> int:
        return len(self.record()["body"].encode())

    @property
    def record_bytes(self) -> int:
        return len(json.dumps(self.record()))


def message_account(message: dict[str, Any]) -> str:
    context = message.get("context") if isinstance(message.get("context"), dict) else {}
    return str((context or {}).get("groupId") or message.get("groupId") or message.get("userId")
               or message.get("anonymousId") or "")


# ---- the measured system ---------------------------------------------------------------------------------


@dataclass
class Measured:
    """What one system cost on one traffic."""

    name: str
    events: int
    bill: Bill
    meter: Meter
    ingest_batches: int
    qualify_batches: int = 0
    stream_records: int = 0
    filtered_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def forget_process_caches() -> None:
    """Shared modules keep per-cold-start state at module level (settings, qualify's definition store); in one
    process a new run is a new cold start, and simulated time may run backwards between runs, which a
    time-based cache cannot tell."""
    import pqlflow.kernel.settings
    import pqlflow.qualify.tracking

    for value in vars(pqlflow.kernel.settings).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    if hasattr(pqlflow.qualify.tracking, "_store"):
        pqlflow.qualify.tracking._store = None


def add_sqs_and_invocations(bill: Bill, events: Sequence[Event], batches: Sequence[Batch]) -> None:
    """SQS as billed: EventBridge's SendMessage per event, the poller's receives and deletes per batch."""
    bill.add("SQS", "SendMessage (EventBridge target)", sum(chunks(e.body_bytes) for e in events), "requests",
             len(events))
    receives = deletes = 0
    for b in batches:
        r = sqs_poller_requests([e.body_bytes for e in events[b.start:b.stop]])
        receives += r["ReceiveMessage"]
        deletes += r["DeleteMessageBatch"]
    bill.add("SQS", "ReceiveMessage (Lambda poller)", receives, "requests", receives)
    bill.add("SQS", "DeleteMessageBatch (Lambda poller)", deletes, "requests", deletes)


TRANSPORTS = ("sqs", "firehose", "kinesis", "lambda")
FIREHOSE_RECORD_BYTES = 5 * 1024  # Firehose bills each record rounded up to 5 KB
KINESIS_PUT_UNIT_BYTES = 25 * 1024
KINESIS_SHARD_RECORDS_PER_S, KINESIS_SHARD_BYTES_PER_S = 1000, 1024 * 1024  # one shard's write capacity


OBJECTS_BUCKET = "pqlflow-usage-objects"


def firehose_object(bodies: Sequence[str]) -> bytes:
    """An object as the Firehose stream writes it: each event's JSON and a newline, gzip-compressed."""
    return gzip.compress("".join(b + "\n" for b in bodies).encode(), compresslevel=6)


def object_created(bucket: str, key: str, size: int) -> dict[str, Any]:
    """The Object Created event (S3 → EventBridge) the template's UsageObjectsRule invokes ingest with."""
    return {"version": "0", "id": hashlib.md5(key.encode()).hexdigest(),  # noqa: S324 - an id, not a secret
            "detail-type": "Object Created", "source": "aws.s3", "account": ACCOUNT, "time": "", "region": REGION,
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key, "size": size},
                       "reason": "PutObject"}}


def transport_batches(transport: str, events: Sequence[Event], settings: Settings,
                      firehose_interval: float | None = None, firehose_mb: int | None = None) -> list[Batch]:
    """The ingest invocations a transport makes from EventBridge to the ingest function:

    - ``sqs`` (the template's): the queue's event source mapping (BatchSize, MaximumBatchingWindowInSeconds);
    - ``kinesis``: a Kinesis stream target with the same mapping settings, one shard (a shard's batches are
      formed like a queue's);
    - ``firehose``: a Firehose stream delivering to S3 (buffer interval and size), the bucket notifying the
      function once per object;
    - ``lambda``: the function as the rule's target, invoked asynchronously once per event.

    Firehose's buffer interval and size default to the template's (`settings`).
    """
    arrivals = [e.arrival_ms for e in events]
    if transport in ("sqs", "kinesis"):
        return sqs_batches(arrivals, settings.ingest_batch_size, settings.ingest_window,
                           [e.record_bytes for e in events])
    if transport == "firehose":
        interval = settings.firehose_interval if firehose_interval is None else firehose_interval
        size_mb = settings.firehose_mb if firehose_mb is None else firehose_mb
        return firehose_batches(arrivals, interval, size_mb, [e.body_bytes for e in events])
    if transport == "lambda":
        return sqs_batches(arrivals, 1, 0)
    raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")


def add_transport(bill: Bill, transport: str, events: Sequence[Event], batches: Sequence[Batch],
                  span_ms: int | None = None) -> None:
    """What moving `events` from EventBridge to ingest costs on `transport` (see `transport_batches`); the
    ingest function's own requests (S3 GetObject of a Firehose object) are metered, its invocations and
    duration added by `Bill.add_invocations`.

    Kinesis is billed by the hour whatever flows: a provisioned stream has as many shards as the average
    rate over `span_ms` (default: first to last arrival, at least an hour) needs, at least one.
    """
    if transport == "sqs":
        add_sqs_and_invocations(bill, events, batches)
    elif transport == "firehose":
        rounded = sum(math.ceil(e.body_bytes / FIREHOSE_RECORD_BYTES) * FIREHOSE_RECORD_BYTES for e in events)
        bill.add("Firehose", "ingestion (EventBridge target, 5 KB/record)", rounded / 1024**3, "GB", len(events))
        bill.add("S3", "PutObject (Firehose delivery)", len(batches), "PUTs", len(batches))
        # the object's Object Created event: an S3 data event on the default bus (billed like a custom event)
        bill.add("EventBridge", "Object Created (S3, per object)", len(batches), "events", len(batches))
    elif transport == "kinesis":
        if span_ms is None:
            span_ms = max(3_600_000, events[-1].arrival_ms - events[0].arrival_ms) if events else 3_600_000
        seconds = span_ms / 1000
        per_s = len(events) / seconds
        bytes_per_s = sum(e.body_bytes for e in events) / seconds
        shards = max(1, math.ceil(per_s / KINESIS_SHARD_RECORDS_PER_S),
                     math.ceil(bytes_per_s / KINESIS_SHARD_BYTES_PER_S))
        bill.add("Kinesis", f"shard-hours ({shards} shard{'s' if shards > 1 else ''}, provisioned)",
                 shards * seconds / 3600, "shard-hours")
        units = sum(math.ceil(e.body_bytes / KINESIS_PUT_UNIT_BYTES) for e in events)
        bill.add("Kinesis", "PUT payload units (EventBridge target)", units, "PUT payload units", len(events))
    elif transport != "lambda":
        raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")


def cpu_scale(memory_mb: int, override: float | None) -> float:
    """How much slower than one full core of this machine a handler runs in Lambda: Lambda gives a function
    CPU in proportion to its memory, one vCPU at 1,769 MB."""
    return override if override is not None else max(1.0, FULL_VCPU_MB / memory_mb)


class Faithful:
    """The template's ingest and qualify handlers, fed as the event source mappings would feed them, metered.
    Use inside `mock_aws()` (and `moto_speedups()`): `start()` creates the table and the bus."""

    def __init__(self, settings: Settings, latency_ms: float = DEFAULT_LATENCY_MS,
                 cpu_scale: float | None = None) -> None:
        self.s = settings
        self.latency_ms = latency_ms
        self.cpu_scale = cpu_scale
        self.changes: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None, int]] = []
        self.meter = Meter(MotoImages(ACCOUNT, REGION), on_change=self._changed)
        self.sequence = 0
        self.now_ms = 0
        self._session_before: Any = None
        self.hosts = {"ingest": FunctionHost(settings.ingest_function),
                      "qualify": FunctionHost(settings.qualify_function)}
        self.transport = "sqs"
        self._objects: Any = None  # Firehose's own S3 client (its PutObject is priced per object, not metered)
        self._object_count = 0

    def start(self) -> None:
        import boto3

        session = boto3.session.Session(region_name=REGION)
        self._session_before = boto3.DEFAULT_SESSION
        boto3.DEFAULT_SESSION = session  # the handlers' clients (boto3.client) come from the metered session
        plain = session.client("dynamodb")  # control plane: created before the meter is attached
        plain.create_table(TableName=self.s.table, **self.s.table_args)
        session.client("events").create_event_bus(Name=self.s.bus)
        self._objects = boto3.session.Session(region_name=REGION).client("s3")  # not metered: Firehose's
        self._objects.create_bucket(Bucket=OBJECTS_BUCKET)
        self.meter.attach(session.events)
        forget_process_caches()
        clock.set_source(lambda: self.now_ms / 1000)

    def stop(self) -> None:
        import boto3

        clock.set_source(None)
        self.meter.detach()
        boto3.DEFAULT_SESSION = self._session_before
        for host in self.hosts.values():
            host.unload()

    def _changed(self, table: str, key: dict[str, Any], old: dict[str, Any] | None,
                 new: dict[str, Any] | None) -> None:
        self.changes.append((key, old, new, sum(self.meter.last_write_sizes)))

    def _invoke(self, function: str, event: dict[str, Any], at_ms: int) -> dict[str, Any]:
        self.now_ms = at_ms
        fn = self.hosts[function].function
        context = LambdaContext(function_name=fn.name, memory_limit_in_mb=fn.memory_size, timeout_seconds=fn.timeout)
        with contextlib.redirect_stdout(NULL), self.meter.invocation(function):
            response = self.hosts[function].invoke(event, context)
        if (response or {}).get("batchItemFailures"):
            raise RuntimeError(f"{function} reported failures: {response['batchItemFailures'][:3]}")
        return dict(response or {})

    def ingest(self, events: Sequence[Event], at_ms: int) -> None:
        if self.transport == "firehose":
            self._object_count += 1
            key = f"usage/{self._object_count:09d}.gz"
            data = firehose_object([e.record()["body"] for e in events])
            self._objects.put_object(Bucket=OBJECTS_BUCKET, Key=key, Body=data)
            self._invoke("ingest", object_created(OBJECTS_BUCKET, key, len(data)), at_ms)
            return
        self._invoke("ingest", {"Records": [e.record(i) for i, e in enumerate(events)]}, at_ms)

    def qualify(self, records: list[dict[str, Any]], at_ms: int) -> None:
        self._invoke("qualify", {"Records": records}, at_ms)

    def stream_records(self, at_ms: int) -> list[dict[str, Any]]:
        """The stream records of the writes since the last call (what the mapping reads from the shard)."""
        out = []
        for key, old, new, size in self.changes:
            self.sequence += 1
            change: dict[str, Any] = {"ApproximateCreationDateTime": at_ms // 1000, "Keys": wire(key),
                                      "SequenceNumber": f"{self.sequence:021d}",
                                      "SizeBytes": item_size(key) + size,
                                      "StreamViewType": "NEW_AND_OLD_IMAGES"}
            if new is not None:
                change["NewImage"] = wire(new)
            if old is not None:
                change["OldImage"] = wire(old)
            out.append({"eventID": f"{self.sequence:032x}",
                        "eventName": "INSERT" if old is None else "REMOVE" if new is None else "MODIFY",
                        "eventVersion": "1.1", "eventSource": "aws:dynamodb", "awsRegion": REGION,
                        "dynamodb": change,
                        "eventSourceARN": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.s.table}/stream/x"})
        self.changes.clear()
        return out

    # -- setup traffic, not priced --

    def fold_history(self, batches: list[list[Event]], at: Callable[[list[Event]], int]) -> None:
        self.meter.enabled = False
        try:
            for batch in batches:
                for i in range(0, len(batch), 10_000):
                    part = sorted(batch[i:i + 10_000], key=lambda e: e.arrival_ms)
                    self.ingest(part, at(batch))
                for e in batch:
                    e._record = None  # keep memory flat
        finally:
            self.meter.enabled = True
            self.changes.clear()

    def settle_qualification(self, accounts: list[str], at_ms: int) -> None:
        """Qualify every account once on its current usage item (its state before the measured traffic)."""
        self.meter.enabled = False
        try:
            images = MotoImages(ACCOUNT, REGION)
            for a in accounts:
                key = {"pk": {"S": f"A#{a}"}, "sk": {"S": "USAGE"}}
                item = images.get(self.s.table, key)
                if item is not None:
                    self.changes.append((key, None, item, 0))
            records = [r for r in self.stream_records(at_ms) if filter_criteria_match(self.s.stream_filters, r)]
            for i in range(0, len(records), 100):
                self.qualify(records[i:i + 100], at_ms)
        finally:
            self.meter.enabled = True
            self.changes.clear()

    # -- the measured traffic --

    def run(self, name: str, events: list[Event], batches: list[Batch] | None = None,
            transport: str = "sqs", span_ms: int | None = None) -> Measured:
        """Feed `events` (sorted by arrival) in `batches` (default: those the template's mapping forms), priced
        as arriving over `transport` (`add_transport`)."""
        s = self.s
        if batches is None:
            batches = transport_batches(transport, events, s)
        self.transport = transport
        window = BatchWindow(s.qualify_batch_size, s.qualify_window, PAYLOAD_LIMIT_BYTES)
        pending: deque[dict[str, Any]] = deque()
        qualify_batches = [0]
        counts = {"stream": 0, "filtered": 0}

        def run_qualify(closed: list[Batch]) -> None:
            for b in closed:
                records = [pending.popleft() for _ in range(b.size)]
                self.qualify(records, b.invoked_ms)
                qualify_batches[0] += 1

        with self.meter.emulator_excluded():
            for b in batches:
                run_qualify(window.due(b.invoked_ms))
                self.ingest(events[b.start:b.stop], b.invoked_ms)
                for record in self.stream_records(b.invoked_ms):
                    counts["stream"] += 1
                    if not filter_criteria_match(s.stream_filters, record):
                        counts["filtered"] += 1
                        continue
                    pending.append(record)
                    run_qualify(window.add(b.invoked_ms, len(json.dumps(record))))
                for e in events[b.start:b.stop]:
                    e._record = None
            run_qualify(window.flush())
        stream_total, filtered = counts["stream"], counts["filtered"]
        # qualify's own writes (PQL state) produce stream records too: filtered out, never an invocation
        for record in self.stream_records(self.now_ms):
            stream_total += 1
            filtered += not filter_criteria_match(s.stream_filters, record)
        bill = Bill()
        add_transport(bill, transport, events, batches, span_ms)
        invs = self.meter.invocations
        for fn, memory in (("ingest", s.ingest_memory), ("qualify", s.qualify_memory)):
            bill.add_invocations(fn, [i for i in invs if i.function == fn], memory, self.latency_ms,
                                 cpu_scale(memory, self.cpu_scale))
        self.meter.add_to(bill)
        return Measured(name, len(events), bill, self.meter, len(batches), qualify_batches[0], stream_total,
                        filtered, {"batches": batches})


# ---- a history's price -----------------------------------------------------------------------------------


def sample_accounts(accounts: Sequence[str], n: int) -> set[str]:
    """`n` of `accounts`, chosen by a hash of the id: the same accounts whatever the order or the history."""
    ranked = sorted(set(accounts), key=lambda a: hashlib.blake2b(a.encode(), digest_size=8).digest())
    return set(ranked[:n])


@dataclass
class PricedHistory:
    """The faithful price of a history's ingest and qualify (scaled from a sample when one was taken)."""

    events: int
    accounts: int
    sampled_events: int
    sampled_accounts: int
    bill: Bill
    measured: Measured  # the sample's own run, unscaled
    ingest_batches: int  # of the whole history
    transport: str = "sqs"  # how usage reached ingest (Settings.transport)

    @property
    def per_million(self) -> float:
        return self.bill.per_million(self.events)

    def to_dict(self) -> dict[str, Any]:
        per = {f"{line.service} {line.operation}": {
            "units": round(line.units, 3), "unit": line.unit,
            "per_million_events": line.cost(self.bill.prices) / self.events * 1e6 if self.events else 0.0}
            for line in self.bill.lines.values()}
        by_service = {svc: self.bill.per_million(self.events, svc) for svc in sorted({k[0] for k in self.bill.lines})}
        m = self.measured
        return {"events": self.events, "accounts": self.accounts, "sampled_events": self.sampled_events,
                "transport": self.transport,
                "sampled_accounts": self.sampled_accounts, "ingest_batches": self.ingest_batches,
                "events_per_batch": self.events / self.ingest_batches if self.ingest_batches else None,
                "writes_per_event": m.meter.write_requests("ingest") / m.events if m.events else None,
                "wru_per_event": m.meter.wru() / m.events if m.events else None,
                "per_million_by_service": by_service, "lines": per, "per_million_events": self.per_million}


def price_history(events: Sequence[Event], settings: Settings, *, sample: int | None = DEFAULT_SAMPLE_ACCOUNTS,
                  latency_ms: float = DEFAULT_LATENCY_MS, cpu_scale: float | None = None) -> PricedHistory:
    """The faithful price of `events` (sorted by arrival) through ingest and qualify, on a fresh moto.

    `sample`: at most this many accounts run through the handlers (None: all); see the module docstring."""
    from moto import mock_aws  # a dev dependency: only the local tools price

    events = list(events)
    transport = settings.transport
    full = transport_batches(transport, events, settings)
    accounts = [message_account(e.message) for e in events]
    distinct = set(accounts)
    keep = distinct if sample is None or len(distinct) <= sample else sample_accounts(list(distinct), sample)
    picked: list[Event] = []
    batches: list[Batch] = []
    for b in full:
        start = len(picked)
        picked += [events[i] for i in range(b.start, b.stop) if accounts[i] in keep]
        if len(picked) > start:
            batches.append(Batch(start, len(picked), b.opened_ms, b.invoked_ms, b.closed_by))
    with mock_aws(), moto_speedups():
        run = Faithful(settings, latency_ms, cpu_scale)
        run.start()
        try:
            measured = run.run("history", picked, batches, transport=transport)
        finally:
            run.stop()
    scale = len(events) / len(picked) if picked else 0.0
    bill = Bill()
    add_transport(bill, transport, events, full)
    transport_lines = set(bill.lines)
    per_batch = len(full) / len(batches) if batches else 0.0
    for (service, operation), line in measured.bill.lines.items():
        if (service, operation) in transport_lines:
            continue
        if operation in ("requests (ingest)", "GetObject (ingest)"):  # one per ingest invocation (object)
            bill.add(service, operation, len(full), line.unit, len(full))
        elif operation == "requests (qualify)":
            bill.add(service, operation, line.units * per_batch, line.unit, round(line.requests * per_batch))
        else:
            bill.add(service, operation, line.units * scale, line.unit, round(line.requests * scale))
    return PricedHistory(len(events), len(distinct), len(picked), len(keep), bill, measured, len(full), transport)
