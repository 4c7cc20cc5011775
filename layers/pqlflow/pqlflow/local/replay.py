"""Replay a usage history through the whole system, locally: "what would pqlflow have done with our last 90 days?"

The application is template.yaml's, run by `pqlflow.local.runtime.LocalRuntime` on an in-process moto:
every function, rule, queue, stream and filter comes from the template. Replay only feeds it and watches:

1. The input (JSON Lines of Segment messages, or of EventBridge events) is read whole; a line that is not
   a JSON object stops the run with its file and line. Events are sorted by their `timestamp` (stable),
   duplicates and all: ingest dedupes by messageId and quarantines bad events, as it would in AWS.
2. Simulated time: `pqlflow.kernel.clock` follows the events. They are fed in steps of at most `step_seconds`
   of event time (and `max_batch` events) through PutEvents on the usage bus; the clock is set to the
   last event of the step, then the runtime pumps until idle (rules → SQS → ingest → stream → qualify →
   bus → route → channels). Between steps, deferred deliveries (EventBridge Scheduler `at()` schedules
   the route function creates for quiet hours) fire at their own time. After the last event, the
   remaining schedules fire, so every decided action is delivered.
3. The definition (`--definition`) is published into the table first, as `pqlflow definition publish`
   would; the nurture policy (`--policy`) reaches the route function as its POLICY_FILE.
4. Outputs (`write_outputs`): transitions.jsonl and actions.jsonl (pqlflow's events as seen on its bus),
   emails/ (the raw MIME SES accepted, and its HTML part), offers.jsonl, tasks.jsonl, quarantine.jsonl
   (the table's items), summary.json (counts, invocations, AWS requests, cost estimate) and report.html.

`replay(...)` returns the summary dict; `pqlflow replay` is its command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import io
import json
import shutil
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.local import DEFAULT_SAMPLE_ACCOUNTS

SEGMENT_SOURCE = "aws.partner/segment.com/pqlflow-replay"
MAX_ENTRY_BYTES = 256 * 1024  # PutEvents refuses bigger entries: such an event never reaches the bus
DEFAULT_STEP_SECONDS = 6 * 3600
DEFAULT_MAX_BATCH = 400
WINDOW_DAYS = 30
OUTPUT_MARKER = "summary.json"

Progress = Callable[[int, int, float], None]  # (events fed, events total, simulated time)


@dataclass(frozen=True)
class FeedEvent:
    """One input event as a PutEvents entry, with its event time and where it came from."""

    ms: int
    source: str
    detail_type: str
    detail: str  # JSON text
    file: str
    line: int
    message_id: str | None = None
    account: str | None = None
    name: str | None = None  # the track event's name


@dataclass
class InputStats:
    files: list[str] = field(default_factory=list)
    lines: int = 0
    events: int = 0
    eventbridge_events: int = 0
    too_big: list[dict[str, Any]] = field(default_factory=list)
    distinct_message_ids: int = 0
    accounts: set[str] = field(default_factory=set)
    start: str | None = None
    end: str | None = None


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def read_events(paths: Sequence[str | Path]) -> tuple[list[FeedEvent], InputStats]:
    """Read JSON Lines files into time-sorted PutEvents entries; a line that is not a JSON object is an error."""
    stats = InputStats()
    events: list[FeedEvent] = []
    ids: set[str] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        stats.files.append(str(path))
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        with handle:
            for number, raw in enumerate(handle, 1):
                stats.lines += 1
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise UsageError(f"{path}:{number}: not JSON Lines: {exc}") from None
                if not isinstance(value, dict):
                    raise UsageError(
                        f"{path}:{number}: not JSON Lines of events: expected a JSON object, "
                        f"got {type(value).__name__}"
                    )
                event = _feed_event(value, str(path), number, events[-1].ms if events else None)
                if len(event.detail.encode()) + len(event.detail_type) + len(event.source) > MAX_ENTRY_BYTES:
                    stats.too_big.append({"file": str(path), "line": number, "message_id": event.message_id})
                    continue
                if event.source != SEGMENT_SOURCE:
                    stats.eventbridge_events += 1
                if event.message_id:
                    ids.add(event.message_id)
                if event.account:
                    stats.accounts.add(event.account)
                events.append(event)
    events.sort(key=lambda e: e.ms)  # stable: events of the same millisecond keep file order
    stats.events = len(events)
    stats.distinct_message_ids = len(ids)
    if events:
        stats.start, stats.end = _iso(events[0].ms), _iso(events[-1].ms)
    return events, stats


def _feed_event(value: dict[str, Any], file: str, line: int, previous_ms: int | None) -> FeedEvent:
    if "detail-type" in value and "detail" in value:  # an EventBridge event (e.g. exported from an archive)
        message = value.get("detail")
        source = str(value.get("source") or SEGMENT_SOURCE)
        detail_type = str(value.get("detail-type") or "unknown")
        when = _parse_time(message.get("timestamp")) if isinstance(message, dict) else None
        when = when if when is not None else _parse_time(value.get("time"))
    else:
        message = value
        source = SEGMENT_SOURCE
        kind = value.get("type")
        detail_type = kind if isinstance(kind, str) and kind else "unknown"
        when = _parse_time(value.get("timestamp"))
    if when is None:  # ingest will quarantine it; it travels with its neighbours
        when = previous_ms if previous_ms is not None else 0
    mid = message.get("messageId") if isinstance(message, dict) else None
    account = None
    if isinstance(message, dict):
        context = message.get("context")
        account = (context.get("groupId") if isinstance(context, dict) else None) or message.get("groupId")
        account = account or message.get("userId")
    name = message.get("event") if isinstance(message, dict) else None
    return FeedEvent(
        when, source, detail_type, json.dumps(message, separators=(",", ":")), file, line,
        mid if isinstance(mid, str) else None, account if isinstance(account, str) else None,
        name if isinstance(name, str) else None,
    )


def steps(
    events: Sequence[FeedEvent], step_seconds: float, max_batch: int, boundaries: frozenset[str] = frozenset()
) -> Iterator[list[FeedEvent]]:
    """Consecutive groups of events spanning at most `step_seconds` of event time and `max_batch` events.

    An event named in `boundaries` (the conversion events) starts a new group: ingest folds a batch per
    account, so a qualification and the conversion that follows it in one batch would never show as a
    PQL, where AWS (batching seconds, not hours) would see both.
    """
    group: list[FeedEvent] = []
    limit = int(step_seconds * 1000)
    for event in events:
        if group and (
            event.ms - group[0].ms >= limit or len(group) >= max_batch or (event.name in boundaries)
        ):
            yield group
            group = []
        group.append(event)
    if group:
        yield group


# ---- the run --------------------------------------------------------------------------------------------


class SimulatedClock:
    """`pqlflow.kernel.clock`'s source while replay runs; only ever moves forward."""

    def __init__(self, start: float) -> None:
        self.now = start

    def advance(self, to: float) -> None:
        self.now = max(self.now, to)

    def __call__(self) -> float:
        return self.now


