"""Read template.yaml (CloudFormation short-form tags included) so tests build resources from it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps !Ref, !GetAtt, !Sub... as {"Ref": ...} / {"Fn::X": ...} dicts."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@cache
def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def table_definition(logical_id: str = "PqlflowTable", path: Path = TEMPLATE) -> dict[str, Any]:
    """CreateTable arguments for a table, taken from the template's own key schema and stream settings."""
    props = load_template(path)["Resources"][logical_id]["Properties"]
    args: dict[str, Any] = {
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if "StreamSpecification" in props:
        args["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    if "GlobalSecondaryIndexes" in props:
        args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return args


def policy_statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    """A function resource's inline policy statements under every condition (both branches of an Fn::If)."""
    out = []
    for policy in function["Properties"].get("Policies", []):
        for statement in policy.get("Statement", []):
            branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
            out += [b for b in branches if b != {"Ref": "AWS::NoValue"}]
    return out
