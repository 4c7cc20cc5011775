"""What an operator relies on in template.yaml: triggers fire for the right events only, every
function exists and has its failure path, alarms watch every dead-letter queue, logs expire."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pqlflow.kernel import settings as pqlflow_settings
from pqlflow.local.patterns import filter_criteria_match, matches
from pqlflow.local.template import load_template as load_wiring
from pydantic import BaseModel, ValidationError

from tests.support.template import ROOT, TEMPLATE, policy_statements

FUNCTION = "AWS::Serverless::Function"


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stream_record(event_name: str, kind: str) -> dict[str, Any]:
    """A DynamoDB stream record as Lambda's filter sees it (NEW_AND_OLD_IMAGES)."""
    image = {"pk": {"S": "A#acme"}, "sk": {"S": "USAGE" if kind == "usage" else "PQL"}, "kind": {"S": kind}}
    record: dict[str, Any] = {
        "eventID": "1",
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"pk": image["pk"], "sk": image["sk"]}, "OldImage": image},
    }
    if event_name != "REMOVE":
        record["dynamodb"]["NewImage"] = image
    return record


def _usage_event(source: str, detail_type: str = "track") -> dict[str, Any]:
    return {
        "version": "0",
        "id": "6f87d04b-9f74-4f04-8780-c6c1a4ce8d7e",
        "source": source,
        "detail-type": detail_type,
        "account": "123456789012",
        "time": "2026-11-22T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"type": detail_type, "event": "Signed In", "messageId": "m-1", "userId": "u-1"},
    }


def _nurture_action(channel: str, outcome: str) -> dict[str, Any]:
    return {
        "source": "pqlflow",
        "detail-type": "Nurture Action",
        "detail": {"action_id": "a-1", "account_id": "acme", "channel": channel, "outcome": outcome},
    }


# --- qualify: the stream filter --------------------------------------------------------------------


@pytest.fixture
def qualify_filters(template: dict[str, Any]) -> list[dict[str, Any]]:
    event = template["Resources"]["QualifyFunction"]["Properties"]["Events"]["UsageState"]["Properties"]
    return [json.loads(f["Pattern"]) for f in event["FilterCriteria"]["Filters"]]


@pytest.mark.parametrize("event_name", ["INSERT", "MODIFY"])
def test_qualify_is_invoked_for_usage_state_changes(
    qualify_filters: list[dict[str, Any]], event_name: str
) -> None:
    # Given a usage-state item written by ingest
    record = _stream_record(event_name, kind="usage")
    # When Lambda applies the qualify mapping's filter
    # Then the record reaches qualify
    assert filter_criteria_match(qualify_filters, record)


@pytest.mark.parametrize("kind", ["pql", "nurture_action", "email", "offer", "quarantine", "definition"])
def test_qualify_is_never_invoked_by_other_items(qualify_filters: list[dict[str, Any]], kind: str) -> None:
    # Given an item qualify itself (kind pql) or another part of pqlflow wrote
    record = _stream_record("MODIFY", kind=kind)
    # When / Then the filter drops it, so qualify never triggers itself
    assert not filter_criteria_match(qualify_filters, record)


def test_qualify_is_not_invoked_when_ttl_removes_a_usage_item(qualify_filters: list[dict[str, Any]]) -> None:
    # Given a usage item deleted by TTL (a REMOVE record has no NewImage)
    record = _stream_record("REMOVE", kind="usage")
    # When / Then
    assert not filter_criteria_match(qualify_filters, record)


def test_qualify_mapping_retries_bisects_and_keeps_what_fails(template: dict[str, Any]) -> None:
    # Given the qualify stream mapping
    props = template["Resources"]["QualifyFunction"]["Properties"]["Events"]["UsageState"]["Properties"]
    # Then a poison record is isolated, retried a bounded number of times, and its pointer kept
    assert props["BisectBatchOnFunctionError"] is True
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 0 < props["MaximumRetryAttempts"] <= 10
    on_failure = props["DestinationConfig"]["OnFailure"]["Destination"]
    assert on_failure == {"Fn::GetAtt": ["QualifyFailureQueue", "Arn"]}


# --- ingest: the usage rule ------------------------------------------------------------------------


def _usage_rule(**overrides: str) -> dict[str, Any]:
    wiring = load_wiring(TEMPLATE, overrides)
    (rule,) = [r for r in wiring.rules if r.logical_id == "UsageEventsRule"]
    return rule.pattern


@pytest.mark.parametrize("detail_type", ["track", "identify", "group", "page", "screen"])
def test_usage_rule_accepts_segment_partner_sources(detail_type: str) -> None:
    # Given the usage rule with its default parameters
    pattern = _usage_rule()
    # When Segment's EventBridge destination sends a call
    event = _usage_event("aws.partner/segment.com/Ab12Cd34Ef", detail_type)
    # Then it goes to the ingest queue
    assert matches(pattern, event)


