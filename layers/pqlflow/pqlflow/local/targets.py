"""What an EventBridge rule sends to a target: the event, `Input`, `InputPath`, or `InputTransformer` output.

`render_input` returns the payload as JSON text (an SQS message body, or the event a function receives).
JSONPath support is the simple dotted form EventBridge templates use (`$`, `$.detail.plan`,
`$.detail['user-id']`). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pqlflow.local.model import InputTransformer, RuleTarget

_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[['\"]([^'\"]+)['\"]\]|\[(\d+)\]")
_MISSING = object()


def render_input(target: RuleTarget, event: Mapping[str, Any], *, rule_name: str = "", rule_arn: str = "") -> str:
    if target.input is not None:
        return target.input
    if target.input_path:
        value = json_path(event, target.input_path)
        return json.dumps(None if value is _MISSING else value)
    if target.input_transformer is not None:
        return transform(target.input_transformer, event, rule_name=rule_name, rule_arn=rule_arn)
    return json.dumps(event)


def json_path(document: Any, path: str) -> Any:
    """The value at a simple JSONPath, or a sentinel when absent."""
    if not path.startswith("$"):
        raise ValueError(f"JSONPath must start with $: {path!r}")
    value = document
    rest = path[1:]
    position = 0
    while position < len(rest):
        match = _PATH_PART.match(rest, position)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r}")
        key, quoted, index = match.groups()
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                return _MISSING
            value = value[int(index)]
        else:
            name = key if key is not None else quoted
            if not isinstance(value, Mapping) or name not in value:
                return _MISSING
            value = value[name]
        position = match.end()
    return value


def transform(
    transformer: InputTransformer, event: Mapping[str, Any], *, rule_name: str = "", rule_arn: str = ""
) -> str:
    """InputTransformer output: each `<name>` replaced by its value (JSON outside strings, raw inside)."""
    values: dict[str, Any] = {name: json_path(event, path) for name, path in transformer.paths_map.items()}
    values.setdefault("aws.events.rule-name", rule_name)
    values.setdefault("aws.events.rule-arn", rule_arn)
    values.setdefault("aws.events.event.json", dict(event))
    values.setdefault("aws.events.event", dict(event))
    template = transformer.template
    out: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in values:
            continue
        out.append(template[position : match.start()])
        value = values[name]
        if _inside_string(template, match.start()):
            if value is _MISSING:
                text = ""
            elif isinstance(value, str):
                text = json.dumps(value)[1:-1]
            else:
                text = json.dumps(json.dumps(value))[1:-1]
        else:
            text = "null" if value is _MISSING else json.dumps(value)
        out.append(text)
        position = match.end()
    out.append(template[position:])
    return "".join(out)


def _inside_string(text: str, end: int) -> bool:
    inside, escaped = False, False
    for char in text[:end]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
    return inside