@dataclass
class ReplayResult:
    """Everything a replay observed, before it is written out."""

    stats: InputStats
    definition: Any
    definition_source: str
    policy: str
    observed: list[dict[str, Any]]  # envelopes of pqlflow's events, in order
    emails: list[tuple[str, list[str], bytes]]
    items: list[dict[str, Any]]  # the table's items at the end (plain values)
    counters: dict[str, Any]
    handler_seconds: dict[str, float]
    memory_mb: dict[str, int]
    usage_writers: list[str]
    sqs_messages: int  # messages the template's rules delivered into SQS queues
    steps: int
    schedule_firings: int
    seconds: float
    end_ms: int
    usage_sqs_messages: int = 0  # of sqs_messages, those into the ingest function's queue
    priced: dict[str, Any] | None = None  # ingest + qualify priced as AWS batches them (pqlflow.local.pricing)
    recipients: dict[str, int] | None = None  # what simulated recipients did (`pqlflow.local.recipients`)


def _runtime_class() -> type:
    from pqlflow.local.runtime import LocalRuntime

    class TimedRuntime(LocalRuntime):
        """The runtime, plus the wall time each function's handler took (for the Lambda GB-s estimate)."""

        handler_seconds: defaultdict[str, float]
        observed: list[dict[str, Any]]
        observe_sources: frozenset[str] = frozenset({"pqlflow"})

        def _create(self) -> None:
            super()._create()
            router = self._started_router()
            on_event = router.on_event

            def observe(bus: str, event: dict[str, Any]) -> None:
                if event.get("source") in self.observe_sources:
                    self.observed.append(event)
                if on_event is not None:
                    on_event(bus, event)

            router.on_event = observe  # every event routed on any bus, whether a rule takes it or not

        def _invoke(self, function: str, event: Any) -> Any:
            started = time.perf_counter()
            try:
                return super()._invoke(function, event)
            finally:
                self.handler_seconds[function] += time.perf_counter() - started

    return TimedRuntime


