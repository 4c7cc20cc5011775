"""Evaluate CloudFormation intrinsic functions and conditions against local values.

A `Resolver` turns `{"Ref": ...}`, `{"Fn::GetAtt": ...}`, `{"Fn::Sub": ...}`, `Fn::If` / `Fn::Equals` /
`Fn::And` / `Fn::Or` / `Fn::Not`, `Fn::Join`, `Fn::Select`, `Fn::Split`, `Fn::FindInMap`,
`Fn::ImportValue`, `Fn::Base64`, `Fn::GetAZs`, `Fn::Length` and `Fn::ToJsonString` into plain values.
How a resource's `Ref` and attributes look locally is supplied by the caller (see `pqlflow.local.template`).
Errors are `UsageError`s naming where in the template the bad expression is. Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from pqlflow.kernel.errors import UsageError

__all__ = ["NO_VALUE", "Resolver"]


class _NoValue:
    """`AWS::NoValue`: the property (or list item) is removed."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_VAR = re.compile(r"\$\{([^}]*)\}")


class Resolver:
    """Resolves intrinsics using parameters, conditions, mappings, and callbacks for resource references."""

    def __init__(
        self,
        *,
        parameters: Mapping[str, Any],
        pseudo: Mapping[str, Any],
        conditions: Mapping[str, Any],
        mappings: Mapping[str, Any],
        ref: Callable[[str, str], Any],
        get_att: Callable[[str, str, str], Any],
        imports: Mapping[str, Any] | None = None,
        region: str = "us-east-1",
    ) -> None:
        self._parameters = parameters
        self._pseudo = pseudo
        self._condition_exprs = conditions
        self._mappings = mappings
        self._ref = ref
        self._get_att = get_att
        self._imports = imports or {}
        self._region = region
        self._condition_values: dict[str, bool] = {}
        self._evaluating: set[str] = set()

    # -- conditions ---------------------------------------------------------------------------------------
    def condition(self, name: str, where: str = "Conditions") -> bool:
        """The truth of the named condition (evaluated once)."""
        if name in self._condition_values:
            return self._condition_values[name]
        if name not in self._condition_exprs:
            raise UsageError(f"{where}: unknown condition {name!r}")
        if name in self._evaluating:
            raise UsageError(f"Conditions.{name}: refers to itself")
        self._evaluating.add(name)
        try:
            value = self.resolve(self._condition_exprs[name], f"Conditions.{name}")
        finally:
            self._evaluating.discard(name)
        if not isinstance(value, bool):
            raise UsageError(f"Conditions.{name}: does not evaluate to true or false (got {value!r})")
        self._condition_values[name] = value
        return value

    def conditions(self) -> dict[str, bool]:
        return {name: self.condition(name) for name in self._condition_exprs}

    # -- values -------------------------------------------------------------------------------------------
    def resolve(self, value: Any, where: str) -> Any:
        """`value` with every intrinsic evaluated; `AWS::NoValue` entries are dropped from dicts and lists."""
        if isinstance(value, list):
            items = [self.resolve(item, f"{where}[{i}]") for i, item in enumerate(value)]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._resolve_ref(arg, where)
            if key == "Condition" and isinstance(arg, str):
                return self.condition(arg, where)
            if key.startswith("Fn::"):
                return self._function(key[4:], arg, where)
        resolved = {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _resolve_ref(self, name: Any, where: str) -> Any:
        if not isinstance(name, str):
            raise UsageError(f"{where}: !Ref needs a name, got {name!r}")
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            return self._parameters[name]
        return self._ref(name, where)

    def _function(self, name: str, arg: Any, where: str) -> Any:
        here = f"{where} (Fn::{name})"
        handler = getattr(self, f"_fn_{name.lower()}", None)
        if handler is None:
            raise UsageError(f"{here}: Fn::{name} is not supported by the local runtime")
        return handler(arg, here)

    def _fn_getatt(self, arg: Any, where: str) -> Any:
        if isinstance(arg, str):
            arg = arg.split(".", 1)
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{where}: needs [LogicalId, Attribute], got {arg!r}")
        logical_id, attribute = arg[0], self.resolve(arg[1], where)
        return self._get_att(logical_id, str(attribute), where)

    def _fn_sub(self, arg: Any, where: str) -> str:
        variables: dict[str, Any] = {}
        if isinstance(arg, list):
            if len(arg) != 2 or not isinstance(arg[1], dict):
                raise UsageError(f"{where}: needs a string or [string, {{variables}}]")
            arg, variables = arg[0], {k: self.resolve(v, f"{where}.{k}") for k, v in arg[1].items()}
        if not isinstance(arg, str):
            raise UsageError(f"{where}: the template must be a string, got {arg!r}")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return _text(variables[name])
            if name in self._pseudo or name in self._parameters:
                return _text(self._resolve_ref(name, where))
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return _text(self._get_att(logical_id, attribute, where))
            return _text(self._ref(name, where))

        return _SUB_VAR.sub(substitute, arg)

    def _fn_if(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, list) or len(arg) != 3:
            raise UsageError(f"{where}: needs [Condition, ValueIfTrue, ValueIfFalse]")
        chosen = arg[1] if self.condition(arg[0], where) else arg[2]
        return self.resolve(chosen, where)

    def _fn_equals(self, arg: Any, where: str) -> bool:
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{where}: needs two values")
        left, right = (self.resolve(v, where) for v in arg)
        return _text(left) == _text(right)

    def _fn_not(self, arg: Any, where: str) -> bool:
        if not isinstance(arg, list) or len(arg) != 1:
            raise UsageError(f"{where}: needs a list with one condition")
        return not self._truth(arg[0], where)

    def _fn_and(self, arg: Any, where: str) -> bool:
        return all(self._truth(item, where) for item in self._list(arg, where))

    def _fn_or(self, arg: Any, where: str) -> bool:
        return any(self._truth(item, where) for item in self._list(arg, where))

    def _truth(self, expr: Any, where: str) -> bool:
        value = self.resolve(expr, where)
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected a condition, got {value!r}")
        return value

    def _fn_join(self, arg: Any, where: str) -> str:
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{where}: needs [delimiter, [values]]")
        delimiter, items = arg[0], self.resolve(arg[1], where)
        if not isinstance(items, list):
            raise UsageError(f"{where}: the values must be a list")
        return str(delimiter).join(_text(i) for i in items)

    def _fn_select(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{where}: needs [index, [values]]")
        index, items = self.resolve(arg[0], where), self.resolve(arg[1], where)
        try:
            return items[int(index)]
        except (IndexError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: index {index!r} is out of range") from exc

    def _fn_split(self, arg: Any, where: str) -> list[str]:
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{where}: needs [delimiter, string]")
        return str(self.resolve(arg[1], where)).split(str(arg[0]))

    def _fn_findinmap(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, list) or len(arg) not in (3, 4):
            raise UsageError(f"{where}: needs [MapName, TopLevelKey, SecondLevelKey]")
        keys = [_text(self.resolve(k, where)) for k in arg[:3]]
        try:
            return self._mappings[keys[0]][keys[1]][keys[2]]
        except (KeyError, TypeError) as exc:
            if len(arg) == 4 and isinstance(arg[3], dict) and "DefaultValue" in arg[3]:
                return self.resolve(arg[3]["DefaultValue"], where)
            raise UsageError(f"{where}: no mapping entry {'.'.join(keys)}") from exc

    def _fn_importvalue(self, arg: Any, where: str) -> Any:
        name = _text(self.resolve(arg, where))
        if name not in self._imports:
            raise UsageError(f"{where}: the export {name!r} is not available locally; pass it as an import value")
        return self._imports[name]

    def _fn_base64(self, arg: Any, where: str) -> str:
        return base64.b64encode(_text(self.resolve(arg, where)).encode()).decode()

    def _fn_getazs(self, arg: Any, where: str) -> list[str]:
        return [f"{self._region}{suffix}" for suffix in "abc"]

    def _fn_length(self, arg: Any, where: str) -> int:
        value = self.resolve(arg, where)
        if not isinstance(value, list):
            raise UsageError(f"{where}: needs a list")
        return len(value)

    def _fn_tojsonstring(self, arg: Any, where: str) -> str:
        return json.dumps(self.resolve(arg, where), separators=(",", ":"))

    def _list(self, arg: Any, where: str) -> list[Any]:
        if not isinstance(arg, list) or not arg:
            raise UsageError(f"{where}: needs a list of conditions")
        return arg


def _text(value: Any) -> str:
    """How CloudFormation renders a scalar inside a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)
