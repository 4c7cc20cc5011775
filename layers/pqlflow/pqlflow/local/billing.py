"""Price what handlers really do, the way AWS bills it: a meter on boto3 clients, and the units it counts.

`Meter` is a botocore event hook (`before-call.*.*` / `after-call.*.*`) on a client's or a session's event
system: every request a handler makes is seen as it is sent and answered, on moto or on AWS. For DynamoDB
it reads each written item's image before and after the write with a separate, un-metered `ImageSource`
(moto's backend, or another client), so a write is billed by the item sizes it really had:

- **Item size** (`item_size`), from the AWS Developer Guide, "DynamoDB item sizes and formats"
  (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html): the sum
  over attributes of the UTF-8 length of the name plus the value's size — S: its UTF-8 length; N: about
  one byte per two significant digits (leading and trailing zeros trimmed) plus one; B: its raw byte length
  (not the base64 text); BOOL and NULL: 1; L and M: 3 bytes of overhead, plus 1 byte per element and the
  elements' sizes (a map element's name included). The guide gives no overhead for sets (SS, NS, BS): a
  set is the sum of its elements' sizes.
- **Writes** (on-demand; the guide's "DynamoDB read and write operations"): PutItem, UpdateItem and
  DeleteItem cost ceil(max(size before, size after) / 1 KB) write request units (WRU), at least 1; a
  conditional write whose condition fails still costs the existing item's size (at least 1). BatchWriteItem
  bills each processed item the same way (unprocessed items are free). TransactWriteItems bills each action
  twice (ConditionCheck actions included, by the size of the item checked).
- **Reads**: GetItem ceil(size / 4 KB) read request units (RRU), at least 1 even when the item does not
  exist, half of it when eventually consistent (the default); projections do not reduce the size. BatchGetItem
  bills each key so. Query and Scan bill the total size of the items returned, rounded up to 4 KB once
  (at least 1 unit); a FilterExpression's discarded items are not seen by the meter, so such a read is
  under-counted (pqlflow's hot paths do not filter). TransactGetItems: twice a strongly consistent read.
- Not priced: storage, streams (Lambda's reads of a table's stream are free), global secondary indexes
  (pqlflow's table has none; each would bill its own writes), control-plane calls (CreateTable ...).

EventBridge PutEvents bills every successful entry per 64 KB chunk of its size (Source + DetailType + Detail
+ Resources, + 14 bytes for a Time); SQS bills every request per 64 KB chunk. The SQS requests Lambda's
poller makes, and Lambda's own bill, are not client calls of the handler: `sqs_poller_requests`,
`lambda_billed_ms` and `Bill` price them from the batches `pqlflow.local.batching` forms.

Prices are `pqlflow.local.cost.PRICES` (us-east-1 on-demand list prices).

`Meter.invocation(function)` brackets a handler call: requests made inside are attributed to the function,
and the handler's CPU time is measured (thread time) minus the meter's own work and, inside
`Meter.emulator_excluded()`, minus the time in-process moto takes to answer (what remains is what the handler
itself computes, botocore's serializing and parsing included, as in Lambda).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pqlflow.local.cost import PRICES

KB = 1024
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
CHUNK_BYTES = 64 * 1024  # SQS requests and EventBridge events are billed per 64 KB chunk
SQS_MESSAGES_PER_RECEIVE = 10
PUT_EVENTS_TIME_BYTES = 14

WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
METER_KEY = "pqlflow.meter"  # where the meter keeps a call's state in botocore's request context

Item = Mapping[str, Any]  # a DynamoDB item as AttributeValues ({"pk": {"S": "A#x"}, ...})
ChangeHook = Callable[[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None], None]


# ---- sizes and units ----------------------------------------------------------------------------


def _utf8(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _binary(value: Any) -> int:
    """Raw byte length of a B value: bytes from boto3, base64 text on the wire and in stream events."""
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, str):
        n = len(value)
        return n // 4 * 3 - (value.endswith("==") + value.endswith("=")) if n else 0
    inner = getattr(value, "value", None)  # boto3.dynamodb.types.Binary
    if isinstance(inner, bytes | bytearray):
        return len(inner)
    raise TypeError(f"not a binary value: {type(value).__name__}")


def number_size(text: Any) -> int:
    """Bytes DynamoDB counts for a number: 1 per two significant digits (rounded up), plus 1."""
    digits = str(text).lstrip("+-").lower().split("e", 1)[0].replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one AttributeValue, without its attribute name."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return _utf8(inner)
    if kind == "N":
        return number_size(inner)
    if kind == "B":
        return _binary(inner)
    if kind == "BS":
        return sum(_binary(v) for v in inner)
    if kind == "SS":
        return sum(_utf8(v) for v in inner)
    if kind == "NS":
        return sum(number_size(v) for v in inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(_utf8(name) + 1 + value_size(v) for name, v in inner.items())
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def item_size(item: Item | None) -> int:
    """Bytes of an item by DynamoDB's rules (0 for no item)."""
    if not item:
        return 0
    return sum(_utf8(name) + value_size(value) for name, value in item.items())