def run_replay(
    paths: Sequence[str | Path],
    *,
    template: str | Path = "template.yaml",
    root: str | Path | None = None,
    definition: str | Path | None = None,
    policy: str | Path | None = None,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: Progress | None = None,
    function_output: io.TextIOBase | None = None,
    speedups: bool = True,
    price_sample: int = DEFAULT_SAMPLE_ACCOUNTS,
    simulate_recipients: bool | Any = False,
) -> ReplayResult:
    """Feed the history through the template's application on simulated time and collect what it did.

    `root`: the folder the template's CodeUri paths are relative to (default: the template's folder).
    `price_sample`: how many accounts (at most) the cost estimate runs through ingest and qualify in the
    batches AWS would form (`pqlflow.local.pricing`); 0 = no such run, the
    estimate then prices replay's own coarse batches and says so.
    `simulate_recipients`: people open, click and unsubscribe from the emails and view, accept or dismiss
    the offers they get (`pqlflow.local.recipients`), so engagement and journeys' stops are exercised;
    a `Rates` instead of True sets how many do what.
    """
    from pqlflow.local.pricing import covers, forget_process_caches
    from pqlflow.qualify.definition import parse_definition
    from pqlflow.qualify.store import DEFAULT_PATH, DefinitionStore, bundled_default

    started = time.perf_counter()
    template = Path(template)
    if not template.is_file():
        raise UsageError(f"{template}: no such template (run from the repository root, or pass --template)")
    events, stats = read_events(paths)
    if not events:
        raise UsageError(f"{', '.join(map(str, paths))}: no events to replay")
    text = None
    if definition is not None:
        definition = Path(definition)
        try:
            text = definition.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{definition}: cannot read the definition ({exc.strerror or exc})") from None
        defn, defn_source = parse_definition(text, str(definition)), str(definition)
    else:
        defn, defn_source = bundled_default(), str(DEFAULT_PATH)
    environment: dict[str, str] = {}
    policy_source = "the template's NurturePolicyFile"
    if policy is not None:
        policy = Path(policy).resolve()
        if not policy.is_file():
            raise UsageError(f"{policy}: no such policy file")
        from pqlflow.nurture.policy import load_policy

        load_policy(policy)  # a bad policy is the user's error, named before anything runs
        environment["POLICY_FILE"] = str(policy)
        policy_source = str(policy)

    from pqlflow.local.cfn_yaml import load_yaml
    from pqlflow.local.emulator import create_extra_resources, emulator_speedups, sent_emails

    parameters = {"LogLevel": "WARNING"} if "LogLevel" in (load_yaml(template).get("Parameters") or {}) else {}
    sim = SimulatedClock(events[0].ms / 1000 - 60)
    clock.set_source(sim)
    forget_process_caches()
    observed: list[dict[str, Any]] = []
    n_steps = firings = 0
    output = function_output if function_output is not None else io.StringIO()
    runtime_cls = _runtime_class()
    try:
        with (
            emulator_speedups() if speedups else contextlib.nullcontext(),
            contextlib.redirect_stdout(output),  # functions' logs and metrics (EMF) go to functions.log
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="No application metrics to publish")
            runtime = runtime_cls(template, parameters, root, environment=environment,
                                  tap=["sesv2.SendEmail"] if simulate_recipients else ())
            runtime.handler_seconds = defaultdict(float)
            runtime.observed = observed
            with runtime:
                create_extra_resources(runtime)
                table = _table_name(runtime)
                if text is not None:
                    DefinitionStore(table, client=runtime.client("dynamodb")).publish(text, str(definition))
                people = None
                if simulate_recipients:
                    from pqlflow.local.recipients import Recipients

                    people = Recipients(runtime) if simulate_recipients is True else Recipients(
                        runtime, simulate_recipients)
                schedules = _Schedules(runtime, after=people.react if people else None)
                fed = 0
                conversions = frozenset(
                    name.strip()
                    for fn in runtime.wiring.functions.values()
                    for name in str(fn.environment.get("CONVERSION_EVENTS", "")).split(",")
                    if name.strip()
                )
                for group in steps(events, step_seconds, max_batch, conversions):
                    firings += schedules.fire_until(group[0].ms / 1000, sim)
                    sim.advance(group[-1].ms / 1000)
                    runtime.put_events(
                        {
                            "Source": e.source,
                            "DetailType": e.detail_type,
                            "Detail": e.detail,
                            "Time": dt.datetime.fromtimestamp(e.ms / 1000, dt.UTC),
                        }
                        for e in group
                    )
                    runtime.run_until_idle()
                    if people is not None:
                        people.react()
                    n_steps += 1
                    fed += len(group)
                    if progress is not None:
                        progress(fed, len(events), sim.now)
                firings += schedules.fire_until(float("inf"), sim)
                emails = sent_emails()
                items = _scan(runtime, table)
                counters = runtime.counters()
                memory = {lid: fn.memory_size for lid, fn in runtime.wiring.functions.items()}
                writers = sorted({s.function for s in runtime.wiring.sqs_sources})
                usage_queues = {s.queue_arn for s in runtime.wiring.sqs_sources if s.function == "IngestFunction"}
                sqs_messages = usage_sqs_messages = 0
                for rule in runtime.wiring.rules:
                    matched = counters["rule_matches"].get(rule.logical_id, 0)
                    sqs_messages += matched * sum(t.kind == "sqs" for t in rule.targets)
                    usage_sqs_messages += matched * sum(t.arn in usage_queues for t in rule.targets)
                handler_seconds = dict(runtime.handler_seconds)
                priceable = covers(runtime.wiring)
    finally:
        clock.set_source(None)
    priced = _price(events, template, root, price_sample) if price_sample and priceable else None
    return ReplayResult(
        stats, defn, defn_source, policy_source, observed, emails, items, counters, handler_seconds, memory,
        writers, sqs_messages, n_steps, firings, time.perf_counter() - started, int(sim.now * 1000),
        usage_sqs_messages, priced, dict(sorted(people.counts.items())) if people else None,
    )


