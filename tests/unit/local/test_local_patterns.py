"""EventBridge pattern matching and Lambda FilterCriteria, checked on the EventBridge docs' examples."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pqlflow.local.patterns import PatternError, filter_criteria_match, matches, parse_pattern

# The sample event of the EventBridge "content filtering" documentation page.
EC2_EVENT = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": [
        "arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0",
        "arn:aws:ec2:us-west-1:123456789012:instance/i-b188560f",
    ],
    "detail": {
        "instance-id": "i-1234567890abcdef0",
        "state": "terminated",
        "c-count": 5,
        "d-count": 7,
        "x-limit": 301.8,
        "sourceIPAddress": "10.0.0.255",
        "FileName": "image.png",
        "FilePath": "/usr/lib/python",
        "responseElements": None,
        "eventVersion": "",
        "service": "EventBridge",
    },
}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        # exact values, AND across keys, OR within a list
        ({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]}, True),
        ({"source": ["aws.ec2", "aws.s3"]}, True),
        ({"source": ["aws.s3"]}, False),
        ({"detail": {"state": ["terminated"]}}, True),
        ({"detail": {"state": ["running"]}}, False),
        ({"detail": {"missing": ["x"]}}, False),
        # arrays in the event: any element may match
        ({"resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-b188560f"]}, True),
        # prefix / suffix, with and without equals-ignore-case
        ({"time": [{"prefix": "2017-12-22"}]}, True),
        ({"time": [{"prefix": "2017-10-02"}]}, False),
        ({"detail": {"service": [{"prefix": {"equals-ignore-case": "eventb"}}]}}, True),
        ({"detail": {"FileName": [{"suffix": ".png"}]}}, True),
        ({"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".PNG"}}]}}, True),
        ({"detail": {"FileName": [{"suffix": ".txt"}]}}, False),
        # anything-but: value, number, list, prefix, suffix, ignore-case, wildcard
        ({"detail": {"state": [{"anything-but": "initializing"}]}}, True),
        ({"detail": {"state": [{"anything-but": "terminated"}]}}, False),
        ({"detail": {"c-count": [{"anything-but": 5}]}}, False),
        ({"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}, True),
        ({"detail": {"state": [{"anything-but": ["stopped", "terminated"]}]}}, False),
        ({"detail": {"state": [{"anything-but": {"prefix": "term"}}]}}, False),
        ({"detail": {"FileName": [{"anything-but": {"suffix": ".txt"}}]}}, True),
        ({"detail": {"state": [{"anything-but": {"equals-ignore-case": "TERMINATED"}}]}}, False),
        ({"detail": {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}}, False),
        ({"detail": {"missing": [{"anything-but": "x"}]}}, False),
        # numeric ranges (only numbers match)
        (
            {"detail": {"c-count": [{"numeric": [">", 0, "<=", 5]}], "d-count": [{"numeric": ["<", 10]}]}},
            True,
        ),
        ({"detail": {"x-limit": [{"numeric": ["=", 3.018e2]}]}}, True),
        ({"detail": {"c-count": [{"numeric": [">", 5]}]}}, False),
        ({"detail": {"state": [{"numeric": [">", 0]}]}}, False),
        # exists
        ({"detail": {"state": [{"exists": True}]}}, True),
        ({"detail": {"nothing": [{"exists": False}]}}, True),
        ({"detail": {"state": [{"exists": False}]}}, False),
        ({"detail": [{"exists": True}]}, False),  # exists only works on leaf nodes
        # equals-ignore-case, wildcard, cidr
        ({"detail-type": [{"equals-ignore-case": "ec2 instance state-change notification"}]}, True),
        ({"resources": [{"wildcard": "arn:aws:ec2:*:instance/i-b*"}]}, True),
        ({"detail": {"FilePath": [{"wildcard": "/usr/*/python"}]}}, True),
        ({"detail": {"FilePath": [{"wildcard": "/usr/*/java"}]}}, False),
        ({"detail": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}}, True),
        ({"detail": {"sourceIPAddress": [{"cidr": "10.0.1.0/24"}]}}, False),
        # null and empty string are values of their own
        ({"detail": {"responseElements": [None]}}, True),
        ({"detail": {"eventVersion": [""]}}, True),
        ({"detail": {"eventVersion": [None]}}, False),
        ({"detail": {"missing": [None]}}, False),
        # $or, at the top and nested
        (
            {
                "detail": {
                    "$or": [
                        {"c-count": [{"numeric": [">", 10]}]},
                        {"d-count": [{"numeric": ["<", 10]}]},
                    ]
                }
            },
            True,
        ),
        ({"$or": [{"source": ["aws.s3"]}, {"detail-type": ["Nope"]}]}, False),
        ({"source": ["aws.ec2"], "$or": [{"region": ["us-west-1"]}, {"region": ["eu-west-1"]}]}, True),
    ],
)
def test_documented_patterns_match_the_documented_event(pattern, expected):
    # Given a pattern from the EventBridge docs
    parse_pattern(pattern)
    # When it is matched against the sample event / Then the documented outcome holds
    assert matches(pattern, EC2_EVENT) is expected


def test_json_types_are_not_confused():
    # Given values that Python would call equal
    event = {"detail": {"flag": True, "n": 1, "s": "1"}}
    # Then true is not 1 and "1" is not 1
    assert not matches({"detail": {"n": [True]}}, event)
    assert not matches({"detail": {"s": [1]}}, event)
    assert matches({"detail": {"flag": [True]}, "$or": [{"detail": {"n": [1]}}, {"detail": {"s": ["x"]}}]}, event)


def test_arrays_of_objects_are_flattened():
    # Given an event whose detail holds a list of objects
    event = {"detail": {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 9}]}}
    # Then nested keys are looked up in every element
    assert matches({"detail": {"items": {"sku": ["b"]}}}, event)
    assert not matches({"detail": {"items": {"sku": ["c"]}}}, event)


def test_escaped_star_in_wildcard_is_literal():
    assert matches({"k": [{"wildcard": "a\\*b"}]}, {"k": "a*b"})
    assert not matches({"k": [{"wildcard": "a\\*b"}]}, {"k": "axxb"})


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ('{"source": "aws.ec2"}', "$.source"),
        ('{"source": []}', "empty arrays"),
        ('{"detail": {"n": [{"numeric": [">>", 1]}]}}', "numeric"),
        ('{"detail": {"n": [{"between": 1}]}}', "unknown operator"),
        ('{"detail": {"n": [{"exists": "yes"}]}}', "exists"),
        ('{"ip": [{"cidr": "not-a-block"}]}', "cidr"),
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
    ],
)
def test_bad_patterns_are_rejected_naming_the_part(pattern, fragment):
    with pytest.raises(PatternError, match=fragment.replace("$", r"\$")):
        parse_pattern(pattern)


def test_filter_criteria_on_dynamodb_stream_records():
    # Given a FilterCriteria pattern on the new image's kind (DynamoDB JSON)
    filters = [parse_pattern('{"dynamodb": {"NewImage": {"kind": {"S": ["usage"]}}}}')]
    usage = {"eventName": "MODIFY", "dynamodb": {"NewImage": {"kind": {"S": "usage"}}}}
    other = {"eventName": "INSERT", "dynamodb": {"NewImage": {"kind": {"S": "pql"}}}}
    removed = {"eventName": "REMOVE", "dynamodb": {"OldImage": {"kind": {"S": "usage"}}}}
    # Then only usage items pass
    assert filter_criteria_match(filters, usage)
    assert not filter_criteria_match(filters, other)
    assert not filter_criteria_match(filters, removed)


def test_filter_criteria_on_sqs_json_bodies_and_plain_bodies():
    # Given a filter on the JSON body of SQS messages
    filters = [parse_pattern('{"body": {"detail-type": ["track"]}}')]
    # Then JSON bodies are matched as objects, and a plain-text body never matches an object pattern
    assert filter_criteria_match(filters, {"body": json.dumps({"detail-type": "track"})})
    assert not filter_criteria_match(filters, {"body": json.dumps({"detail-type": "identify"})})
    assert not filter_criteria_match(filters, {"body": "track"})
    # And a plain-text body can still be matched as a string
    assert filter_criteria_match([parse_pattern('{"body": [{"prefix": "tr"}]}')], {"body": "track"})


def test_any_filter_may_pass_a_record_and_no_filters_pass_everything():
    filters = [parse_pattern('{"eventName": ["INSERT"]}'), parse_pattern('{"eventName": ["MODIFY"]}')]
    assert filter_criteria_match(filters, {"eventName": "MODIFY"})
    assert not filter_criteria_match(filters, {"eventName": "REMOVE"})
    assert filter_criteria_match([], {"eventName": "REMOVE"})


scalars = st.one_of(st.text(max_size=8), st.integers(-1000, 1000), st.booleans(), st.none())


@given(value=scalars, other=scalars)
def test_anything_but_is_the_opposite_of_an_exact_match_for_a_present_value(value, other):
    event = {"detail": {"k": value}}
    exact = matches({"detail": {"k": [other]}}, event)
    assert matches({"detail": {"k": [{"anything-but": other}]}}, event) is (not exact)


@given(value=st.text(max_size=10), prefix=st.text(max_size=3))
def test_prefix_and_wildcard_agree_with_python_string_tests(value, prefix):
    event = {"k": value}
    assert matches({"k": [{"prefix": prefix}]}, event) is value.startswith(prefix)
    literal = prefix.replace("\\", "\\\\").replace("*", "\\*")
    assert matches({"k": [{"wildcard": literal + "*"}]}, event) is value.startswith(prefix)


@given(value=st.integers(-100, 100), low=st.integers(-100, 100), high=st.integers(-100, 100))
def test_numeric_ranges_agree_with_comparisons(value, low, high):
    pattern = {"n": [{"numeric": [">=", low, "<", high]}]}
    assert matches(pattern, {"n": value}) is (low <= value < high)
    assert not matches(pattern, {"n": str(value)})
