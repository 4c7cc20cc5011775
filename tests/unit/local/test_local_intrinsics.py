"""CloudFormation intrinsic functions as the local runtime evaluates them."""

import pytest
from pqlflow.kernel.errors import UsageError
from pqlflow.local.cfn_yaml import loads
from pqlflow.local.intrinsics import NO_VALUE, Resolver


def resolver(conditions=None, parameters=None):
    return Resolver(
        parameters=parameters or {"Env": "dev", "Names": ["a", "b", "c"]},
        pseudo={"AWS::Region": "us-east-1", "AWS::StackName": "s"},
        conditions=conditions or {"IsDev": {"Fn::Equals": [{"Ref": "Env"}, "dev"]}},
        mappings={"M": {"dev": {"Size": 3}}},
        ref=lambda name, where: f"ref-{name}",
        get_att=lambda name, attr, where: f"{name}.{attr}",
        imports={"shared-bus": "bus-x"},
    )


def value(text):
    """Parse a YAML snippet with short-form tags, as a template would contain it."""
    return loads(f"Resources: {{}}\nV: {text}")["V"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("!Ref Env", "dev"),
        ("!Ref Queue", "ref-Queue"),
        ("!GetAtt Queue.Arn", "Queue.Arn"),
        (
            '!Sub "${AWS::StackName}-${Env}-${Queue}-${Queue.Arn}-${!Literal}"',
            "s-dev-ref-Queue-Queue.Arn-${Literal}",
        ),
        ('!Sub ["${X}-${Env}", {X: !Ref Queue}]', "ref-Queue-dev"),
        ("!If [IsDev, first, second]", "first"),
        ('!Join ["-", [a, !Ref Env]]', "a-dev"),
        ("!Select [1, !Ref Names]", "b"),
        ('!Split [",", "x,y"]', ["x", "y"]),
        ("!FindInMap [M, !Ref Env, Size]", 3),
        ("!ImportValue shared-bus", "bus-x"),
        ("!And [!Condition IsDev, !Not [!Equals [a, b]]]", True),
        ("!Or [!Equals [a, b], !Equals [1, '1']]", True),
        ("!GetAZs ''", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ],
)
def test_short_form_intrinsics_resolve(expression, expected):
    assert resolver().resolve(value(expression), "V") == expected


def test_no_value_drops_keys_and_list_items():
    # Given an If that yields AWS::NoValue
    data = value("{keep: 1, drop: !If [IsDev, !Ref AWS::NoValue, 2], list: [1, !If [IsDev, !Ref AWS::NoValue, 3]]}")
    # Then the key and the item disappear
    assert resolver().resolve(data, "V") == {"keep": 1, "list": [1]}
    assert resolver().resolve({"Ref": "AWS::NoValue"}, "V") is NO_VALUE


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("!If [Unknown, a, b]", "unknown condition 'Unknown'"),
        ("!FindInMap [M, prod, Size]", "no mapping entry M.prod.Size"),
        ("!ImportValue other", "'other' is not available locally"),
        ("!Select [9, [a]]", "out of range"),
        ("!Cidr [10.0.0.0/16, 1, 8]", "Fn::Cidr is not supported"),
    ],
)
def test_errors_name_the_expression(expression, fragment):
    with pytest.raises(UsageError, match=fragment):
        resolver().resolve(value(expression), "V")


def test_a_condition_that_refers_to_itself_is_an_error():
    looping = resolver(conditions={"A": {"Fn::Not": [{"Condition": "A"}]}})
    with pytest.raises(UsageError, match="refers to itself"):
        looping.condition("A")
