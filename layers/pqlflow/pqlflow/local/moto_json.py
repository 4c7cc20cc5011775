"""moto's DynamoDB responses, serialized faster with the same JSON: AttributeValues written directly.

Used by the replay emulator (`emulator.emulator_speedups`) and by the faithful pricing run
(`pricing.moto_speedups`); tests/e2e/test_emulator_speedups.py holds the results to plain moto's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def plain_attribute_values() -> Iterator[None]:
    """moto's response serializer walks the API model for every AttributeValue element (most of an
    UpdateItem's time on an item of fingerprint sets): AttributeValues are written as plain JSON instead."""
    from moto.core import serialize

    serializer: Any = serialize.BaseJSONSerializer
    original_structure = serializer._serialize_type_structure

    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if getattr(shape, "name", None) == "AttributeValue":
            plain = attribute_json(value)
            if plain is not None:
                self._default_serialize(serialized, plain, shape, key)
                return
        original_structure(self, serialized, value, shape, key)

    serializer._serialize_type_structure = serialize_structure
    try:
        yield
    finally:
        serializer._serialize_type_structure = original_structure


def b64(value: Any) -> str:
    """A binary as AttributeValue JSON has it: base64 text (moto may already hold it so)."""
    if isinstance(value, str):
        return value
    return base64.b64encode(bytes(value)).decode()


def attribute_json(value: Any) -> dict[str, Any] | None:
    """A DynamoDB AttributeValue as moto's JSON serializer writes it, or None to leave it to moto."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((kind, inner),) = value.items()
    if kind in ("S", "N"):
        return {kind: str(inner) if inner not in (None, {}, []) else inner}
    if kind in ("BOOL", "NULL"):
        return {kind: bool(inner)}
    if kind in ("SS", "NS") and isinstance(inner, list | tuple | set):
        return {kind: [str(v) for v in inner]}
    if kind == "M" and isinstance(inner, dict):
        out: dict[str, Any] = {}
        for name, member in inner.items():
            plain = attribute_json(member)
            if plain is None:
                return None
            out[name] = plain
        return {"M": out}
    if kind == "L" and isinstance(inner, list | tuple):
        items = []
        for member in inner:
            plain = attribute_json(member)
            if plain is None:
                return None
            items.append(plain)
        return {"L": items}
    if kind == "B":
        return {"B": b64(inner)}
    if kind == "BS" and isinstance(inner, list | tuple | set):
        return {"BS": [b64(v) for v in inner]}
    return None
