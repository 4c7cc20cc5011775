"""The files a history is read from: JSON Lines (plain or gzip) and Parquet, each as one JSON message a line.

`expand` turns the paths a user gave (files, directories of *.parquet, globs) into files; `messages` yields
each file's messages as the bytes of one JSON Segment message, numbered by line (JSON Lines) or by row
(Parquet). A Parquet row is turned into exactly the JSON line an export of the same message would hold,
so it then goes through the same validation as a JSON line (`backtest.decode_history`) and gives the same
answers. The kind of a file is told by its first bytes, not its name.

Parquet is read with DuckDB, an optional dependency (`pip install 'pqlflow[parquet]'`): only this
analysis path imports it, so the Lambda layer does not carry it. The rows are turned into JSON inside
DuckDB (one SQL expression per file), which measured ~3× faster than building each message in Python
(docs/backtest.md). The column mapping of both Parquet shapes is documented in docs/backtest.md.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pqlflow.kernel.errors import UsageError

if TYPE_CHECKING:  # duckdb is in the dev and parquet extras: the type checker reads it as installed
    import duckdb
else:
    try:
        import duckdb
    except ImportError:  # pragma: no cover - depends on the environment
        duckdb = None

PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
_GLOB = re.compile(r"[*?\[]")
_PARTITION = re.compile(r"^[^=/]+=[^/]*$")  # a Hive partition folder (day=2026-05-31, hr=10)
_ROWS_PER_FETCH = 65_536
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
NESTED = ("properties", "traits", "context")  # the objects of a message, as structs or JSON strings

# The per-event-table shape (Segment's warehouse and Data Lakes exports): table → message type.
TABLE_TYPES = {"identifies": "identify", "groups": "group", "pages": "page", "screens": "screen"}
NOT_MESSAGES = frozenset({"users", "accounts"})  # derived tables: one row per user / account, not messages
ALL_TRACKS = "tracks"  # every track event again, without its properties: read only when alone
# Columns of the per-event-table shape that are the message itself; every other column is a property
# (track, page, screen) or a trait (identify, group) under its own name.
TABLE_COLUMNS = {"id": "messageId", "user_id": "userId", "anonymous_id": "anonymousId", "timestamp": "timestamp"}
TABLE_CONTEXT = {"context_group_id": "groupId", "context_timezone": "timezone"}
TABLE_METADATA = frozenset(
    {"event", "event_text", "received_at", "sent_at", "original_timestamp", "uuid_ts", "loaded_at", "type"}
)


def expand(paths: Sequence[str | Path]) -> list[Path]:
    """The files of a history: each file as given, every *.parquet under a directory (sorted), the files a
    glob matches (sorted). Derived Segment tables (`users`, `accounts`) are left out, and `tracks` too when
    per-event tables are there (it repeats their events without properties)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not found:
                raise UsageError(f"{path}: a directory with no *.parquet file under it")
            files.extend(found)
        elif path.exists():
            if not path.is_file():
                raise UsageError(f"{path}: not a regular file")
            files.append(path)
        elif _GLOB.search(str(given)):
            matched = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
            if not matched:
                raise UsageError(f"{given}: the pattern matches no file")
            files.extend(matched)
        else:
            raise UsageError(f"{path}: no such file")
    tables = {table_name(p) for p in files if p.suffix == ".parquet"}
    skip = NOT_MESSAGES | ({ALL_TRACKS} if tables - NOT_MESSAGES - {ALL_TRACKS} else set())
    return [p for p in files if p.suffix != ".parquet" or table_name(p) not in skip]


def table_name(path: Path) -> str:
    """The table a Parquet file belongs to: its folder's name, past Hive partition folders (day=…/hr=…)."""
    for parent in path.resolve().parents:
        if not _PARTITION.match(parent.name):
            return parent.name
    return ""


def kind_of(path: Path) -> str:
    """"parquet", "gzip" or "jsonl", by the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the file ({exc.strerror or exc.__class__.__name__})") from None
    if head == PARQUET_MAGIC:
        return "parquet"
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if path.suffix == ".parquet":
        raise UsageError(f"{path}: not a Parquet file (it does not start with PAR1)")
    return "jsonl"


def messages(path: Path) -> Iterator[bytes]:
    """The file's messages, one JSON message (bytes) per line or row, in file order."""
    kind = kind_of(path)
    if kind == "parquet":
        yield from _parquet_messages(path)
    elif kind == "gzip":
        yield from _gzip_lines(path)
    else:
        yield from _open_lines(path)


def _open_lines(path: Path) -> Iterator[bytes]:
    """The file's lines (with their newline), read lazily so memory is reused line after line."""
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            yield from f
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the file ({exc.strerror or exc.__class__.__name__})") from None


def _gzip_lines(path: Path) -> Iterator[bytes]:
    try:
        with gzip.open(path, "rb") as f:
            yield from f
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{path}: not a readable gzip file ({exc})") from None


# ---- Parquet ------------------------------------------------------------------------------------------