def test_usage_rule_accepts_every_allowed_source_not_only_the_first() -> None:
    # Given three allowed sources
    pattern = _usage_rule(AllowedSources="pqlflow.emitter,com.acme.web,com.acme.mobile")
    # When / Then events from each of them are accepted
    for source in ("pqlflow.emitter", "com.acme.web", "com.acme.mobile"):
        assert matches(pattern, _usage_event(source)), source


def test_usage_rule_rejects_unknown_sources_and_non_segment_types() -> None:
    # Given the usage rule with its default parameters
    pattern = _usage_rule()
    # When / Then an unknown source, or pqlflow's own events, never reach ingest
    assert not matches(pattern, _usage_event("com.unknown.app"))
    assert not matches(pattern, _usage_event("aws.partner/segment.com/Ab12", "alias"))
    assert not matches(pattern, _usage_event("pqlflow", "PQL Qualified"))


def test_usage_rule_reads_an_existing_bus_while_pqlflow_events_stay_on_its_own() -> None:
    # Given an existing Segment partner bus
    partner_bus = "aws.partner/segment.com/Ab12Cd34Ef"
    wiring = load_wiring(TEMPLATE, {"EventBusName": partner_bus})
    # When the stack is wired
    (usage_rule,) = [r for r in wiring.rules if r.logical_id == "UsageEventsRule"]
    route_rules = [r for r in wiring.rules if r.logical_id.startswith("RouteFunction")]
    # Then usage is read from the partner bus, and pqlflow's own events use the stack's bus
    assert usage_rule.bus_name == partner_bus
    assert route_rules and all(r.bus_name != partner_bus for r in route_rules)
    assert all(f.environment["EVENT_BUS_NAME"] != partner_bus for f in wiring.functions.values())
    # And the emitter's events, which cannot go to a partner bus, still reach ingest from the stack's bus
    emitter_event = _usage_event("pqlflow.emitter")
    emitted = [r for r in wiring.rules if r.bus_name != partner_bus and matches(r.pattern, emitter_event)]
    assert [t.name for r in emitted for t in r.targets] == [usage_rule.targets[0].name]


# --- ingest transports: SQS (default) or Firehose objects -------------------------------------------


def _targets(rule: dict[str, Any], condition_true: bool) -> list[dict[str, Any]]:
    out = []
    for target in rule["Properties"]["Targets"]:
        if "Fn::If" in target:
            _, when_true, when_false = target["Fn::If"]
            target = when_true if condition_true else when_false
        out.append(target)
    return out


@pytest.mark.parametrize("firehose", [False, True], ids=["sqs", "firehose"])
@pytest.mark.parametrize("rule", ["UsageEventsRule", "EmitterUsageRule"])
def test_usage_rules_send_to_the_chosen_transport_and_keep_what_they_cannot_deliver(
    template: dict[str, Any], rule: str, firehose: bool
) -> None:
    # Given either transport / Then each usage rule has one target, on it, with retries and a dead-letter queue
    (target,) = _targets(template["Resources"][rule], firehose)
    expected = {"Fn::GetAtt": ["UsageFirehose" if firehose else "UsageQueue", "Arn"]}
    assert target["Arn"] == expected
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["UsageRuleDeadLetterQueue", "Arn"]}
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 86400
    assert ("RoleArn" in target) is firehose
    assert template["Conditions"]["UsageViaFirehose"] == {"Fn::Equals": [{"Ref": "IngestTransport"}, "firehose"]}


