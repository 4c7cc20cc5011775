"""Read a CloudFormation / SAM template file: YAML with the short-form intrinsic tags (`!Ref`, `!Sub`, ...).

Each short form becomes its long form (`!Ref X` → `{"Ref": "X"}`,
`!GetAtt A.B` → `{"Fn::GetAtt": ["A", "B"]}`), so the rest of the local runtime only deals with
plain dicts. JSON templates load too (JSON is YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pqlflow.kernel.errors import UsageError

_FN_TAGS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Length",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "ToJsonString",
    "Transform",
)


class _CfnLoader(yaml.SafeLoader):
    """A safe YAML loader that knows the CloudFormation short-form tags."""


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.MappingNode), node  # the composer makes only scalars, sequences, mappings
    return loader.construct_mapping(node, deep=True)


def _fn(name: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        return {f"Fn::{name}": _construct(node, loader)}

    return construct


def _ref(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Ref": _construct(node, loader)}


def _condition(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Condition": _construct(node, loader)}


def _get_att(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    value = _construct(node, loader)
    if isinstance(value, str):
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {"Fn::GetAtt": value}


for _name in _FN_TAGS:
    _CfnLoader.add_constructor(f"!{_name}", _fn(_name))
_CfnLoader.add_constructor("!Ref", _ref)
_CfnLoader.add_constructor("!Condition", _condition)
_CfnLoader.add_constructor("!GetAtt", _get_att)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The template at `path` as a dict; UsageError naming the file (and line) if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read template: {exc.strerror}") from exc
    return loads(text, str(path))


def loads(text: str, name: str = "<template>") -> dict[str, Any]:
    """Parse template text; `name` is used in error messages."""
    try:
        document = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise UsageError(f"{name}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{name}: invalid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise UsageError(f"{name}: not a CloudFormation template (no Resources mapping)")
    return document
