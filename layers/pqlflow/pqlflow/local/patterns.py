"""EventBridge event-pattern matching (the full content-filter syntax), also used for Lambda FilterCriteria.

`matches(pattern, event)` answers whether an EventBridge rule with `pattern` fires for `event`.
Semantics follow the EventBridge documentation:

- every key of the pattern must match (AND); a leaf is a list of filters, any of which may match (OR);
- a field whose event value is an array matches if any element matches (arrays of objects are
  flattened, so nested keys are looked up in every element);
- filters: exact values (strings, numbers, booleans, null), `prefix`, `suffix` (both optionally
  `{"equals-ignore-case": ...}`), `anything-but` (a value, a list, or `prefix` / `suffix` /
  `equals-ignore-case` / `wildcard`), `numeric` ranges, `exists`, `equals-ignore-case`, `wildcard`,
  `cidr`, and `$or` at any level.

`filter_criteria_match(filters, record)` applies Lambda event-source `FilterCriteria` (each filter's
`Pattern` is a JSON string; a record passes if any filter matches; an SQS `body` that is JSON is
matched as an object). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["PatternError", "filter_criteria_match", "matches", "parse_pattern", "validate"]


class PatternError(ValueError):
    """A malformed event pattern; the message names the path of the bad part."""


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_LEAF_OPERATORS = {
    "prefix",
    "suffix",
    "anything-but",
    "numeric",
    "exists",
    "equals-ignore-case",
    "wildcard",
    "cidr",
}


def parse_pattern(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    """A pattern from its JSON text (as in FilterCriteria) or a mapping, validated."""
    if isinstance(raw, str):
        try:
            pattern = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PatternError(f"pattern is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    else:
        pattern = raw
    validate(pattern)
    return dict(pattern)


def validate(pattern: Any, path: str = "$") -> None:
    """Raise PatternError naming the path if `pattern` is not a valid event pattern."""
    if not isinstance(pattern, Mapping):
        raise PatternError(f"{path}: a pattern must be a JSON object")
    for key, rule in pattern.items():
        here = f"{path}.{key}"
        if key == "$or":
            if not isinstance(rule, list) or not rule:
                raise PatternError(f"{here}: $or needs a list of patterns")
            for i, sub in enumerate(rule):
                validate(sub, f"{here}[{i}]")
        elif isinstance(rule, Mapping):
            validate(rule, here)
        elif isinstance(rule, list):
            if not rule:
                raise PatternError(f"{here}: empty arrays are not allowed")
            for item in rule:
                _validate_filter(item, here)
        else:
            raise PatternError(f"{here}: must be an object or an array, got {rule!r}")


def _validate_filter(item: Any, path: str) -> None:
    if item is None or isinstance(item, str | int | float | bool):
        return
    if not isinstance(item, Mapping) or len(item) != 1:
        raise PatternError(f"{path}: a filter must be a value or an object with one operator, got {item!r}")
    ((name, arg),) = item.items()
    if name not in _LEAF_OPERATORS:
        raise PatternError(f"{path}: unknown operator {name!r}")
    if name == "numeric":
        if not isinstance(arg, list) or len(arg) not in (2, 4):
            raise PatternError(f"{path}: numeric needs [op, n] or [op, n, op, n], got {arg!r}")
        for op, num in zip(arg[::2], arg[1::2], strict=True):
            if op not in _NUMERIC_OPS or isinstance(num, bool) or not isinstance(num, int | float):
                raise PatternError(f"{path}: bad numeric comparison {op!r} {num!r}")
    elif name == "exists" and not isinstance(arg, bool):
        raise PatternError(f"{path}: exists takes true or false, got {arg!r}")
    elif name == "cidr":
        try:
            ipaddress.ip_network(arg, strict=False)
        except (TypeError, ValueError) as exc:
            raise PatternError(f"{path}: bad cidr {arg!r}") from exc


def matches(pattern: Mapping[str, Any], event: Any) -> bool:
    """True when `event` (a decoded JSON object) matches the EventBridge `pattern`."""
    return _match_node(pattern, [event])


def filter_criteria_match(filters: Sequence[Mapping[str, Any]], record: Mapping[str, Any]) -> bool:
    """Lambda FilterCriteria: no filters lets every record through; otherwise any filter must match."""
    if not filters:
        return True
    view = _filter_view(record)
    return any(matches(f, view) for f in filters)


def _filter_view(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record as Lambda filtering sees it: an SQS `body` holding a JSON object is matched as data."""
    body = record.get("body")
    if isinstance(body, str):
        try:
            decoded = json.loads(body)
        except ValueError:
            return record
        if isinstance(decoded, dict):
            return {**record, "body": decoded}
    return record


