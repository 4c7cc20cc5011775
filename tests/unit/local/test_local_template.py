"""The wiring the local runtime derives from a SAM template: names, parameters, conditions, events."""

from pathlib import Path

import pytest
from pqlflow.kernel.errors import UsageError
from pqlflow.local.cfn_yaml import loads
from pqlflow.local.runtime import LOCAL_DEFAULTS
from pqlflow.local.template import build_wiring, load_template

from tests.support.local import FIXTURE


def wiring_of(text: str, **kwargs):
    return build_wiring(loads(text), template_path=Path("/tmp/t/template.yaml"), **kwargs)


def test_fixture_template_resolves_to_local_names_and_arns():
    # Given the fixture app's template
    wiring = load_template(FIXTURE)
    # Then resources have local names and the functions' environment is resolved from them
    ingest = wiring.functions["IngestFunction"]
    assert ingest.environment == {
        "STAGE": "test",
        "TABLE_NAME": "pqlflow-local-table",
        "EVENT_BUS_NAME": "pqlflow-local-bus",
    }
    assert ingest.handler_file == FIXTURE.parent / "handlers" / "ingest.py"
    assert (ingest.timeout, ingest.memory_size, ingest.runtime) == (10, 256, "python3.12")
    assert wiring.functions["QualifyFunction"].environment["DETAIL_TYPE"] == "PQL Qualified"
    assert wiring.queues["UsageQueue"].redrive.max_receive_count == 3
    assert wiring.queues["UsageQueue"].redrive.dead_letter_arn == (
        "arn:aws:sqs:us-east-1:123456789012:pqlflow-local-UsageDeadLetterQueue"
    )
    assert wiring.outputs["UsageQueueUrl"] == (
        "https://sqs.us-east-1.amazonaws.com/123456789012/pqlflow-local-UsageQueue"
    )
    assert "ProdOnly" not in wiring.outputs


def test_fixture_template_event_sources():
    wiring = load_template(FIXTURE)
    (sqs,) = wiring.sqs_sources
    assert (sqs.function, sqs.queue_name, sqs.batch_size, sqs.report_batch_item_failures) == (
        "IngestFunction",
        "pqlflow-local-UsageQueue",
        25,
        True,
    )
    (stream,) = wiring.stream_sources
    assert stream.table_name == "pqlflow-local-table"
    assert stream.filters == ({"dynamodb": {"NewImage": {"kind": {"S": ["usage"]}}}},)
    assert (stream.batch_size, stream.bisect_on_error, stream.maximum_retry_attempts) == (10, True, 1)
    assert stream.on_failure_arn.endswith(":pqlflow-local-StreamFailureQueue")
    rules = {r.logical_id: r for r in wiring.rules}
    assert rules["UsageRule"].pattern == {"source": [{"prefix": "app."}], "detail-type": ["track"]}
    assert [(t.kind, t.name) for t in rules["UsageRule"].targets] == [("sqs", "pqlflow-local-UsageQueue")]
    assert [(t.kind, t.name) for t in rules["NotifyFunctionQualified"].targets] == [("function", "NotifyFunction")]
    assert {r.bus_name for r in wiring.rules} == {"pqlflow-local-bus"}
    table = wiring.tables["Table"]
    assert (table.stream_view_type, table.ttl_attribute) == ("NEW_AND_OLD_IMAGES", "expires_at")


def test_parameter_overrides_flow_through_conditions_and_mappings():
    # Given an existing bus and the prod stage
    wiring = load_template(FIXTURE, {"ExistingBusName": "segment-bus", "Stage": "prod"})
    # Then no bus resource is created, rules listen on the given bus, and the prod mapping applies
    assert wiring.conditions == {"CreateBus": False, "IsProd": True}
    assert all(bus.logical_id is None for bus in wiring.buses.values())
    assert {r.bus_name for r in wiring.rules} == {"segment-bus"}
    assert wiring.functions["NotifyFunction"].environment["EVENT_BUS_NAME"] == "segment-bus"
    assert wiring.queues["UsageQueue"].redrive.max_receive_count == 5
    assert wiring.outputs["ProdOnly"] == "prod"


def test_root_relocates_code_uri_for_a_copied_template(tmp_path):
    # Given a copy of the template somewhere else
    copy = tmp_path / "template.yaml"
    copy.write_text(FIXTURE.read_text())
    # When loaded with the original folder as root
    wiring = load_template(copy, root=FIXTURE.parent)
    # Then handlers are still found in the original folder
    assert wiring.functions["IngestFunction"].handler_file.is_file()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"Nope": "x"}, "'Nope': the template has no such parameter"),
        ({"Stage": "qa"}, "Parameters.Stage: 'qa' is not one of"),
    ],
)
def test_bad_parameter_overrides_are_usage_errors(overrides, fragment):
    with pytest.raises(UsageError, match=fragment):
        load_template(FIXTURE, overrides)


MINIMAL = """
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src
      Handler: app.handler
      Events:
        OnEvent:
          Type: EventBridgeRule
          Properties:
            Pattern: PATTERN
"""