def test_firehose_objects_reach_ingest_once_each_and_failures_are_kept(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    stream = resources["UsageFirehose"]["Properties"]["ExtendedS3DestinationConfiguration"]
    rule = resources["UsageObjectsRule"]["Properties"]
    ingest = resources["IngestFunction"]["Properties"]
    # Given the Firehose transport: the stream buffers IngestBufferSeconds, gzip, one event per line
    assert stream["BufferingHints"] == {"IntervalInSeconds": {"Ref": "IngestBufferSeconds"}, "SizeInMBs": 5}
    assert stream["CompressionFormat"] == "GZIP"
    (processor,) = stream["ProcessingConfiguration"]["Processors"]
    assert processor["Type"] == "AppendDelimiterToRecord"
    # Then every object it writes (its prefix) is an event the object rule sends to ingest, which may read it
    assert rule["EventPattern"]["detail"]["object"]["key"] == [{"prefix": stream["Prefix"]}]
    assert rule["EventPattern"]["detail"]["bucket"]["name"] == [{"Ref": "UsageObjectsBucket"}]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["IngestFunction", "Arn"]}
    reads = [s for s in policy_statements(resources["IngestFunction"]) if s["Action"] == "s3:GetObject"]
    assert [r["Resource"] for r in reads] == [{"Fn::Sub": "${UsageObjectsBucket.Arn}/" + stream["Prefix"] + "*"}]
    # And an object ingest fails to fold after its retries, or cannot be handed to it, lands in one alarmed queue
    on_failure = ingest["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]
    assert target["DeadLetterConfig"]["Arn"] == on_failure == {"Fn::GetAtt": ["UsageObjectsDeadLetterQueue", "Arn"]}
    assert ingest["EventInvokeConfig"]["MaximumRetryAttempts"] == 2
    # And nothing of it exists with the queue transport
    conditioned = {n for n, r in resources.items() if r.get("Condition") == "UsageViaFirehose"}
    assert {"UsageObjectsBucket", "UsageFirehose", "UsageObjectsRule", "UsageObjectsPermission",
            "UsageFirehoseFreshnessAlarm"} <= conditioned
    # And an object's delivery that stalls pages someone before Firehose's 24 hours of retries run out
    freshness = resources["UsageFirehoseFreshnessAlarm"]["Properties"]
    assert freshness["MetricName"] == "DeliveryToS3.DataFreshness"
    assert freshness["Dimensions"] == [{"Name": "DeliveryStreamName", "Value": {"Ref": "UsageFirehose"}}]
    assert freshness["Threshold"] > template["Parameters"]["IngestBufferSeconds"]["MaxValue"]


def test_the_default_transport_is_the_one_the_cost_bench_chose(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    # Given the defaults (docs/deploy.md, Cost notes: Firehose at a 5-minute buffer meets the cost targets at
    # the busy shape, SQS does not at any window)
    assert parameters["IngestTransport"]["Default"] == "firehose"
    assert parameters["IngestBufferSeconds"]["Default"] == 300
    # Then the queue's mapping polls only when the queue is the transport: no empty receives billed otherwise
    (usage,) = [e for e in template["Resources"]["IngestFunction"]["Properties"]["Events"].values()
                if e["Type"] == "SQS"]
    assert usage["Properties"]["Enabled"] == {"Fn::If": ["UsageViaQueue", True, False]}
    assert template["Conditions"]["UsageViaQueue"] == {"Fn::Equals": [{"Ref": "IngestTransport"}, "sqs"]}
    for transport, polls in (("firehose", False), ("sqs", True)):
        (source,) = [s for s in load_wiring(TEMPLATE, {"IngestTransport": transport}).sqs_sources
                     if s.function == "IngestFunction"]
        assert source.enabled is polls


# --- nurture: channel rules ------------------------------------------------------------------------


def _rules_matching(event: dict[str, Any]) -> set[str]:
    wiring = load_wiring(TEMPLATE)
    return {t.name for r in wiring.rules if matches(r.pattern, event) for t in r.targets}


@pytest.mark.parametrize(
    ("channel", "function"),
    [("email", "SendEmailFunction"), ("offer", "OffersFunction"), ("rep_task", "RepTaskFunction")],
)
def test_a_sent_action_reaches_exactly_its_channel(
    channel: str, function: str, template: dict[str, Any]
) -> None:
    if function not in template["Resources"]:
        pytest.skip(f"{function} is not in the template yet")
    # Given a Nurture Action to send on one channel
    # When it is put on the bus / Then exactly that channel's function gets it
    assert _rules_matching(_nurture_action(channel, "send")) == {function}


@pytest.mark.parametrize("outcome", ["deferred", "holdout", "suppressed", "capped"])
def test_an_action_that_is_not_send_reaches_no_channel(outcome: str) -> None:
    # Given an email action deferred to quiet hours (Scheduler puts it back later as `send`), or
    # an action that sends nothing
    # When / Then no channel function acts on it
    assert _rules_matching(_nurture_action("email", outcome)) == set()


# --- every function: code, logs, failure path, least privilege -----------------------------------


def test_every_function_handler_exists(template: dict[str, Any]) -> None:
    # Given every function of the template
    for name, fn in _resources(template, FUNCTION).items():
        props = fn["Properties"]
        module, _, attr = props["Handler"].rpartition(".")
        path = ROOT / props["CodeUri"] / f"{module.replace('.', '/')}.py"
        # Then its handler file exists and defines the handler
        assert path.is_file(), f"{name}: {path} is missing"
        body = ast.parse(path.read_text()).body
        defined = {n.name for n in body if isinstance(n, ast.FunctionDef)}
        assigned = (t for n in body if isinstance(n, ast.Assign) for t in n.targets)
        defined |= {t.id for t in assigned if isinstance(t, ast.Name)}
        assert attr in defined, f"{name}: {path} defines no {attr}"


def test_every_function_description_fits_lambdas_limit(template: dict[str, Any]) -> None:
    # Lambda refuses a Description over 256 characters at deploy time (cfn-lint E3033)
    for name, fn in _resources(template, FUNCTION).items():
        assert len(fn["Properties"].get("Description", "")) <= 256, name


def test_every_function_logs_to_its_own_group_with_retention(template: dict[str, Any]) -> None:
    groups = _resources(template, "AWS::Logs::LogGroup")
    for name, fn in _resources(template, FUNCTION).items():
        # Given a function's log configuration
        ref = fn["Properties"].get("LoggingConfig", {}).get("LogGroup", {}).get("Ref")
        # Then it names a log group of the stack that expires its logs
        assert ref in groups, f"{name}: LoggingConfig.LogGroup must reference a log group of the template"
        assert groups[ref]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, ref


def test_every_eventbridge_triggered_function_keeps_what_it_cannot_process(template: dict[str, Any]) -> None:
    for name, fn in _resources(template, FUNCTION).items():
        props = fn["Properties"]
        rules = [e["Properties"] for e in props.get("Events", {}).values() if e["Type"] == "EventBridgeRule"]
        if not rules:
            continue
        # Given an EventBridge-triggered function
        on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]
        # Then a failed invocation and an undeliverable event both land in the same queue
        assert on_failure["Fn::GetAtt"][1] == "Arn", name
        for rule in rules:
            assert rule["DeadLetterConfig"]["Arn"] == on_failure, name
            assert rule["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 86400, name


def test_every_dead_letter_queue_has_an_alarm(template: dict[str, Any]) -> None:
    queues = _resources(template, "AWS::SQS::Queue")
    dead_letter = {n for n, q in queues.items() if "RedrivePolicy" not in q["Properties"]}
    alarmed = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in _resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and a["Properties"]["Threshold"] == 0
        and a["Properties"]["ComparisonOperator"] == "GreaterThanThreshold"
    }
    # Given every queue that is the end of the line (no redrive of its own)
    # Then its first message raises an alarm
    assert dead_letter, "the template should have dead-letter queues"
    assert dead_letter <= alarmed, f"no depth alarm on {sorted(dead_letter - alarmed)}"


def test_every_function_has_an_errors_alarm_that_notifies_the_topic(template: dict[str, Any]) -> None:
    alarms = _resources(template, "AWS::CloudWatch::Alarm").values()
    watched = {a["Properties"]["Dimensions"][0]["Value"]["Ref"] for a in alarms
               if a["Properties"]["MetricName"] == "Errors"}
    # Given every function / Then its errors are alarmed
    assert set(_resources(template, FUNCTION)) <= watched
    # And every alarm notifies AlarmTopicArn when it is set
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }


def test_function_policies_name_their_actions_and_resources(template: dict[str, Any]) -> None:
    for name, fn in _resources(template, FUNCTION).items():
        for statement in policy_statements(fn):
            actions = _as_list(statement["Action"])
            resources = _as_list(statement["Resource"])
            # Then no wildcard action and no account-wide resource
            assert all("*" not in a for a in actions), f"{name}: {actions}"
            assert "*" not in resources, f"{name}: Resource '*'"


def test_every_lint_suppression_says_why() -> None:
    # Given the template text (comments are the written reasons)
    lines = TEMPLATE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "ignore_checks:" in line:
            # Then a comment sits right above each suppression
            reason = lines[i - 1]
            assert re.match(r"^\s*#\s*\w", reason), f"template.yaml:{i + 1}: suppression without a reason"


def test_offers_api_requires_a_jwt_and_unsubscribe_is_public(template: dict[str, Any]) -> None:
    api = template["Resources"]["HttpApi"]["Properties"]["Auth"]
    assert api["DefaultAuthorizer"] == "OffersJwt"
    jwt = api["Authorizers"]["OffersJwt"]["JwtConfiguration"]
    assert jwt == {"issuer": {"Ref": "OffersJwtIssuer"}, "audience": {"Ref": "OffersJwtAudience"}}
    for name, fn in _resources(template, FUNCTION).items():
        for event in fn["Properties"].get("Events", {}).values():
            if event["Type"] != "HttpApi" or event["Properties"]["ApiId"] != {"Ref": "HttpApi"}:
                continue  # the collection API is its own (test_the_collection_api_...)
            path, auth = event["Properties"]["Path"], event["Properties"]["Auth"]["Authorizer"]
            # Public on purpose: one-click unsubscribe (a signed token) and the connectors' signed callbacks.
            expected = "NONE" if path == "/unsubscribe" or path.startswith("/rep-tasks/") else "OffersJwt"
            assert auth == expected, f"{name} {path}: {auth}"