def _price(events: Sequence[FeedEvent], template: Path, root: str | Path | None, sample: int) -> dict[str, Any]:
    """Ingest and qualify priced as AWS would batch the history (arrival = event time), on a sample of accounts
    (only for a template `pricing.covers`: another one's run is priced as replayed)."""
    from pqlflow.local.pricing import Event, forget_process_caches, price_history, template_settings

    arrivals = []
    for e in events:
        try:
            message = json.loads(e.detail)
        except ValueError:
            message = e.detail  # ingest quarantines it, as it would in AWS
        arrivals.append(Event(e.ms, message, e.source, e.detail_type))
    settings = template_settings(template, root)
    started = time.process_time()
    priced = price_history(arrivals, settings, sample=sample).to_dict()
    priced["cpu_seconds"] = round(time.process_time() - started, 2)
    forget_process_caches()
    return priced


def _table_name(runtime: Any) -> str:
    for fn in runtime.wiring.functions.values():
        if fn.environment.get("TABLE_NAME"):
            return str(fn.environment["TABLE_NAME"])
    raise UsageError(f"{runtime.wiring.template_path}: no function has a TABLE_NAME")


class _Schedules:
    """The one-time schedules handlers created, so simulated time can stop at each one's due time."""

    def __init__(self, runtime: Any, after: Callable[[], object] | None = None) -> None:
        self.runtime = runtime
        self.after = after  # run after each firing (simulated recipients react to what it sent)
        self.client = runtime.client("scheduler")
        self.seen_created = 0
        self.pending: list[float] = []

    def _created(self) -> int:
        return int(self.runtime.requests.by_operation.get(("scheduler", "CreateSchedule"), 0))

    def due_times(self) -> list[float]:
        from pqlflow.local.scheduler import due_time

        times = []
        for page in self.client.get_paginator("list_schedule_groups").paginate():
            for group in page.get("ScheduleGroups", []):
                for spage in self.client.get_paginator("list_schedules").paginate(GroupName=group["Name"]):
                    for summary in spage.get("Schedules", []):
                        if summary.get("State", "ENABLED") != "ENABLED":
                            continue
                        schedule = self.client.get_schedule(Name=summary["Name"], GroupName=group["Name"])
                        at = due_time(
                            schedule.get("ScheduleExpression", ""), schedule.get("ScheduleExpressionTimezone")
                        )
                        if at is not None:
                            times.append(at)
        return sorted(set(times))

    def fire_until(self, until: float, sim: SimulatedClock) -> int:
        """Stop simulated time at each schedule due before `until` and let it fire; returns how many fired.

        After `run_until_idle` at time t every schedule due by t has fired, so only later ones are pending.
        """
        fired = 0
        for _ in range(100_000):
            if self._created() != self.seen_created:
                self.seen_created = self._created()
                self.pending = [t for t in self.due_times() if t > sim.now]
            due = [t for t in self.pending if t < until]
            if not due:
                return fired
            sim.advance(due[0])
            before = self.runtime.counters()["schedules_fired"]
            self.runtime.run_until_idle()
            if self.after is not None:
                self.after()
            fired += self.runtime.counters()["schedules_fired"] - before
            self.pending = [t for t in self.due_times() if t > sim.now]
            self.seen_created = self._created()
        raise UsageError("replay: schedules keep creating schedules (a loop between functions?)")


