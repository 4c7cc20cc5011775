"""The qualify function on moto: each example definition at its exact boundary, exactly-once transitions,
redelivery, a crash between the state write and PutEvents, conversions, zero reads per record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pqlflow.contracts.bus import EventPublisher, PublishError
from pqlflow.contracts.usage_events import UsageEvent, parse_message
from pqlflow.ingest.item import decode_image, encode_usage
from pqlflow.ingest.usage import DAY_MS, AccountUsage
from pqlflow.qualify.definition import load_definition
from pqlflow.qualify.language import Definition
from pqlflow.qualify.store import DefinitionStore
from pqlflow.qualify.transitions import PqlStateStore, Qualifier

from functions.qualify import app
from tests.support.aws_calls import CallRecorder
from tests.support.events import iso
from tests.support.lambda_context import LambdaContext

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "definitions"
BASE_MS = 1_793_527_200_000  # 2026-11-01T10:00:00Z
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/pqlflow/stream/2026-11-01T00:00:00.000"
READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}


# ---- building stream records the way ingest's writes cause them -----------------------------------


class UsageStream:
    """Folds Segment messages per subject as ingest does; each `change` is one stream record."""

    def __init__(self, defn: Definition):
        self.defn = defn
        self.spec = defn.tracking_spec()
        self.usages: dict[tuple[str, str | None], AccountUsage] = {}
        self.sequence = 0
        self.clock_ms = BASE_MS
        self.n = 0

    def message(
        self, kind: str, user: str = "u1", account: str = "acme", at_ms: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        self.n += 1
        self.clock_ms = at_ms if at_ms is not None else self.clock_ms + 1000
        msg: dict[str, Any] = {
            "type": kind,
            "messageId": f"m{self.n}",
            "timestamp": iso(self.clock_ms),
            "userId": user,
            **fields,
        }
        if kind == "group":
            msg["groupId"] = account
        else:
            msg["context"] = {"groupId": account}
        return msg

    def track(
        self, event: str, user: str = "u1", account: str = "acme", at_ms: int | None = None, **properties: Any
    ) -> dict[str, Any]:
        return self.message("track", user, account, at_ms, event=event, properties=properties)

    def fold(self, *messages: dict[str, Any]) -> AccountUsage:
        """Apply messages (one subject) without a stream record: history before the test's boundary."""
        usage = None
        for m in messages:
            event = parse_message(m, now_s=BASE_MS / 1000 + 30 * 86400, retention_days=365)
            assert isinstance(event, UsageEvent), event
            key = (event.account_id, event.user_id if self.defn.unit == "user" else None)
            usage = self.usages.setdefault(key, AccountUsage(key[0], key[1]))
            usage.apply(event, self.spec)
        assert usage is not None
        return usage

    def change(self, *messages: dict[str, Any]) -> dict[str, Any]:
        """The stream record of one usage-item write that folds `messages` (all for one subject)."""
        first = parse_message(messages[0], now_s=BASE_MS / 1000 + 30 * 86400, retention_days=365)
        assert isinstance(first, UsageEvent)
        key = (first.account_id, first.user_id if self.defn.unit == "user" else None)
        before = self.usages.get(key)
        old = encode_usage(before, 0) if before is not None else None
        usage = self.fold(*messages)
        self.sequence += 1
        change: dict[str, Any] = {
            "Keys": {"pk": {"S": f"A#{key[0]}"}, "sk": {"S": "USAGE"}},
            "NewImage": encode_usage(usage, 0),
            "SequenceNumber": f"{self.sequence:021d}",
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if old is not None:
            change["OldImage"] = old
        return {
            "eventID": f"ev{self.sequence}",
            "eventName": "MODIFY" if old is not None else "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": change,
            "eventSourceARN": STREAM_ARN,
        }


def stream_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def bus_events(bus_name: str) -> Iterator[Any]:
    """Everything pqlflow puts on the bus, read back through a rule → SQS queue."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"{bus_name}-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events")
    events.put_rule(Name="tap", EventBusName=bus_name, EventPattern=json.dumps({"source": ["pqlflow"]}))
    events.put_targets(Rule="tap", EventBusName=bus_name, Targets=[{"Id": "q", "Arn": arn}])
    seen: list[dict[str, Any]] = []

    def drain() -> list[dict[str, Any]]:
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                break
            for m in got:
                seen.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return seen

    yield drain


@pytest.fixture
def qualify(table_name: str, bus_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Calls the real handler (settings from the environment, real adapters on moto)."""
    monkeypatch.setenv("DEFINITION_CACHE_SECONDS", "60")
    app.reset()

    def call(*records: dict[str, Any]) -> dict[str, Any]:
        return app.handler(stream_event(*records), LambdaContext())

    yield call
    app.reset()


def publish(table_name: str, path: Path) -> Definition:
    DefinitionStore(table_name).publish(path.read_text(), str(path))
    return load_definition(path)


def published_stream(table_name: str, file: str, event: str, times: int) -> UsageStream:
    """A stream on a freshly published example definition, with `event` folded `times` times before it."""
    stream = UsageStream(publish(table_name, EXAMPLES / file))
    for _ in range(times):
        stream.fold(stream.track(event))
    return stream


def of_type(events: list[dict[str, Any]], detail_type: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in events if e["detail-type"] == detail_type]


# ---- one example per system in the seeds, at its exact boundary -------------------------------------


def _slack(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [s.track("Message Sent", user=f"u{i % 3}") for i in range(1998)]
    return history, s.track("Message Sent"), s.track("Message Sent")


def _facebook(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [s.track("Friend Added", user="ann") for _ in range(5)] + [s.track("Friend Added", user="bob")]
    return history, s.track("Friend Added", user="ann"), s.track("Friend Added", user="ann")


def _drift(s: UsageStream) -> tuple[list[Any], Any, Any]:
    return (
        [s.track("Conversation Started") for _ in range(98)],
        s.track("Conversation Started"),
        s.track("Conversation Started"),
    )


def _crm(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [
        s.message("group", traits={"contacts_limit": 10000, "plan": "starter"}),
        s.track("Contacts Updated", total=5000),
    ]
    return history, s.track("Contacts Updated", total=7999), s.track("Contacts Updated", total=8000)


def _logins(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [s.track("Signed In", user="ann") for _ in range(8)]
    return history, s.track("Signed In", user="ann"), s.track("Signed In", user="ann")


def _dropbox(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [
        s.message("group", traits={"storage_quota_bytes": 2_000_000_000}),
        s.track("File Uploaded"),
        s.track("Storage Updated", used_bytes=1_700_000_000),
    ]
    return history, s.track("Folder Shared"), s.track("Integration Connected")


def _team_velocity(s: UsageStream) -> tuple[list[Any], Any, Any]:
    # first seen on day 0; the third teammate arrives on day 13, the last day of the 14-day window
    history = [
        s.track("Signed In", user="ann"),
        s.track("Invite Sent", user="ann", at_ms=BASE_MS + 3 * DAY_MS),
    ]
    bob = s.track("Signed In", user="bob")
    return history, bob, s.track("Signed In", user="cy", at_ms=BASE_MS + 13 * DAY_MS)


def _scoring(s: UsageStream) -> tuple[list[Any], Any, Any]:
    # 10 sign-ins (20, capped) + 10 features (30, capped) + pricing views at 5 each; same day, so no decay yet
    history = [s.track("Signed In") for _ in range(10)] + [s.track("Feature Used") for _ in range(10)]
    return history, s.message("page", name="Pricing"), s.message("page", name="Pricing")


def _hubspot(s: UsageStream) -> tuple[list[Any], Any, Any]:
    history = [s.track("Feature Used", tier="paid") for _ in range(3)] + [s.track("Feature Used", tier="free")]
    return history, s.track("Feature Used", tier="paid"), s.track("Feature Used", tier="paid")


BOUNDARIES = {
    "slack-messages.yaml": (_slack, "2,000 messages sent — the free plan's limit"),
    "facebook-friends.yaml": (_facebook, "7 friends added"),
    "drift-conversations.yaml": (_drift, "100 conversations on your website"),
    "crm-contact-limit.yaml": (_crm, "80% of your 10,000-contact tier used"),
    "logins.yaml": (_logins, "10 sign-ins"),
    "dropbox-collaboration.yaml": (_dropbox, "1 integration connected"),
    "team-velocity.yaml": (_team_velocity, "3 teammates active within 14 days of signing up"),
    "scoring.yaml": (_scoring, "score 60 (60 needed)"),
    "hubspot-freemium.yaml": (_hubspot, "used paid-tier features 5 times in the last 14 days"),
}


def test_every_example_file_has_a_boundary_test() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(BOUNDARIES)


@pytest.mark.parametrize("file", sorted(BOUNDARIES))
def test_example_qualifies_exactly_at_its_boundary(file: str, table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given the example published and usage one event short of its boundary
    defn = publish(table_name, EXAMPLES / file)
    scenario, expected_reason = BOUNDARIES[file]
    stream = UsageStream(defn)
    history, short, boundary = scenario(stream)
    for message in history:
        stream.fold(message)

    # When the event one short of the boundary arrives
    assert qualify(stream.change(short)) == {"batchItemFailures": []}
    # Then nothing is emitted
    assert bus_events() == []

    # When the boundary event arrives
    assert qualify(stream.change(boundary)) == {"batchItemFailures": []}
    # Then exactly one PQL Qualified, with the definition version and a human reason
    events = bus_events()
    assert [e["detail-type"] for e in events] == ["PQL Qualified"]
    detail = events[0]["detail"]
    assert detail["definition"] == {"name": defn.name, "version": 1}
    assert expected_reason in [r["text"] for r in detail["reasons"]]
    assert detail["user_id"] == ("ann" if defn.unit == "user" else None)


# ---- exactly once ------------------------------------------------------------------------------------


def test_redelivering_every_record_gives_one_event_per_transition(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    # Given the slack definition and a run of records that crosses the boundary
    stream = published_stream(table_name, "slack-messages.yaml", "Message Sent", 1995)
    records = [stream.change(stream.track("Message Sent")) for _ in range(10)]

    # When every record is delivered, then the whole stream again, record by record and in batches
    qualify(*records)
    for record in records:
        qualify(record)
    qualify(*records)

    # Then one PQL Qualified in all
    assert [e["detail-type"] for e in bus_events()] == ["PQL Qualified"]


def test_a_crash_between_the_state_write_and_put_events_is_repaired_by_redelivery(
    table_name: str, bus_name: str, bus_events: Any
) -> None:
    # Given PutEvents failing on the first attempt (the state write has happened)
    real = EventPublisher(bus_name, sleep=lambda _: None)

    class FailingOnce:
        calls = 0

        def publish(self, details: Any) -> int:
            self.calls += 1
            if self.calls == 1:
                raise PublishError([{}], ["InternalFailure"])
            return real.publish(details)

    qualifier = Qualifier(DefinitionStore(table_name), PqlStateStore(table_name), FailingOnce(), decode_image)
    stream = published_stream(table_name, "drift-conversations.yaml", "Conversation Started", 99)
    record = stream.change(stream.track("Conversation Started"))

    # When the record fails, then is redelivered
    first = app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)
    assert first == {"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]}
    assert bus_events() == []
    app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)
    app.handler(stream_event(record), LambdaContext(), qualifier=qualifier)

    # Then the pending event went out exactly once
    qualified = of_type(bus_events(), "PQL Qualified")
    assert len(qualified) == 1
    item = boto3.client("dynamodb").get_item(TableName=table_name, Key={"pk": {"S": "A#acme"}, "sk": {"S": "PQL"}})[
        "Item"
    ]
    assert "pending" not in item and item["transition_id"]["S"] == qualified[0]["transition_id"]


def test_conversion_emits_account_converted_once_with_time_since_qualification(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    # Given a qualified account
    stream = published_stream(table_name, "drift-conversations.yaml", "Conversation Started", 99)
    qualify(stream.change(stream.track("Conversation Started")))

    # When ingest marks it converted an hour later (and the record is redelivered, and more usage follows)
    converted = stream.change(stream.track("Subscription Started", at_ms=stream.clock_ms + 3_600_000))
    qualify(converted)
    qualify(converted)
    qualify(stream.change(stream.track("Conversation Started")))

    # Then one Account Converted, carrying the time since qualification and the version that qualified it
    events = bus_events()
    assert [e["detail-type"] for e in events] == ["PQL Qualified", "Account Converted"]
    detail = events[1]["detail"]
    assert detail["seconds_since_qualified"] == 3600.0
    assert detail["definition"] == {"name": "drift-conversations", "version": 1}


def test_exclusions_win_and_disqualify_a_qualified_account(table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given a qualified account on the slack definition
    stream = published_stream(table_name, "slack-messages.yaml", "Message Sent", 1999)
    qualify(stream.change(stream.track("Message Sent")))

    # When the account's plan becomes a paying one (a group call), then usage continues
    qualify(stream.change(stream.message("group", traits={"plan": "pro"})))
    qualify(stream.change(stream.track("Message Sent")))

    # Then it is disqualified once, saying why
    events = bus_events()
    assert [e["detail-type"] for e in events] == ["PQL Qualified", "PQL Disqualified"]
    assert events[1]["detail"]["reasons"][0]["text"] == "already paying: plan is pro"


def test_the_bundled_default_applies_until_a_definition_is_published(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    # Given nothing published; the default is the scoring model
    from pqlflow.qualify.store import bundled_default

    stream = UsageStream(bundled_default())
    # 10 sign-ins (20 points, capped) + 3 invites (30) + 3 features (9) = 59
    history = [stream.track("Signed In") for _ in range(10)] + [stream.track("Invite Sent") for _ in range(3)]
    for message in history + [stream.track("Feature Used") for _ in range(3)]:
        stream.fold(message)

    # When enough usage arrives (a 4th feature used: 62)
    qualify(stream.change(stream.track("Feature Used")))

    # Then the default qualified it, and said so
    (detail,) = of_type(bus_events(), "PQL Qualified")
    assert detail["definition"] == {"name": "pqlflow-default", "version": 1}


def test_no_dynamodb_reads_per_stream_record(table_name: str, bus_name: str, bus_events: Any) -> None:
    # Given a warm qualifier whose DynamoDB calls are counted
    defn = publish(table_name, EXAMPLES / "scoring.yaml")
    client = boto3.client("dynamodb")
    recorder = CallRecorder(client)
    store = DefinitionStore(table_name, client=client)
    qualifier = Qualifier(store, PqlStateStore(table_name, client=client), EventPublisher(bus_name), decode_image)
    stream = UsageStream(defn)
    app.handler(stream_event(stream.change(stream.track("Signed In"))), LambdaContext(), qualifier=qualifier)
    warm = sum(recorder.calls[name] for name in READS)

    # When many records go through, including qualifications
    records = [
        stream.change(stream.track(name, user=f"u{i % 4}", account=f"a{i % 5}"))
        for i, name in enumerate(["Signed In", "Feature Used", "Invite Sent"] * 40)
    ]
    app.handler(stream_event(*records), LambdaContext(), qualifier=qualifier)

    # Then no read at all beyond the one cold-start definition load
    assert warm == 1
    assert sum(recorder.calls[name] for name in READS) == 1
    assert of_type(bus_events(), "PQL Qualified")


def test_concurrent_evaluation_of_the_same_record_emits_once(table_name: str, bus_name: str, bus_events: Any) -> None:
    # Given two qualifiers that both decide on the same record before either has written
    stream = published_stream(table_name, "drift-conversations.yaml", "Conversation Started", 99)
    change = stream.change(stream.track("Conversation Started"))["dynamodb"]
    other = Qualifier(DefinitionStore(table_name), PqlStateStore(table_name), EventPublisher(bus_name), decode_image)

    class RacingStore(PqlStateStore):
        raced = False

        def write(self, *args: Any, **kwargs: Any) -> None:
            if not self.raced:  # the other evaluation wins the race between our decision and our write
                self.raced = True
                other.process(change)
            super().write(*args, **kwargs)

    first = Qualifier(DefinitionStore(table_name), RacingStore(table_name), EventPublisher(bus_name), decode_image)

    # When both go through
    outcome = first.process(change)

    # Then one PQL Qualified, and the loser saw the winner's state instead of writing its own
    assert outcome.result == "no_transition"
    assert [e["detail-type"] for e in bus_events()] == ["PQL Qualified"]


def test_a_late_retry_of_an_older_record_does_not_undo_a_newer_transition(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    # Given a CRM account qualified by one record, then disqualified by the next
    defn = publish(table_name, EXAMPLES / "crm-contact-limit.yaml")
    stream = UsageStream(defn)
    stream.fold(stream.message("group", traits={"contacts_limit": 10000}))
    qualifying = stream.change(stream.track("Contacts Updated", total=8000))
    qualify(qualifying)
    qualify(stream.change(stream.track("Contacts Updated", total=5000)))

    # When the qualifying record is delivered again, late
    qualify(qualifying)

    # Then nothing more happens
    assert [e["detail-type"] for e in bus_events()] == ["PQL Qualified", "PQL Disqualified"]


def test_points_decay_over_simulated_time_until_the_account_is_disqualified(
    table_name: str, qualify: Any, bus_events: Any
) -> None:
    # Given a scoring account qualified at 62 points
    defn = publish(table_name, EXAMPLES / "scoring.yaml")
    stream = UsageStream(defn)
    for message in [stream.track("Signed In") for _ in range(10)] + [stream.track("Invite Sent") for _ in range(3)]:
        stream.fold(message)
    for _ in range(3):
        stream.fold(stream.track("Feature Used"))
    qualify(stream.change(stream.track("Feature Used")))

    # When it comes back 3 days later (62 → about 58.6: still above 50), then 20 days later
    qualify(stream.change(stream.track("Page Viewed", at_ms=stream.clock_ms + 3 * DAY_MS)))
    assert [e["detail-type"] for e in bus_events()] == ["PQL Qualified"]
    qualify(stream.change(stream.track("Page Viewed", at_ms=stream.clock_ms + 17 * DAY_MS)))

    # Then the decayed score has fallen under threshold − margin: one PQL Disqualified, saying so
    events = bus_events()
    assert [e["detail-type"] for e in events] == ["PQL Qualified", "PQL Disqualified"]
    (reason,) = events[1]["detail"]["reasons"]
    assert reason["kind"] == "score" and "below 50" in reason["text"]


def test_a_missing_environment_variable_fails_at_start_naming_it(
    table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pqlflow.kernel.settings import SettingsError

    monkeypatch.delenv("EVENT_BUS_NAME", raising=False)
    app.reset()
    with pytest.raises(SettingsError, match="EVENT_BUS_NAME"):
        app.handler(stream_event(), LambdaContext())
    app.reset()


def test_usage_kept_for_another_unit_is_ignored(table_name: str, qualify: Any, bus_events: Any) -> None:
    # Given a per-user definition in force, and an account-level usage item (kept before the switch)
    publish(table_name, EXAMPLES / "logins.yaml")
    stream = UsageStream(load_definition(EXAMPLES / "drift-conversations.yaml"))
    for _ in range(20):
        stream.fold(stream.track("Signed In"))
    # When it changes, then nothing is evaluated for it
    assert qualify(stream.change(stream.track("Signed In"))) == {"batchItemFailures": []}
    assert bus_events() == []