def _settings_models(
    app_path: Path, function_dir: str, monkeypatch: pytest.MonkeyPatch
) -> list[type[BaseModel]]:
    """The pydantic settings model(s) a function validates its environment with."""
    spec = importlib.util.spec_from_file_location(f"_template_test_{function_dir}", app_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while loading
    spec.loader.exec_module(module)
    # The handler's own module, and the package modules it calls into (its settings live beside its service)
    homes = [module] + [sys.modules[m] for m in {getattr(v, "__module__", "") for v in vars(module).values()}
                        if m.startswith("pqlflow.") and m != pqlflow_settings.__name__ and m in sys.modules]
    models = [v for home in homes for k, v in vars(home).items()
              if isinstance(v, type) and issubclass(v, BaseModel) and k.endswith("Settings")
              and v.__module__ == home.__name__]
    shared = getattr(pqlflow_settings, "".join(p.title() for p in function_dir.split("_")) + "Settings", None)
    return models + ([shared] if shared is not None else [])


def test_every_function_gets_the_environment_its_settings_require(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment the template gives each function (parameters at their defaults)
    wiring = load_wiring(TEMPLATE)
    for name, fn in wiring.functions.items():
        models = _settings_models(fn.code_uri / "app.py", fn.code_uri.name, monkeypatch)
        assert models, f"{name}: no settings model found in {fn.code_uri}/app.py"
        for model in models:
            # When the function validates it at cold start / Then nothing is missing or malformed
            try:
                model.model_validate(fn.environment)
            except ValidationError as exc:
                pytest.fail(f"{name}: {model.__name__} rejects the template's environment: {exc}")


def _file_settings() -> list[tuple[str, str, Path]]:
    wiring = load_wiring(TEMPLATE)
    return [(name, var, fn.code_uri / value) for name, fn in sorted(wiring.functions.items())
            for var, value in sorted(fn.environment.items()) if var.endswith("_FILE")]


@pytest.mark.parametrize(("function", "variable", "path"), _file_settings(), ids=lambda v: getattr(v, "name", v))
def test_config_files_named_by_the_template_ship_with_the_function(
    function: str, variable: str, path: Path
) -> None:
    # Given a function told to read a file (policy, catalog, roster) by a relative path
    # Then the file is in its CodeUri folder, so `sam build` packages it (Lambda runs in /var/task)
    assert path.is_file(), f"{function}: {variable} names {path.relative_to(ROOT)}, which does not exist"


def test_dashboard_is_valid_json_and_shows_every_function_and_dead_letter_queue(template: dict[str, Any]) -> None:
    # Given the dashboard body (a !Sub over JSON)
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    refs = set(re.findall(r"\$\{([^}]+)\}", body))
    # When CloudFormation substitutes it / Then every reference exists and the result is JSON
    unknown = {r for r in refs if not r.startswith("AWS::") and r.split(".")[0] not in template["Resources"]}
    assert not unknown
    json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    # And the operator sees every function's errors and every dead-letter queue's depth
    queues = _resources(template, "AWS::SQS::Queue")
    dead_letter = {f"{n}.QueueName" for n, q in queues.items() if "RedrivePolicy" not in q["Properties"]}
    assert set(_resources(template, FUNCTION)) | dead_letter <= refs


def test_ingest_reads_usage_state_only_to_compact_it_and_otherwise_only_the_definition_in_force(
    template: dict[str, Any],
) -> None:
    # Ingest never reads usage state before writing it (exactly-once without read-before-write): its reads of
    # usage items are compaction's (the cold item, late hours' archives), on the same A#<account> prefix it
    # writes; its only other read is the definition in force (pk DEF), to know which gauges and filters to keep.
    statements = [s for s in policy_statements(template["Resources"]["IngestFunction"])
                  if any(a.startswith("dynamodb:") for a in _as_list(s["Action"]))]
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert actions == {"dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Query",
                       "dynamodb:BatchWriteItem"}
    reads = [s for s in statements if "dynamodb:GetItem" in _as_list(s["Action"])]
    assert sorted(tuple(sorted(_leading_keys(s))) for s in reads) == [("A#*",), ("DEF",)]


# --- least privilege on the table: each function only the key prefixes and actions its code uses ------

TABLE = {"Fn::GetAtt": ["PqlflowTable", "Arn"]}


def _pattern(key: dict[str, Any]) -> str:
    """The `dynamodb:LeadingKeys` pattern of a key function's keys: `A#<account>` → `A#*`; `DEF` stays."""
    pk = key["pk"]["S"] if isinstance(key["pk"], dict) else key["pk"]
    head, sep, _ = pk.partition("#")
    return f"{head}#*" if sep else pk


def _expected_table_access() -> dict[str, dict[str, set[str]]]:
    """Per function, IAM action → the partition-key patterns its adapters use, from their own key functions."""
    from pqlflow.channels.crm.store import state_key as crm_state_key
    from pqlflow.channels.crm.store import sync_key as crm_sync_key
    from pqlflow.channels.email.ledger import marker_key
    from pqlflow.channels.offers.store import OfferStore
    from pqlflow.channels.rep_tasks.store import RepTaskStore
    from pqlflow.contracts.usage_events import Rejection
    from pqlflow.ingest.cold import archive_key, cold_key
    from pqlflow.ingest.item import usage_key
    from pqlflow.ingest.quarantine import quarantine_item
    from pqlflow.nurture.journey_store import journey_key
    from pqlflow.nurture.store import action_key, cap_key
    from pqlflow.nurture.suppression import suppression_key
    from pqlflow.qualify import store as definitions
    from pqlflow.qualify.transitions import state_key

    usage, quarantine = _pattern(usage_key("acct")), _pattern(quarantine_item("{}", Rejection("body", "x"), 0, 1))
    cold, archive = _pattern(cold_key("acct")), _pattern(archive_key("acct", None, 0, 1))
    definition = _pattern({"pk": definitions.PK})
    pql = _pattern(state_key("acct", None))
    action, account_cap, user_cap = (_pattern(action_key("acct", "t")), _pattern(cap_key("account", "acct")),
                                     _pattern(cap_key("user", "u")))
    suppression = _pattern(suppression_key("0" * 64))
    journey = _pattern(journey_key("acct", None))
    offer, lock = _pattern(OfferStore._key("u", "of_1")), _pattern(OfferStore.lock_key("acct", "discount"))
    task, counter = _pattern(RepTaskStore._key("acct", "t")), _pattern(RepTaskStore.counter_key("any:any"))
    pointer = _pattern(RepTaskStore.pointer_key("rt_1"))
    assert _pattern(RepTaskStore.pointer_key("rt_1", "123")) == pointer
    marker = _pattern(marker_key("acct", "a"))
    crm_sync, crm_state = _pattern(crm_sync_key("acct", "hubspot", "t")), _pattern(crm_state_key("acct", "hubspot"))
    return {
        # ingest: the usage write per account; compaction's transaction (hot update, cold put, archive updates)
        # and reads (cold item, archives); quarantined events; the definition in force (read only)
        "IngestFunction": {"dynamodb:UpdateItem": {usage}, "dynamodb:PutItem": {cold, archive},
                           "dynamodb:GetItem": {usage, cold, definition}, "dynamodb:Query": {archive},
                           "dynamodb:BatchWriteItem": {quarantine}},
        # qualify: transition state (conditional put/update), the cold usage item and the published definition
        # (read only)
        "QualifyFunction": {"dynamodb:PutItem": {pql}, "dynamodb:UpdateItem": {pql},
                            "dynamodb:GetItem": {cold, definition}},
        # route: one BatchGetItem of action, journey, caps and suppressions; the transaction; the emitted mark;
        # the account's journeys (a stop, an engagement)
        "RouteFunction": {"dynamodb:BatchGetItem": {action, journey, account_cap, user_cap, suppression},
                          "dynamodb:PutItem": {action, journey},
                          "dynamodb:UpdateItem": {action, journey, account_cap, user_cap},
                          "dynamodb:Query": {journey},
                          # a journey step reads the usage (hot and cold) and the definition as qualify does
                          "dynamodb:GetItem": {usage, cold, definition}},
        # offers: the offer and its account lock, in one transaction
        "OffersFunction": {"dynamodb:PutItem": {offer, lock}},
        # offers API: the caller's offers; dismissing frees the account's lock
        "OffersApiFunction": {"dynamodb:GetItem": {offer}, "dynamodb:Query": {offer}, "dynamodb:UpdateItem": {offer},
                              "dynamodb:DeleteItem": {lock}},
        # rep_task: the task item, its pointers for the callbacks and the round-robin counters
        "RepTaskFunction": {"dynamodb:GetItem": {task, counter}, "dynamodb:PutItem": {task, pointer},
                            "dynamodb:UpdateItem": {task, counter}},
        # rep_task_events (internet-facing, signed): the pointer, then the task item it closes
        "RepTaskEventsFunction": {"dynamodb:GetItem": {pointer, task}, "dynamodb:UpdateItem": {task}},
        # send_email: the delivery marker (claim, finish, release), the suppression check and whether the account
        # converted since it qualified (its qualification state)
        "SendEmailFunction": {"dynamodb:PutItem": {marker}, "dynamodb:UpdateItem": {marker},
                              "dynamodb:DeleteItem": {marker}, "dynamodb:GetItem": {suppression, pql}},
        # the public unsubscribe endpoint and SES feedback: suppression entries, nothing else
        "UnsubscribeFunction": {"dynamodb:GetItem": {suppression}, "dynamodb:PutItem": {suppression}},
        "SesEventsFunction": {"dynamodb:PutItem": {suppression}},
        # the internet-facing collection API: the messages it rejects, in ingest's quarantine, nothing else
        "CollectFunction": {"dynamodb:BatchWriteItem": {quarantine}},
        # crm_sync: the sync record per transition and target, and the record state it claims
        "CrmSyncFunction": {"dynamodb:GetItem": {crm_sync, crm_state}, "dynamodb:PutItem": {crm_sync},
                            "dynamodb:UpdateItem": {crm_state}},
    }


def _table_statements(fn: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in policy_statements(fn) if any(str(a).startswith("dynamodb:") for a in _as_list(s["Action"]))]


def _leading_keys(statement: dict[str, Any]) -> set[str]:
    condition = statement.get("Condition") or {}
    like = condition.get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys", [])
    equals = condition.get("ForAllValues:StringEquals", {}).get("dynamodb:LeadingKeys", [])
    assert not [p for p in equals if "*" in p], "a wildcard needs StringLike"
    return set(_as_list(like)) | set(_as_list(equals))


def _granted(fn: dict[str, Any]) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for statement in _table_statements(fn):
        for action in _as_list(statement["Action"]):
            granted.setdefault(action, set()).update(_leading_keys(statement))
    return granted


def test_every_table_statement_is_scoped_to_partition_key_prefixes(template: dict[str, Any]) -> None:
    for name, fn in _resources(template, FUNCTION).items():
        for statement in _table_statements(fn):
            # Given a statement that grants table actions / Then it names the table and its key prefixes
            assert statement["Resource"] == TABLE, f"{name}: {statement['Resource']}"
            assert _leading_keys(statement), f"{name}: {statement['Action']} without a dynamodb:LeadingKeys condition"
            assert set(statement["Condition"]) <= {"ForAllValues:StringLike", "ForAllValues:StringEquals"}, name


@pytest.mark.parametrize("function", sorted(_expected_table_access()))
def test_each_function_may_touch_only_the_keys_and_actions_its_code_uses(
    template: dict[str, Any], function: str
) -> None:
    # Given the key prefixes the function's adapters build (their own key functions) and the calls they make
    expected = _expected_table_access()[function]
    # When its policy is read / Then it grants exactly those actions on exactly those prefixes
    assert _granted(template["Resources"][function]) == expected


def test_every_function_with_table_access_is_checked(template: dict[str, Any]) -> None:
    with_table = {name for name, fn in _resources(template, FUNCTION).items() if _table_statements(fn)}
    assert with_table == set(_expected_table_access())


def test_the_public_unsubscribe_endpoint_can_write_suppression_entries_only(template: dict[str, Any]) -> None:
    from pqlflow.nurture.suppression import suppression_key

    # Given the internet-facing function (its only credential is a signed token)
    granted = _granted(template["Resources"]["UnsubscribeFunction"])
    # Then it may put items only under the suppression list's partition keys (SUP#<sha256>), and read them
    assert granted == {"dynamodb:PutItem": {"SUP#*"}, "dynamodb:GetItem": {"SUP#*"}}
    assert suppression_key("0" * 64)["pk"].startswith("SUP#")


# --- the HTTP API: throttling and payload limits ----------------------------------------------------


def test_the_http_api_throttles_every_route_with_parameters(template: dict[str, Any]) -> None:
    settings = template["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]
    params = template["Parameters"]
    # Given the API's default route settings / Then burst and rate come from parameters with bounds
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    burst, rate = params["ApiThrottlingBurstLimit"], params["ApiThrottlingRateLimit"]
    assert burst["Type"] == rate["Type"] == "Number"
    assert 1 <= burst["MinValue"] <= burst["Default"] <= burst["MaxValue"]
    assert 1 <= rate["MinValue"] <= rate["Default"] <= rate["MaxValue"]
    # And no route is left out: per-route settings would replace the defaults, and there are none
    assert "RouteSettings" not in template["Resources"]["HttpApi"]["Properties"]


def test_the_deploy_guide_states_the_http_api_limits_the_template_sets(template: dict[str, Any]) -> None:
    from pqlflow.channels.email.unsubscribe import MAX_TOKEN_CHARS
    from pqlflow.channels.email.unsubscribe_endpoint import MAX_BODY_BYTES

    guide = (ROOT / "docs" / "deploy.md").read_text()
    params = template["Parameters"]
    # Then the operator reads the same defaults and limits the template and the handlers apply
    for name in ("ApiThrottlingBurstLimit", "ApiThrottlingRateLimit"):
        assert f"| `{name}` | {params[name]['Default']} |" in guide, name
    for limit in ("10 MB", "6 MB", f"{MAX_BODY_BYTES:,} bytes", f"{MAX_TOKEN_CHARS:,} characters"):
        assert limit in guide, limit


# --- the collection API (Segment HTTP API) ---------------------------------------------------------


def test_the_collection_api_serves_every_segment_call_and_its_preflight_on_its_own_api(
    template: dict[str, Any],
) -> None:
    from pqlflow.collect.messages import CALLS

    events = template["Resources"]["CollectFunction"]["Properties"]["Events"].values()
    routes = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events if e["Type"] == "HttpApi"}
    # Given the collect function's routes / Then every Segment call and the batch are POST routes (also under
    # the one-letter paths analytics.js posts to), and browsers' preflights reach the function (it answers
    # CORS per write key)
    calls = {*CALLS, "batch"}
    assert routes == {("POST", f"/v1/{c}") for c in calls | {c[0] for c in calls}} | {("OPTIONS", "/v1/{call}")}
    assert {e["Properties"]["ApiId"]["Ref"] for e in events} == {"CollectApi"}
    api = template["Resources"]["CollectApi"]["Properties"]
    # And its API has no authorizer (the write key is the credential) and no API-level CORS, which would
    # answer preflights itself with one origin list for every key
    assert "Auth" not in api and "CorsConfiguration" not in api
    assert api["DefaultRouteSettings"] == {"ThrottlingBurstLimit": {"Ref": "CollectThrottlingBurstLimit"},
                                           "ThrottlingRateLimit": {"Ref": "CollectThrottlingRateLimit"}}


def test_the_collection_api_may_only_put_events_read_its_keys_and_quarantine(template: dict[str, Any]) -> None:
    statements = policy_statements(template["Resources"]["CollectFunction"])
    granted = {(a, json.dumps(s["Resource"], sort_keys=True)) for s in statements for a in _as_list(s["Action"])}
    assert granted == {
        ("events:PutEvents", json.dumps({"Fn::GetAtt": ["PqlflowBus", "Arn"]})),
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": "CollectWriteKeys"})),
        ("dynamodb:BatchWriteItem", json.dumps(TABLE, sort_keys=True)),
    }


def test_the_collection_api_default_key_source_is_one_the_usage_rule_accepts(template: dict[str, Any]) -> None:
    from pqlflow.collect.keys import DEFAULT_SOURCE, parse_keys

    # Given the secret as the stack generates it (one key, its source) and the rule at default parameters
    generated = template["Resources"]["CollectWriteKeys"]["Properties"]["GenerateSecretString"]
    document = json.loads(generated["SecretStringTemplate"]) | {generated["GenerateStringKey"]: "k" * 40}
    wiring = load_wiring(TEMPLATE)
    sources = wiring.functions["CollectFunction"].environment["ALLOWED_SOURCES"].split(",")
    [key] = parse_keys(document, sources).keys.values()
    # Then the generated key is usable as deployed, and its events match the usage rule (to the ingest queue)
    assert key.problem is None and key.source == DEFAULT_SOURCE
    assert matches(_usage_rule(), _usage_event(key.source))
    # And a source outside AllowedSources is a problem the function reports (a 5xx), not a silent loss
    [other] = parse_keys({"writeKey": "k" * 40, "source": "com.acme.web"}, sources).keys.values()
    assert other.problem is not None and "AllowedSources" in other.problem
    assert not matches(_usage_rule(), _usage_event("com.acme.web"))


def test_the_deploy_guide_states_the_collection_api_defaults(template: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    params = template["Parameters"]
    # Then the operator reads the defaults the template applies, AllowedSources included (it must list the key's)
    for name in ("CollectWriteKeysCacheSeconds", "CollectThrottlingBurstLimit", "CollectThrottlingRateLimit"):
        assert f"| `{name}` | {params[name]['Default']} |" in guide, name
    assert f"| `AllowedSources` | `{params['AllowedSources']['Default']}` |" in guide


@pytest.mark.parametrize("detail_type", ["PQL Qualified", "PQL Disqualified", "Account Converted"])
def test_every_pql_transition_reaches_the_crm_sync_queue(template: dict[str, Any], detail_type: str) -> None:
    # Given the CRM sync rule's pattern
    rule = template["Resources"]["CrmSyncRule"]["Properties"]
    # Then each transition pqlflow emits matches, and nothing else does
    assert matches(rule["EventPattern"], {"source": "pqlflow", "detail-type": detail_type, "detail": {}})
    for other in ("Nurture Action", "Rep Task Created", "track"):
        assert not matches(rule["EventPattern"], {"source": "pqlflow", "detail-type": other, "detail": {}})
    assert not matches(rule["EventPattern"], {"source": "someone.else", "detail-type": detail_type, "detail": {}})
    # And it reads the stack's own bus, where pqlflow emits them
    assert rule["EventBusName"] == {"Ref": "PqlflowBus"}


def test_crm_sync_reports_partial_batches_and_keeps_what_fails_in_an_alarmed_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    # Given the rule's target, the queue and the function's trigger
    (target,) = resources["CrmSyncRule"]["Properties"]["Targets"]
    queue = resources["CrmSyncQueue"]["Properties"]
    (trigger,) = resources["CrmSyncFunction"]["Properties"]["Events"].values()
    # Then the rule feeds the queue, and what it cannot put there lands in the dead-letter queue
    assert target["Arn"] == {"Fn::GetAtt": ["CrmSyncQueue", "Arn"]}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["CrmSyncDeadLetterQueue", "Arn"]}
    # And a message that keeps failing ends in the same dead-letter queue, after a few redeliveries
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["CrmSyncDeadLetterQueue", "Arn"]}
    assert 2 <= queue["RedrivePolicy"]["maxReceiveCount"] <= 10
    # And one failed message never fails its batch
    assert trigger["Type"] == "SQS"
    assert trigger["Properties"]["Queue"] == {"Fn::GetAtt": ["CrmSyncQueue", "Arn"]}
    assert trigger["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # And the queue outlives the function's timeout six times over (AWS's advice for SQS triggers)
    timeout = resources["CrmSyncFunction"]["Properties"].get("Timeout", template["Globals"]["Function"]["Timeout"])
    assert queue["VisibilityTimeout"] >= 6 * timeout
    # And EventBridge may put on both queues, for this rule only
    (statement,) = resources["CrmSyncQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["CrmSyncRule", "Arn"]}


def test_crm_sync_reads_only_the_connector_secret_and_is_off_by_default(template: dict[str, Any]) -> None:
    fn = template["Resources"]["CrmSyncFunction"]["Properties"]
    # Given its policy / Then beyond its table items it may only read the connector secret
    others = [s for s in policy_statements(template["Resources"]["CrmSyncFunction"])
              if not any(str(a).startswith("dynamodb:") for a in _as_list(s["Action"]))]
    assert [(s["Action"], s["Resource"]) for s in others] == [
        ("secretsmanager:GetSecretValue", {"Ref": "ConnectorSecret"})
    ]
    # And its targets come from CrmTargets, empty by default (a deploy writes to no CRM until configured)
    assert fn["Environment"]["Variables"]["CRM_TARGETS"] == {"Ref": "CrmTargets"}
    assert template["Parameters"]["CrmTargets"]["Default"] == ""
