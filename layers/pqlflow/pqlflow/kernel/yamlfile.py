"""Hand-written YAML files (definitions, policies) read as plain data with the line of every key and item.

The text is read with `yaml.compose`, so every node keeps its mark, and YAML 1.1 surprises are
disarmed: only `true`/`false` are booleans (`no`, `on` stay strings) and `18:00` stays the string
"18:00" (not the base-60 number 1080). Each kind of file says in a subclass how its errors read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]

MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: str | Path, fail: Callable[[str], Exception]) -> str:
    """A file's UTF-8 text; `fail(problem)` is raised when it is missing or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read the file ({exc.__class__.__name__})") from None


def load_config(path: str | Path, what: str) -> Any:
    """A small YAML config file (offer catalog, rep roster) as plain data; a `UsageError` names the file,
    and the line for a syntax error."""
    from pqlflow.kernel.errors import UsageError

    path = Path(path)
    text = read_text(path, lambda problem: UsageError(f"{path}: cannot read {what}: {problem}"))
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{line}: invalid YAML") from None


def first_problem(exc: Any) -> str:
    """Pydantic's first validation error as "field.path: message" ("(top level)" for the whole file)."""
    first = exc.errors()[0]
    return f"{dotted(first['loc']) or '(top level)'}: {first['msg']}"


def dotted(path: Sequence[str | int]) -> str:
    """A location as a key path: `rules[2].when.signal` ("" for the top level)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class LocatedYaml:
    """Plain data built from YAML nodes, with the 1-based line of every key and item in `lines`.

    A subclass makes the errors: `problem` for a problem at a line and key path (None: the file as a
    whole), `syntax_problem` for text that is not YAML, and `scalar` for values beyond YAML's plain
    scalars; the class attributes word the problems the reading itself finds.
    """

    empty_file = "the file is empty"
    complex_key = "keys must be plain names (no merge keys or complex keys)"
    merge_key = complex_key
    duplicate_key = "duplicate key"  # may name {first}, the line the key was first given on

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[Loc, int] = {}
        self._loader: yaml.SafeLoader | None = None

    def problem(self, line: int | None, path: Loc | None, message: str) -> Exception:
        raise NotImplementedError

    def syntax_problem(self, exc: yaml.YAMLError) -> Exception:
        raise NotImplementedError

    def build(self, text: str) -> Any:
        loader = yaml.SafeLoader(text)
        self._loader = loader
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise self.syntax_problem(exc) from None
        finally:
            loader.dispose()
        if node is None:
            raise self.problem(1, None, self.empty_file)
        self.lines[()] = node.start_mark.line + 1
        return self.value(node, ())

    def value(self, node: yaml.Node, path: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.problem(line, path, self.complex_key)
                if key_node.tag == MERGE_TAG:
                    raise self.problem(line, path, self.merge_key)
                key = str(key_node.value)
                child = (*path, key)
                if key in out:
                    raise self.problem(line, child, self.duplicate_key.format(first=self.lines[child]))
                self.lines[child] = line
                out[key] = self.value(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.lines[child] = item.start_mark.line + 1
                items.append(self.value(item, child))
            return items
        assert isinstance(node, yaml.ScalarNode), node  # the composer makes only mappings, sequences, scalars
        raw = node.value
        if node.tag == "tag:yaml.org,2002:bool" and raw.lower() not in ("true", "false"):
            return raw  # YAML 1.2: `no`, `on`, `yes` are words (NO is Norway)
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in raw:
            return raw  # YAML 1.1 reads 18:00 as the base-60 number 1080
        return self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: Loc) -> Any:
        return self.construct(node)

    def construct(self, node: yaml.Node) -> Any:
        assert self._loader is not None
        return self._loader.construct_object(node, deep=True)

    def line_of(self, loc: Sequence[str | int]) -> tuple[int, Loc]:
        """The line of the deepest part of `loc` that is in the file, and that part."""
        path: Loc = tuple(loc)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1), path