def test_a_bad_rule_pattern_names_the_template_path():
    with pytest.raises(UsageError, match=r"Events\.OnEvent\.Properties\.Pattern: .*empty arrays"):
        wiring_of(MINIMAL.replace("PATTERN", "{source: []}"))


def test_a_reference_to_nothing_is_a_usage_error():
    text = MINIMAL.replace("PATTERN", "{source: [!Ref Missing]}")
    with pytest.raises(UsageError, match="no parameter or resource named 'Missing'"):
        wiring_of(text)


def test_function_rule_on_default_bus_and_globals_lists_concatenate():
    # Given Globals with a layer list and a function with its own
    text = "Globals:\n  Function:\n    Layers: [a]\n    Timeout: 5\n" + MINIMAL.replace(
        "PATTERN", "{source: [x]}"
    ).replace("      Handler: app.handler", "      Handler: app.handler\n      Timeout: 30")
    wiring = wiring_of(text)
    # Then the function's scalar wins and the rule is on the default bus
    assert wiring.functions["Fn"].timeout == 30
    assert wiring.rules[0].bus_name == "default"
    assert "default" in wiring.buses


def test_unsupported_targets_and_event_types_are_reported_not_fatal():
    text = """
Resources:
  Topic:
    Type: AWS::SNS::Topic
  Rule:
    Type: AWS::Events::Rule
    Properties:
      EventPattern: {source: [x]}
      Targets: [{Id: t, Arn: !Ref Topic}]
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src
      Handler: app.handler
      Events:
        Upload:
          Type: S3
          Properties: {Bucket: b}
"""
    wiring = wiring_of(text)
    assert wiring.rules[0].targets[0].kind == "unsupported"
    assert any("not emulated" in w for w in wiring.warnings)
    assert any("'S3'" in w for w in wiring.warnings)


def test_schedules_http_routes_and_schedule_groups_are_read():
    text = """
Resources:
  Group:
    Type: AWS::Scheduler::ScheduleGroup
    Properties: {Name: nurture}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src
      Handler: pkg.app.handler
      Environment:
        Variables: {GROUP: !Ref Group, FLAG: true, LIST: !Split [",", "a,b"]}
      Events:
        Nightly:
          Type: ScheduleV2
          Properties: {ScheduleExpression: "cron(0 3 * * ? *)", Input: '{"x": 1}'}
        Get:
          Type: HttpApi
          Properties: {Path: "/offers/{id}", Method: get}
"""
    wiring = wiring_of(text)
    assert wiring.schedule_groups == ("nurture",)
    assert wiring.functions["Fn"].environment == {"GROUP": "nurture", "FLAG": "true", "LIST": "a,b"}
    assert wiring.functions["Fn"].handler_file == Path("/tmp/t/src/pkg/app.py")
    (schedule,) = wiring.schedules
    assert (schedule.expression, schedule.target_name, schedule.input) == (
        "cron(0 3 * * ? *)",
        "Fn",
        '{"x": 1}',
    )
    (route,) = wiring.http_routes
    assert (route.method, route.path, route.api) == ("GET", "/offers/{id}", "ServerlessHttpApi")


def test_yaml_errors_name_the_line():
    with pytest.raises(UsageError, match=r"t\.yaml:3: invalid YAML"):
        loads("Resources:\n  A: 1\n  B: : :\n", "t.yaml")


def test_http_routes_get_the_authorizer_in_effect():
    wiring = load_template(FIXTURE)
    routes = {r.event_name: r for r in wiring.http_routes}
    assert (routes["Hello"].api, routes["Hello"].authorizer) == ("Api", None)
    assert routes["Me"].authorizer == "Jwt"
    jwt = wiring.http_apis["Api"].authorizers["Jwt"]
    assert (jwt.issuer, jwt.audience) == ("https://issuer.test", ("fixture-app",))


REPO_TEMPLATE = Path(__file__).parents[3] / "template.yaml"


@pytest.mark.skipif(not REPO_TEMPLATE.is_file(), reason="the repository has no template.yaml yet")
def test_the_repository_template_is_wholly_emulated_locally():
    # Given pqlflow's own template, as the local runtime reads it (usage through the queue: LOCAL_DEFAULTS)
    wiring = load_template(REPO_TEMPLATE, defaults=LOCAL_DEFAULTS)
    # Then every function's handler exists and every trigger and target runs locally
    assert [fn.logical_id for fn in wiring.functions.values() if not fn.handler_file.is_file()] == []
    assert [t.arn for r in wiring.rules for t in r.targets if t.kind == "unsupported"] == []
    assert wiring.warnings == ()
    # And the deployed default differs from it only by the usage rules' Firehose target
    deployed = load_template(REPO_TEMPLATE)
    unsupported = [t.arn.rsplit(":", 1)[-1] for r in deployed.rules for t in r.targets if t.kind == "unsupported"]
    assert unsupported == ["pqlflow-local-UsageFirehose"]
    assert set(LOCAL_DEFAULTS) == {"IngestTransport"}