def _match_node(pattern: Mapping[str, Any], nodes: list[Any]) -> bool:
    for key, rule in pattern.items():
        if key == "$or":
            if not any(_match_node(sub, nodes) for sub in rule):
                return False
            continue
        children = list(_children(nodes, key))
        if isinstance(rule, Mapping):
            if not _match_node(rule, children):
                return False
        elif not _match_leaf(rule, children):
            return False
    return True


def _children(nodes: Iterable[Any], key: str) -> Iterable[Any]:
    for node in nodes:
        if isinstance(node, Mapping) and key in node:
            yield from _flatten(node[key])


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _match_leaf(filters: Sequence[Any], values: list[Any]) -> bool:
    leaves = [v for v in values if not isinstance(v, Mapping)]
    for f in filters:
        if isinstance(f, Mapping) and "exists" in f:
            if f["exists"] == bool(leaves):
                return True
            continue
        if any(_match_value(f, v) for v in leaves):
            return True
    return False


def _same_value(expected: Any, actual: Any) -> bool:
    # JSON true is not 1 and "5" is not 5: compare types as EventBridge does.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if _is_number(expected) and _is_number(actual):
        return float(expected) == float(actual)
    return type(expected) is type(actual) and expected == actual


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _match_value(f: Any, value: Any) -> bool:
    if not isinstance(f, Mapping):
        return _same_value(f, value)
    ((name, arg),) = f.items()
    if name == "prefix":
        return _string_test(arg, value, str.startswith)
    if name == "suffix":
        return _string_test(arg, value, str.endswith)
    if name == "equals-ignore-case":
        return isinstance(value, str) and any(value.casefold() == a.casefold() for a in _as_list(arg))
    if name == "wildcard":
        return isinstance(value, str) and any(_wildcard(a).fullmatch(value) for a in _as_list(arg))
    if name == "numeric":
        return _is_number(value) and all(
            _NUMERIC_OPS[op](float(value), float(num)) for op, num in zip(arg[::2], arg[1::2], strict=True)
        )
    if name == "cidr":
        return _in_cidr(arg, value)
    if name == "anything-but":
        return not _excluded(arg, value)
    raise PatternError(f"unknown operator {name!r}")


def _excluded(arg: Any, value: Any) -> bool:
    """Whether `value` is one of the things an `anything-but` names."""
    if isinstance(arg, Mapping):
        return _match_value(arg, value)
    return any(_same_value(a, value) for a in _as_list(arg))


def _string_test(arg: Any, value: Any, test: Callable[[str, str], bool]) -> bool:
    if not isinstance(value, str):
        return False
    if isinstance(arg, Mapping):
        wanted = arg.get("equals-ignore-case")
        return isinstance(wanted, str) and test(value.casefold(), wanted.casefold())
    return any(test(value, a) for a in _as_list(arg) if isinstance(a, str))


def _as_list(arg: Any) -> list[Any]:
    return list(arg) if isinstance(arg, list) else [arg]


_wildcard_cache: dict[str, re.Pattern[str]] = {}


def _wildcard(expr: str) -> re.Pattern[str]:
    """`*` matches any run of characters; `\\*` is a literal star and `\\\\` a literal backslash."""
    compiled = _wildcard_cache.get(expr)
    if compiled is None:
        parts = re.split(r"(\\\\|\\\*|\*)", expr)
        literal = {"\\\\": "\\", "\\*": "*"}
        regex = "".join(".*" if p == "*" else re.escape(literal.get(p, p)) for p in parts)
        compiled = _wildcard_cache[expr] = re.compile(regex, re.DOTALL)
    return compiled


def _in_cidr(block: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False