def _scan(runtime: Any, table: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    deserialize = TypeDeserializer().deserialize
    client = runtime.client("dynamodb")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            plain = {k: _plain(deserialize(v)) for k, v in item.items()}
            plain["_bytes"] = sum(len(k) + len(json.dumps(v, default=str)) for k, v in plain.items())
            items.append(plain)
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _plain(value: Any) -> Any:
    from decimal import Decimal

    from boto3.dynamodb.types import Binary

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return sorted((_plain(v) for v in value), key=lambda v: json.dumps(v, default=str))
    if isinstance(value, Binary):
        value = bytes(value.value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return value


# ---- outputs --------------------------------------------------------------------------------------------

TRANSITION_TYPES = ("PQL Qualified", "PQL Disqualified", "Account Converted", "Account Churned")
MONEY_FIELDS = ("mrr", "revenue", "currency", "plan", "reason")


def transitions_of(result: ReplayResult) -> list[dict[str, Any]]:
    out = []
    for envelope in result.observed:
        kind = envelope.get("detail-type")
        if kind not in TRANSITION_TYPES:
            continue
        d = envelope.get("detail") or {}
        at = (d.get("qualified_at") if kind == "PQL Qualified" else d.get("churned_at") if kind == "Account Churned"
              else d.get("disqualified_at") or d.get("converted_at"))
        out.append({
            "type": kind,
            "account_id": d.get("account_id"),
            "user_id": d.get("user_id"),
            "at": at,
            "transition_id": d.get("transition_id"),
            "touch": d.get("touch"),
            "score": d.get("score"),
            "definition": d.get("definition"),
            "reasons": d.get("reasons", []),
            **({"signals": d["signals"]} if d.get("signals") else {}),
            **({"seconds_since_qualified": d["seconds_since_qualified"]} if "seconds_since_qualified" in d else {}),
            **{k: d[k] for k in MONEY_FIELDS if d.get(k) is not None},
        })
    return out


def actions_of(result: ReplayResult) -> list[dict[str, Any]]:
    out = []
    for envelope in result.observed:
        if envelope.get("detail-type") != "Nurture Action":
            continue
        d = dict(envelope.get("detail") or {})
        d.pop("context", None)  # the whole qualification: it is in transitions.jsonl
        out.append({"time": envelope.get("time"), **d})
    return out


def _items(result: ReplayResult, kind: str) -> list[dict[str, Any]]:
    rows = [
        {k: v for k, v in item.items() if k not in ("pk", "sk", "_bytes")}
        for item in result.items
        if item.get("kind") == kind
    ]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def offers_of(result: ReplayResult) -> list[dict[str, Any]]:
    rows = _items(result, "offer")
    for row in rows:
        if row.get("status") in (None, "open", "offered") and isinstance(row.get("expires_at"), int | float):
            row["expired_by_end"] = row["expires_at"] * 1000 <= result.end_ms
    return rows


def quarantine_of(result: ReplayResult) -> list[dict[str, Any]]:
    rows = [
        {k: v for k, v in item.items() if k not in ("pk", "sk", "_bytes")}
        for item in result.items
        if str(item.get("pk", "")).startswith("Q#")
    ]
    return sorted(rows, key=lambda r: (str(r.get("received_at")), str(r.get("message_id"))))


def email_files(result: ReplayResult) -> list[tuple[str, bytes, str]]:
    """(file stem, raw MIME, HTML part) per email, named by order, template and Message-ID."""
    files = []
    for index, (_mid, _to, raw) in enumerate(result.emails, 1):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        template = str(message.get("X-Pqlflow-Template") or "email")
        key = str(message.get("Message-ID") or "").strip("<>").split("@")[0][:12] or f"{index}"
        html_part = message.get_body(preferencelist=("html",))
        html = html_part.get_content() if html_part is not None else ""
        files.append((f"{index:04d}-{_safe(template)}-{_safe(key)}", raw, html))
    return files


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


def _conversions(transitions: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in transitions:
        if t["type"] == "Account Converted" and t.get("at"):
            ms = _parse_time(t["at"])
            if ms is not None:
                out.setdefault(t["account_id"], ms)
    return out


def channels_of(transitions: list[dict[str, Any]], actions: list[dict[str, Any]], window_days: float) -> tuple[
    int, list[dict[str, Any]]
]:
    """Nudged accounts, and per channel (holdout = the control group): PQLs, converted within the window."""
    qualified: dict[str, int] = {}
    for t in transitions:
        if t["type"] == "PQL Qualified" and t.get("transition_id"):
            ms = _parse_time(t.get("at"))
            if ms is not None:
                qualified[t["transition_id"]] = ms
    converted = _conversions(transitions)
    decision: dict[str, tuple[str, str]] = {}  # transition → (group, account)
    for a in actions:
        outcome, channel = a.get("outcome"), a.get("channel")
        group = "holdout" if outcome == "holdout" else channel if outcome in ("send", "deferred") else outcome
        if a.get("transition_id") and a["transition_id"] not in decision:
            decision[a["transition_id"]] = (str(group), str(a.get("account_id")))
    nudged = len({account for group, account in decision.values() if group not in ("holdout", "none", "suppressed",
                                                                                    "capped")})
    window_ms = window_days * 86_400_000
    rows: dict[str, dict[str, Any]] = {}
    for tid, (group, account) in decision.items():
        row = rows.setdefault(group, {"channel": group, "pqls": 0, "converted": 0, "_days": []})
        row["pqls"] += 1
        at, conv = qualified.get(tid), converted.get(account)
        if at is not None and conv is not None and 0 <= conv - at <= window_ms:
            row["converted"] += 1
            row["_days"].append((conv - at) / 86_400_000)
    out = []
    for row in sorted(rows.values(), key=lambda r: (r["channel"] == "holdout", -r["pqls"], r["channel"])):
        days = row.pop("_days")
        row["conversion_rate"] = row["converted"] / row["pqls"] if row["pqls"] else None
        row["median_days"] = statistics.median(days) if days else None
        out.append(row)
    return nudged, out


def steps_of(result: ReplayResult, window_days: float = WINDOW_DAYS) -> dict[str, Any]:
    """Per journey step and channel, from the Nurture Action, engagement and Account Converted events the
    replay's pipeline emitted (`pqlflow.analysis.worth.step_results`)."""
    from pqlflow.analysis.worth import ENGAGEMENT_TYPES, step_results
    from pqlflow.channels.offers.offer import offer_id_for

    actions, engagement = [], []
    conversions: dict[str, list[int]] = {}
    for envelope in result.observed:
        kind, d = envelope.get("detail-type"), envelope.get("detail") or {}
        if kind == "Nurture Action":
            at = _parse_time(envelope.get("time"))
            if at is not None:
                actions.append({**d, "at_ms": at})
        elif kind in ENGAGEMENT_TYPES:
            engagement.append((str(kind), d))
        elif kind == "Account Converted":
            at = _parse_time(d.get("converted_at"))
            if at is not None:
                conversions.setdefault(str(d.get("account_id")), []).append(at)
    for times in conversions.values():
        times.sort()
    offers = {offer_id_for(str(a["action_id"])): str(a["action_id"]) for a in actions if a.get("channel") == "offer"}
    return step_results(actions, engagement, conversions, window_days, offers)


def summarize(result: ReplayResult, outputs: dict[str, int]) -> dict[str, Any]:
    from pqlflow.local.cost import RunCounts, estimate

    c = result.counters
    usage_functions = {"IngestFunction", "QualifyFunction"} if result.priced is not None else set()

    def downstream(values: Any) -> dict[str, Any]:  # the functions the faithful pricing did not cover
        return {k: v for k, v in values.items() if k not in usage_functions}

    transitions = transitions_of(result)
    actions = actions_of(result)
    by_type = Counter(t["type"] for t in transitions)
    pqlflow_events = len(result.observed)
    usage_sizes = [i["_bytes"] for i in result.items if i.get("kind") == "usage"]
    usage_kb = (statistics.mean(usage_sizes) / 1024) if usage_sizes else 1.0
    counts = RunCounts(
        usage_events=result.stats.events,
        pqlflow_events=pqlflow_events,
        schedules_created=int(c["requests"].get("scheduler", {}).get("CreateSchedule", 0)),
        sqs_messages=result.sqs_messages - (result.usage_sqs_messages if result.priced is not None else 0),
        invocations=downstream(c["invocations"]),
        handler_seconds=downstream(result.handler_seconds),
        memory_mb=result.memory_mb,
        requests_by_function=downstream(c["requests_by_function"]),
        write_units={fn: max(1, -(-int(usage_kb * 1024) // 1024)) for fn in result.usage_writers},
        emails=len(result.emails),
    )
    cost = estimate(counts, usage_pipeline=result.priced)
    return {
        "input": {
            "files": result.stats.files,
            "lines": result.stats.lines,
            "events": result.stats.events,
            "distinct_message_ids": result.stats.distinct_message_ids,
            "eventbridge_events": result.stats.eventbridge_events,
            "too_big_for_putevents": result.stats.too_big,
            "start": result.stats.start,
            "end": result.stats.end,
        },
        "definition": {
            "name": result.definition.name,
            "version": result.definition.version,
            "source": result.definition_source,
        },
        "policy": result.policy,
        "events_ingested": result.stats.events,
        "simulated_recipients": result.recipients,
        "counts": {
            **outputs,
            "qualified": by_type.get("PQL Qualified", 0),
            "disqualified": by_type.get("PQL Disqualified", 0),
            "converted": by_type.get("Account Converted", 0),
            "churned": by_type.get("Account Churned", 0),
            "accounts_qualified": len({t["account_id"] for t in transitions if t["type"] == "PQL Qualified"}),
            "actions_by_outcome": dict(sorted(Counter(a.get("outcome") for a in actions).items())),
            "actions_by_channel": dict(sorted(Counter(a.get("channel") for a in actions).items())),
            "pqlflow_events": dict(sorted(Counter(e.get("detail-type") for e in result.observed).items())),
            "journeys_stopped": dict(sorted(Counter(
                (e.get("detail") or {}).get("reason") for e in result.observed
                if e.get("detail-type") == "Journey Stopped").items())),
        },
        "lambda": {
            "invocations": c["invocations"],
            "errors": c["invocation_errors"],
            "handler_seconds": {k: round(v, 3) for k, v in sorted(result.handler_seconds.items())},
            "memory_mb": dict(sorted(result.memory_mb.items())),
        },
        "aws_requests": c["requests"],
        "aws_requests_by_function": c["requests_by_function"],
        "runtime": {
            "steps": result.steps,
            "events_routed": c["events_routed"],
            "rule_matches": c["rule_matches"],
            "filtered_out": c["filtered_out"],
            "stream_records_discarded": c["stream_records_discarded"],
            "sqs_messages_expired": c["sqs_messages_expired"],
            "async_failures": c["async_failures"],
            "schedules_fired": c["schedules_fired"],
            "simulated_end": _iso(result.end_ms),
        },
        "cost": cost,
        "seconds": round(result.seconds, 2),
    }


def report_data(result: ReplayResult, paths: Sequence[str | Path], window_days: float = WINDOW_DAYS) -> dict[str, Any]:
    """The report's data: the backtest engine's metrics for the same history and definition (the same code
    the functions run), with the funnel's nudges and the per-channel conversion filled from the replay."""
    transitions = transitions_of(result)
    try:
        from pqlflow.analysis.backtest import run_backtest

        data = run_backtest(paths, [(result.definition, result.definition_source)], window_days=window_days).to_dict()
    except Exception as exc:  # the report must not lose a replay: fall back to what replay itself saw
        data = _replay_only_metrics(result, transitions, window_days, f"backtest metrics unavailable: {exc}")
    data["source"] = "replay"
    nudged, channels = channels_of(transitions, actions_of(result), window_days)
    steps = steps_of(result, window_days)
    for m in data.get("definitions", []):
        m["nudged"] = nudged
        m["channels"] = channels
        m["steps"] = steps
        m["replay_pqls"] = len({t["account_id"] for t in transitions if t["type"] == "PQL Qualified"})
    return data


def _replay_only_metrics(
    result: ReplayResult, transitions: list[dict[str, Any]], window_days: float, warning: str
) -> dict[str, Any]:
    """The report's data from the replay's own transitions (used when the backtest engine cannot run)."""
    qualified: dict[str, int] = {}
    reasons: dict[str, dict[str, Any]] = {}
    touch: Counter[str] = Counter()
    for t in transitions:
        at = _parse_time(t.get("at"))
        if t["type"] == "PQL Qualified" and at is not None and t["account_id"] not in qualified:
            qualified[t["account_id"]] = at
            touch[str(t.get("touch"))] += 1
            for r in t.get("reasons") or []:
                row = reasons.setdefault(r.get("code"), {"code": r.get("code"), "kind": r.get("kind"),
                                                         "example": r.get("text"), "count": 0})
                row["count"] += 1
    converted = _conversions(transitions)
    window = window_days * 86_400_000
    days = [(converted[a] - q) / 86_400_000 for a, q in qualified.items() if a in converted
            and 0 <= converted[a] - q <= window]
    active = max(len(result.stats.accounts), len(qualified))
    tp, pqls = len(days), len(qualified)
    non_pql = active - pqls
    non_pql_conv = sum(1 for a in converted if a not in qualified)
    base = len(converted) / active if active else None
    precision = tp / pqls if pqls else None
    return {
        "history": {"files": result.stats.files, "lines": result.stats.lines, "events": result.stats.events,
                    "duplicates": result.stats.events - result.stats.distinct_message_ids, "bad_lines": 0, "bad": [],
                    "start": result.stats.start, "end": result.stats.end},
        "window_days": window_days,
        "definitions": [{
            "definition": {"name": result.definition.name, "version": result.definition.version,
                           "source": result.definition_source, "unit": getattr(result.definition, "unit", "account")},
            "window_days": window_days, "active": active, "converted": len(converted), "pqls": pqls,
            "tp": tp, "fp": pqls - tp, "fn": len(converted) - tp, "tn": max(0, non_pql - non_pql_conv),
            "precision": precision, "recall": tp / len(converted) if converted else None,
            "lift": precision / base if precision is not None and base else None, "base_rate": base,
            "pql_conversion_rate": precision, "non_pql_conversion_rate": non_pql_conv / non_pql if non_pql else None,
            "censored_pqls": 0,
            "qualified_events": sum(1 for t in transitions if t["type"] == "PQL Qualified"),
            "disqualified_events": sum(1 for t in transitions if t["type"] == "PQL Disqualified"),
            "touch": {"high": touch.get("high", 0), "low": touch.get("low", 0)},
            "time_to_convert": {
                "n": len(days), "median_days": statistics.median(days) if days else None, "p25_days": None,
                "p75_days": None, "mean_days": statistics.mean(days) if days else None, "buckets": [],
            },
            "weekly": [], "reasons": sorted(reasons.values(), key=lambda r: -r["count"])[:10],
            "signals": [], "sweeps": [], "warnings": [warning], "bad_events": [], "bad_event_count": 0,
        }],
    }


def write_outputs(result: ReplayResult, out: Path, paths: Sequence[str | Path], log_text: str = "") -> dict[str, Any]:
    """Write every output file into `out` (replacing a previous replay's) and return the summary."""
    from pqlflow.analysis.report import render_html

    prepare_out(out)
    transitions = transitions_of(result)
    actions = actions_of(result)
    offers = offers_of(result)
    tasks = _items(result, "rep_task")
    quarantine = quarantine_of(result)
    _jsonl(out / "transitions.jsonl", transitions)
    _jsonl(out / "actions.jsonl", actions)
    _jsonl(out / "offers.jsonl", offers)
    _jsonl(out / "tasks.jsonl", tasks)
    _jsonl(out / "quarantine.jsonl", quarantine)
    emails = out / "emails"
    emails.mkdir()
    files = email_files(result)
    for stem, raw, html in files:
        (emails / f"{stem}.eml").write_bytes(raw)
        (emails / f"{stem}.html").write_text(html, encoding="utf-8")
    if log_text:
        (out / "functions.log").write_text(log_text, encoding="utf-8")
    summary = summarize(result, {
        "transitions": len(transitions),
        "actions": len(actions),
        "emails": len(files),
        "offers": len(offers),
        "tasks": len(tasks),
        "quarantined": len(quarantine),
    })
    data = report_data(result, paths)
    main = (data.get("definitions") or [{}])[0]
    summary["worth"] = {"customers": main.get("worth"), "steps": main.get("steps")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    (out / "report.html").write_text(render_html(data), encoding="utf-8")
    return summary


def prepare_out(out: Path) -> None:
    """An empty `out`: a previous replay's output is replaced; any other non-empty folder is refused."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()):
            if not (out / OUTPUT_MARKER).is_file():
                raise UsageError(
                    f"--out {out}: folder is not empty and holds no previous replay ({OUTPUT_MARKER}); "
                    "choose another folder"
                )
            shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create ({exc.strerror or exc})") from None


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def replay(paths: Sequence[str | Path], *, out: str | Path = "out", **options: Any) -> dict[str, Any]:
    """Run the replay and write its outputs into `out`; returns summary.json's content.

    `options` are `run_replay`'s (template, root, definition, policy, step_seconds, max_batch, progress).
    """
    out = Path(out)
    prepare_out(out)  # refuse a bad --out before minutes of work
    log = io.StringIO()
    result = run_replay(paths, function_output=log, **options)
    return write_outputs(result, out, paths, log.getvalue())


class ProgressBar:
    """A one-line progress bar on a stream (stderr), redrawn at most every 0.2 s; no dependency."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.last = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.next_pct = 10

    def __call__(self, done: int, total: int, sim_now: float) -> None:
        now = time.perf_counter()
        fraction = done / total if total else 1.0
        when = dt.datetime.fromtimestamp(sim_now, dt.UTC).strftime("%Y-%m-%d %H:%M")
        elapsed = now - self.started
        if self.tty:
            if now - self.last < 0.2 and done < total:
                return
            self.last = now
            filled = int(self.width * fraction)
            bar = "█" * filled + "░" * (self.width - filled)
            self.stream.write(
                f"\rreplay {bar} {fraction:4.0%} {done:,}/{total:,} events · simulated {when} · {elapsed:4.0f} s"
            )
            if done >= total:
                self.stream.write("\n")
        elif fraction * 100 >= self.next_pct or done >= total:
            self.next_pct = int(fraction * 10) * 10 + 10
            self.stream.write(f"replay: {fraction:4.0%} {done:,}/{total:,} events, simulated {when}, {elapsed:.0f} s\n")
        self.stream.flush()