def write_units(*sizes: int) -> int:
    """WRU of one item write: the larger image, per started KB, at least 1."""
    return max(1, math.ceil(max(sizes, default=0) / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool = False) -> float:
    """RRU of reading `size` bytes: per started 4 KB, at least 1; half when eventually consistent."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


def chunks(size: int) -> int:
    """64 KB chunks of a payload (SQS requests, EventBridge events), at least 1."""
    return max(1, math.ceil(size / CHUNK_BYTES))


def put_events_entry_bytes(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge bills it (the guide's "Calculating PutEvents event entry size")."""
    size = PUT_EVENTS_TIME_BYTES if entry.get("Time") is not None else 0
    for name in ("Source", "DetailType", "Detail"):
        if entry.get(name):
            size += _utf8(str(entry[name]))
    return size + sum(_utf8(str(r)) for r in entry.get("Resources") or [])


def sqs_poller_requests(message_bytes: Sequence[int]) -> dict[str, int]:
    """The SQS requests Lambda's poller makes for one batch: ReceiveMessage and DeleteMessageBatch per 10
    messages (a receive is billed per 64 KB of what it returns). Optimistic: a poller filling a batch over a
    window as messages trickle in receives more often than this."""
    receives = sum(
        chunks(sum(message_bytes[i : i + SQS_MESSAGES_PER_RECEIVE]))
        for i in range(0, len(message_bytes), SQS_MESSAGES_PER_RECEIVE)
    )
    return {"ReceiveMessage": receives, "DeleteMessageBatch": math.ceil(len(message_bytes) / SQS_MESSAGES_PER_RECEIVE)}


def lambda_billed_ms(cpu_seconds: float, aws_requests: int = 0, aws_latency_ms: float = 0.0,
                     cpu_scale: float = 1.0) -> int:
    """Billed duration of one invocation, in whole ms (Lambda rounds up to 1 ms): the handler's own CPU time
    (× `cpu_scale`: Lambda's CPU share is proportional to memory, one vCPU at 1,769 MB) plus the time it waits
    on its AWS requests (`aws_latency_ms` each). Both factors are model inputs, not measurements."""
    return max(1, math.ceil(cpu_seconds * cpu_scale * 1000 + aws_requests * aws_latency_ms - 1e-9))


# ---- images -------------------------------------------------------------------------------------


class ImageSource(Protocol):
    """Reads items without being metered (the meter's view of the table)."""

    def key_names(self, table: str) -> tuple[str, ...]: ...

    def get(self, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None: ...


class ClientImages:
    """Images through a boto3 DynamoDB client that is NOT metered (one from another boto3 Session)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._keys: dict[str, tuple[str, ...]] = {}

    def key_names(self, table: str) -> tuple[str, ...]:
        if table not in self._keys:
            schema = self.client.describe_table(TableName=table)["Table"]["KeySchema"]
            self._keys[table] = tuple(k["AttributeName"] for k in schema)
        return self._keys[table]

    def get(self, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        plain = {name: _bytes_values(value) for name, value in key.items()}
        item: dict[str, Any] | None = self.client.get_item(TableName=table, Key=plain, ConsistentRead=True).get("Item")
        return item


class MotoImages:
    """Images straight from moto's in-process DynamoDB backend (no request, no serialization: fast)."""

    def __init__(self, account: str = "123456789012", region: str = "us-east-1") -> None:
        from moto.dynamodb.models import dynamodb_backends

        self.backend: Any = dynamodb_backends[account][region]

    def key_names(self, table: str) -> tuple[str, ...]:
        t = self.backend.get_table(table)
        return (t.hash_key_attr,) + ((t.range_key_attr,) if t.range_key_attr else ())

    def get(self, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        item = self.backend.get_item(table, dict(key))
        if item is None:
            return None
        attributes: dict[str, Any] = item.to_json()["Attributes"]
        return attributes


def _bytes_values(value: Mapping[str, Any]) -> dict[str, Any]:
    import base64

    ((kind, inner),) = value.items()
    if kind == "B" and isinstance(inner, str):
        return {"B": base64.b64decode(inner)}
    return dict(value)


def _normal(value: Any) -> Any:
    """An AttributeValue in a form where equal items compare equal (sets unordered, binaries as bytes)."""
    ((kind, inner),) = value.items()
    if kind == "B":
        return ("B", _as_bytes(inner))
    if kind == "BS":
        return ("BS", frozenset(_as_bytes(v) for v in inner))
    if kind in ("SS", "NS"):
        return (kind, frozenset(inner))
    if kind == "M":
        return ("M", {k: _normal(v) for k, v in inner.items()})
    if kind == "L":
        return ("L", [_normal(v) for v in inner])
    return (kind, inner)


def _as_bytes(value: Any) -> bytes:
    import base64

    return bytes(value) if not isinstance(value, str) else base64.b64decode(value)


def same_item(a: Item | None, b: Item | None) -> bool:
    """Whether two images are the same item (a write that changed nothing writes no stream record)."""
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    if a.keys() != b.keys():
        return False
    return all(_normal(a[k]) == _normal(b[k]) for k in a)


# ---- the meter ----------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One handler call as Lambda would bill it (`Meter.invocation`)."""

    function: str
    cpu_seconds: float = 0.0  # thread CPU time of the handler, minus the emulator's and the meter's
    aws_seconds: float = 0.0  # thread CPU time of the emulator (see `emulator_excluded`) and the meter
    aws_requests: int = 0


@dataclass
class _Call:
    service: str
    operation: str
    request: dict[str, Any] = field(default_factory=dict)
    before: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)


class Meter:
    """Counts and prices the AWS requests made through the event systems it is attached to.

    `images` reads items un-metered (required for DynamoDB writes); `on_change(table, key, old, new)` is
    called for every write that changed an item, in order (the table's stream: NEW_AND_OLD_IMAGES).
    Totals are by (function, service, operation); `enabled = False` stops counting (setup traffic).
    """

    def __init__(self, images: ImageSource | None = None, on_change: ChangeHook | None = None) -> None:
        self.images = images
        self.on_change = on_change
        self.enabled = True
        self.function = "unattributed"
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.units: defaultdict[tuple[str, str, str, str], float] = defaultdict(float)  # + unit
        self.write_bytes: defaultdict[tuple[str, str], list[int]] = defaultdict(list)  # (function, kind)
        self.excluded_seconds = 0.0
        self.total_requests = 0
        self.last_write_sizes = (0, 0)  # item bytes before and after the last write (for `on_change`)
        self.invocations: list[Invocation] = []
        self._emitters: list[Any] = []

    # -- wiring --

    def attach(self, events: Any) -> Meter:
        """Hook into a botocore event system: `client.meta.events`, or `boto3.Session().events` (every
        client the session creates afterwards)."""
        events.register("before-call.*.*", self._before, unique_id=f"pqlflow-meter-before-{id(self)}")
        events.register("after-call.*.*", self._after, unique_id=f"pqlflow-meter-after-{id(self)}")
        self._emitters.append(events)
        return self

    def detach(self) -> None:
        for events in self._emitters:
            events.unregister("before-call.*.*", unique_id=f"pqlflow-meter-before-{id(self)}")
            events.unregister("after-call.*.*", unique_id=f"pqlflow-meter-after-{id(self)}")
        self._emitters.clear()

    @contextmanager
    def invocation(self, function: str) -> Iterator[Invocation]:
        """Attribute the requests made inside to `function` and measure its CPU time (one Lambda invoke)."""
        stats = Invocation(function)
        previous = self.function
        self.function = function
        excluded, requests = self.excluded_seconds, self.total_requests
        started = time.thread_time()
        try:
            yield stats
        finally:
            total = time.thread_time() - started
            stats.aws_seconds = self.excluded_seconds - excluded
            stats.cpu_seconds = max(0.0, total - stats.aws_seconds)
            stats.aws_requests = self.total_requests - requests
            self.function = previous
            if self.enabled:
                self.invocations.append(stats)

    @contextmanager
    def emulator_excluded(self) -> Iterator[None]:
        """While the block runs, the time in-process moto spends answering requests counts as AWS's (it is
        excluded from handler CPU time, like the meter's own work); the client's own serializing and parsing
        stays in, as it runs in Lambda too."""
        from moto.core.botocore_stubber import BotocoreStubber

        stubber: Any = BotocoreStubber
        original = stubber.__call__
        meter = self

        def call(stub: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(stub, event_name, request, **kwargs)
            finally:
                meter.excluded_seconds += time.thread_time() - started

        stubber.__call__ = call
        try:
            yield
        finally:
            stubber.__call__ = original

    # -- hooks --

    def _before(self, model: Any, params: Mapping[str, Any], context: dict[str, Any] | None = None,
                event_name: str = "", **_: Any) -> None:
        started = time.thread_time()
        if not self.enabled or context is None:
            return
        service = str(getattr(getattr(model, "service_model", None), "service_name", "") or event_name.split(".")[1])
        call = _Call(service, model.name)
        body = params.get("body") or b"{}"
        if service in ("dynamodb", "events", "sqs") and isinstance(body, bytes | str) and body:
            try:
                call.request = json.loads(body)
            except ValueError:
                call.request = {}
            call.request["__bytes"] = len(body)
        if service == "dynamodb":
            self._read_before(call)
        context[METER_KEY] = call
        self.excluded_seconds += time.thread_time() - started

    def _after(self, model: Any, http_response: Any = None, parsed: Mapping[str, Any] | None = None,
               context: dict[str, Any] | None = None, **_: Any) -> None:
        started = time.thread_time()
        call = (context or {}).pop(METER_KEY, None)
        if not isinstance(call, _Call):
            return
        parsed = parsed or {}
        status = getattr(http_response, "status_code", 200)
        error = (parsed.get("Error") or {}).get("Code") if status >= 300 else None
        key = (self.function, call.service, call.operation)
        self.requests[key] += 1
        self.total_requests += 1
        try:
            if call.service == "dynamodb":
                self._price_dynamodb(call, parsed, error)
            elif call.service == "events" and call.operation == "PutEvents" and not error:
                entries = call.request.get("Entries") or []
                results = parsed.get("Entries") or [{} for _ in entries]
                billed = sum(chunks(put_events_entry_bytes(e)) for e, r in zip(entries, results, strict=False)
                             if not r.get("ErrorCode"))
                self.units[key + ("events",)] += billed
            elif call.service == "sqs":
                self.units[key + ("requests",)] += chunks(int(call.request.get("__bytes", 0)))
            elif call.service == "s3" and call.operation in ("GetObject", "HeadObject"):
                self.units[key + ("GETs",)] += 1
            elif call.service == "s3" and call.operation in ("PutObject", "CopyObject", "ListObjectsV2"):
                self.units[key + ("PUTs",)] += 1
        finally:
            self.excluded_seconds += time.thread_time() - started

    # -- DynamoDB --

    def _keys_of(self, table: str, item: Mapping[str, Any]) -> dict[str, Any]:
        assert self.images is not None
        return {name: item[name] for name in self.images.key_names(table) if name in item}

    def _read_before(self, call: _Call) -> None:
        """The items a request will touch, as they are before it runs."""
        op, request = call.operation, call.request
        if self.images is None:
            if op in WRITES or op in ("BatchWriteItem", "TransactWriteItems"):
                raise RuntimeError(f"the meter needs an ImageSource to price {op}")
            return
        targets: list[tuple[str, dict[str, Any]]] = []
        if op in ("UpdateItem", "DeleteItem"):
            targets.append((request["TableName"], request["Key"]))
        elif op == "PutItem":
            targets.append((request["TableName"], self._keys_of(request["TableName"], request["Item"])))
        elif op == "BatchWriteItem":
            for table, writes in (request.get("RequestItems") or {}).items():
                for write in writes:
                    if "PutRequest" in write:
                        targets.append((table, self._keys_of(table, write["PutRequest"]["Item"])))
                    else:
                        targets.append((table, write["DeleteRequest"]["Key"]))
        elif op == "TransactWriteItems":
            for action in request.get("TransactItems") or []:
                ((kind, body),) = action.items()
                table = body["TableName"]
                targets.append((table, body["Key"] if kind != "Put" else self._keys_of(table, body["Item"])))
        call.before = [(table, key, self.images.get(table, key)) for table, key in targets]

    def _price_dynamodb(self, call: _Call, parsed: Mapping[str, Any], error: str | None) -> None:
        op, request = call.operation, call.request
        fn = self.function
        if op in WRITES:
            ((table, key, old),) = call.before
            if error and error != "ConditionalCheckFailedException":
                return  # throttled or invalid: not billed
            if error:
                self.units[(fn, "dynamodb", op, "WRU")] += write_units(item_size(old))
                return
            new = self._after_image(op, table, key, request, parsed)
            self._write(fn, op, table, key, old, new, 1)
        elif op == "BatchWriteItem":
            if error:
                return
            unprocessed = {
                (table, json.dumps(w, sort_keys=True, default=str))
                for table, writes in (parsed.get("UnprocessedItems") or {}).items() for w in writes
            }
            writes = [(t, w) for t, ws in (request.get("RequestItems") or {}).items() for w in ws]
            for (table, write), (_, key, old) in zip(writes, call.before, strict=True):
                if unprocessed and (table, json.dumps(write, sort_keys=True, default=str)) in unprocessed:
                    continue
                new = write["PutRequest"]["Item"] if "PutRequest" in write else None
                self._write(fn, op, table, key, old, new, 1)
        elif op == "TransactWriteItems":
            factor = 2
            for action, (table, key, old) in zip(request.get("TransactItems") or [], call.before, strict=True):
                (kind,) = action.keys()
                if error or kind == "ConditionCheck":
                    self.units[(fn, "dynamodb", op, "WRU")] += factor * write_units(item_size(old))
                    continue
                assert self.images is not None
                new = self.images.get(table, key) if kind != "Delete" else None
                self._write(fn, op, table, key, old, new, factor)
        elif error:
            return
        elif op == "GetItem":
            item = parsed.get("Item")
            if item is not None and (request.get("ProjectionExpression") or request.get("AttributesToGet")):
                item = self._full(request["TableName"], item)
            self.units[(fn, "dynamodb", op, "RRU")] += read_units(item_size(item), bool(request.get("ConsistentRead")))
        elif op == "BatchGetItem":
            for table, ask in (request.get("RequestItems") or {}).items():
                found = {self._key_text(table, i): i for i in (parsed.get("Responses") or {}).get(table, [])}
                left = (parsed.get("UnprocessedKeys") or {}).get(table, {}).get("Keys") or []
                for key in ask.get("Keys") or []:
                    if key in left:
                        continue
                    item = found.get(json.dumps(key, sort_keys=True, default=str))
                    if item is not None and ask.get("ProjectionExpression"):
                        item = self._full(table, item)
                    self.units[(fn, "dynamodb", op, "RRU")] += read_units(
                        item_size(item), bool(ask.get("ConsistentRead"))
                    )
        elif op in ("Query", "Scan"):
            items = parsed.get("Items") or []
            if request.get("ProjectionExpression") or request.get("Select") == "COUNT":
                items = [self._full(request["TableName"], i) for i in items]
            total = sum(item_size(i) for i in items)
            self.units[(fn, "dynamodb", op, "RRU")] += read_units(total, bool(request.get("ConsistentRead")))
        elif op == "TransactGetItems":
            for response in parsed.get("Responses") or []:
                self.units[(fn, "dynamodb", op, "RRU")] += 2 * read_units(item_size(response.get("Item")), True)

    def _key_text(self, table: str, item: Mapping[str, Any]) -> str:
        return json.dumps(_wire(self._keys_of(table, item)), sort_keys=True, default=str)

    def _full(self, table: str, item: Mapping[str, Any]) -> dict[str, Any] | None:
        if self.images is None:
            return dict(item)
        return self.images.get(table, self._keys_of(table, item))

    def _after_image(self, op: str, table: str, key: dict[str, Any], request: Mapping[str, Any],
                     parsed: Mapping[str, Any]) -> dict[str, Any] | None:
        if op == "DeleteItem":
            return None
        if op == "UpdateItem" and request.get("ReturnValues") == "ALL_NEW" and "Attributes" in parsed:
            return dict(parsed["Attributes"])
        assert self.images is not None
        return self.images.get(table, key)

    def _write(self, fn: str, op: str, table: str, key: dict[str, Any], old: dict[str, Any] | None,
               new: Mapping[str, Any] | None, factor: int) -> None:
        before, after = item_size(old), item_size(new)
        self.last_write_sizes = (before, after)
        self.units[(fn, "dynamodb", op, "WRU")] += factor * write_units(before, after)
        image = new if new is not None else old
        kind = ((image or {}).get("kind") or {}).get("S", "other")
        self.write_bytes[(fn, str(kind))].append(max(before, after))
        if self.on_change is not None and not same_item(old, new):
            self.on_change(table, key, old, dict(new) if new is not None else None)

    # -- results --

    def wru(self, function: str | None = None) -> float:
        return sum(v for (fn, _, _, unit), v in self.units.items() if unit == "WRU" and function in (None, fn))

    def write_requests(self, function: str | None = None) -> int:
        ops = WRITES | {"BatchWriteItem", "TransactWriteItems"}
        return sum(n for (fn, svc, op), n in self.requests.items()
                   if svc == "dynamodb" and op in ops and function in (None, fn))

    def add_to(self, bill: Bill) -> None:
        """Put the metered units on a bill, one line per (service, operation, function)."""
        for (fn, service, op, unit), units in sorted(self.units.items()):
            bill.add(_SERVICE.get(service, service), f"{op} ({fn})", units, unit, self.requests[(fn, service, op)])


def _wire(value: Any) -> Any:
    import base64

    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


_SERVICE = {"dynamodb": "DynamoDB", "events": "EventBridge", "sqs": "SQS", "lambda": "Lambda", "s3": "S3"}


# ---- the bill -----------------------------------------------------------------------------------


def unit_price(service: str, unit: str, prices: Mapping[str, float] = PRICES) -> float:
    """USD per one unit."""
    table = {
        ("DynamoDB", "WRU"): prices["dynamodb_per_million_wru"] / 1e6,
        ("DynamoDB", "RRU"): prices["dynamodb_per_million_rru"] / 1e6,
        ("SQS", "requests"): prices["sqs_per_million_requests"] / 1e6,
        ("Lambda", "requests"): prices["lambda_per_million_requests"] / 1e6,
        ("Lambda", "GB-s"): prices["lambda_per_gb_second_arm64"],
        ("EventBridge", "events"): prices["eventbridge_per_million_events"] / 1e6,
        ("Firehose", "GB"): prices["firehose_per_gb_ingested"],
        ("S3", "PUTs"): prices["s3_per_thousand_put"] / 1e3,
        ("S3", "GETs"): prices["s3_per_thousand_get"] / 1e3,
        ("Kinesis", "shard-hours"): prices["kinesis_per_shard_hour"],
        ("Kinesis", "PUT payload units"): prices["kinesis_per_million_put_units"] / 1e6,
    }
    if (service, unit) not in table:
        raise KeyError(f"no price for {service} {unit}")
    return table[(service, unit)]


@dataclass
class Line:
    service: str
    operation: str
    unit: str
    units: float = 0.0
    requests: int = 0

    def cost(self, prices: Mapping[str, float] = PRICES) -> float:
        return self.units * unit_price(self.service, self.unit, prices)


@dataclass
class Bill:
    """What a run costs, by service and operation."""

    prices: Mapping[str, float] = field(default_factory=lambda: dict(PRICES))
    lines: dict[tuple[str, str], Line] = field(default_factory=dict)

    def add(self, service: str, operation: str, units: float, unit: str, requests: int = 0) -> None:
        line = self.lines.setdefault((service, operation), Line(service, operation, unit))
        if line.unit != unit:
            raise ValueError(f"{service} {operation}: {unit} added to a line in {line.unit}")
        line.units += units
        line.requests += requests

    def add_invocations(self, function: str, invocations: Sequence[Invocation], memory_mb: int,
                        aws_latency_ms: float = 0.0, cpu_scale: float = 1.0) -> None:
        """Lambda requests and billed duration (GB-s at `memory_mb`) of a function's invocations."""
        billed_ms = sum(lambda_billed_ms(i.cpu_seconds, i.aws_requests, aws_latency_ms, cpu_scale)
                        for i in invocations)
        self.add("Lambda", f"requests ({function})", len(invocations), "requests", len(invocations))
        self.add("Lambda", f"duration ({function})", billed_ms / 1000 * memory_mb / 1024, "GB-s", len(invocations))

    def total(self, service: str | None = None) -> float:
        return sum(line.cost(self.prices) for line in self.lines.values() if service in (None, line.service))

    def per_million(self, events: int, service: str | None = None) -> float:
        return self.total(service) / events * 1e6 if events else 0.0