def _require_duckdb(path: Path) -> None:
    if duckdb is None:
        raise UsageError(
            f"{path}: reading Parquet needs DuckDB, which is not installed: pip install 'pqlflow[parquet]'"
        )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _member(key: str, value: str) -> str:
    """SQL for `"key":value` (NULL when the value is NULL, so concat_ws leaves the member out)."""
    return f"({_literal(json.dumps(key) + ':')} || ({value}))"


def _value(column: str, sql_type: str, *, raw_json: bool = False) -> str:
    """SQL for the JSON text of a column's value, as an export's JSON line would spell it."""
    col = _ident(column)
    if raw_json and sql_type in ("VARCHAR", "JSON"):
        return f"{col}::VARCHAR"  # a JSON string column is spliced as is: invalid JSON makes a bad line
    if sql_type.startswith("TIMESTAMP"):
        return f"('\"' || strftime({col}, '{_TIME_FORMAT}') || '\"')"
    if sql_type.startswith(("STRUCT", "MAP")):
        # A struct column has every field in every row: a field that is NULL was not in the message.
        return f"json_merge_patch('{{}}', to_json({col}))::VARCHAR"
    return f"to_json({col})::VARCHAR"


def _object(members: list[str]) -> str:
    """SQL for a JSON object of the members that are not NULL."""
    if not members:
        return "'{}'"
    return "('{' || concat_ws(',', " + ", ".join(members) + ") || '}')"


def _missing(path: Path, column: str, shape: str) -> UsageError:
    return UsageError(f"{path}: missing column {column!r} ({shape}; see docs/backtest.md)")


def message_sql(path: Path, columns: dict[str, str]) -> str:
    """The SQL expression that spells one row of this file as a JSON Segment message."""
    if "messageId" in columns:
        shape = "one row per message"
        for required in ("type", "timestamp"):
            if required not in columns:
                raise _missing(path, required, shape)
        if "userId" not in columns and "anonymousId" not in columns:
            raise _missing(path, "userId", shape + ", or anonymousId")
        return _object([_member(c, _value(c, t, raw_json=c in NESTED)) for c, t in columns.items()])
    if "id" not in columns:
        raise _missing(path, "messageId", "one row per message; or id, for the per-event-table shape")
    return _table_sql(path, columns)


def _table_sql(path: Path, columns: dict[str, str]) -> str:
    shape = f"per-event table {table_name(path)!r}"
    table = table_name(path)
    kind = TABLE_TYPES.get(table, "track")
    if "timestamp" not in columns:
        raise _missing(path, "timestamp", shape)
    if "user_id" not in columns and "anonymous_id" not in columns:
        raise _missing(path, "user_id", shape + ", or anonymous_id")
    members = [_member("type", _literal(json.dumps(kind)))]
    top = dict(TABLE_COLUMNS)
    if kind == "group":
        if "group_id" not in columns:
            raise _missing(path, "group_id", shape)
        top["group_id"] = "groupId"
    if kind in ("page", "screen"):
        top.update(name="name", category="category")
    if kind == "track":
        if "event_text" in columns:
            members.append(_member("event", _value("event_text", columns["event_text"])))
        else:  # the event's own name is lost: Segment names the table after it (signed_in ← Signed In)
            members.append(_member("event", _literal(json.dumps(event_of_table(table)))))
    context: list[str] = []
    bag: list[str] = []
    for column, sql_type in columns.items():
        if column in top:
            members.append(_member(top[column], _value(column, sql_type)))
        elif column in TABLE_CONTEXT:
            context.append(_member(TABLE_CONTEXT[column], _value(column, sql_type)))
        elif column not in TABLE_METADATA and not column.startswith("context_"):
            bag.append(_member(column, _value(column, sql_type)))
    if context:
        members.append(_member("context", f"'{{' || NULLIF(concat_ws(',', {', '.join(context)}), '') || '}}'"))
    if bag:
        members.append(_member("traits" if kind in ("identify", "group") else "properties", _object(bag)))
    return _object(members)


def event_of_table(table: str) -> str:
    """The event name a per-event table stands for: Segment's table name, title-cased (`signed_in` →
    `Signed In`), for exports without the `event_text` column."""
    return " ".join(word.capitalize() for word in table.split("_") if word)


def _parquet_messages(path: Path) -> Iterator[bytes]:
    _require_duckdb(path)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamps are written in UTC, with a Z
        try:
            described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
            columns = {row[0]: str(row[1]) for row in described}
            # The expression is built from the file's own column names, each quoted as an identifier.
            query = f"SELECT encode({message_sql(path, columns)}) FROM read_parquet(?)"  # noqa: S608
            cursor = con.execute(query, [str(path)])
            while True:
                rows: list[Any] = cursor.fetchmany(_ROWS_PER_FETCH)
                if not rows:
                    return
                for (raw,) in rows:
                    yield raw
        except duckdb.Error as exc:
            raise UsageError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    finally:
        con.close()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
