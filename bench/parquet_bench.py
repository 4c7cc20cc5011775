"""Reading a history from Parquet against JSON Lines, in one run on the same `pqlflow sample` history.

Prints, for the JSON Lines file and the same messages as Parquet (nested objects as JSON strings, and as
structs), in messages per second: `history_files.messages` (for Parquet, DuckDB spells each row as JSON in
SQL), the same rows fetched into Python and each message built there (the baseline a reader in Python
would be), and `decode_history` (reading + validation + dedupe + sort) on each.

    .venv/bin/python bench/parquet_bench.py [--events 300000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import msgspec
from pqlflow.analysis.backtest import decode_history
from pqlflow.analysis.history_files import NESTED, messages
from pqlflow.analysis.sample import Sample, SampleConfig

TOP = "type, event, name, messageId, timestamp, userId, groupId"


def write(jsonl: Path, root: Path) -> dict[str, Path]:
    con = duckdb.connect()
    src = f"read_json('{jsonl}', format = 'newline_delimited', sample_size = -1)"
    strings = ", ".join(f"to_json({n})::VARCHAR AS {n}" for n in NESTED)
    out = {"parquet, JSON strings": root / "strings.parquet", "parquet, structs": root / "structs.parquet"}
    con.execute(f"COPY (SELECT {TOP}, {strings} FROM {src}) TO '{out['parquet, JSON strings']}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT {TOP}, {', '.join(NESTED)} FROM {src}) TO '{out['parquet, structs']}' (FORMAT parquet)")
    return out


def python_rows(path: Path) -> int:
    """The baseline: fetch the rows into Python and build each message there."""
    encode, decode = msgspec.json.encode, msgspec.json.Decoder().decode

    def clean(v: object) -> object:
        return {k: clean(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v

    cursor = duckdb.connect().execute("SELECT * FROM read_parquet(?)", [str(path)])
    names = [d[0] for d in cursor.description]
    n = 0
    while rows := cursor.fetchmany(65_536):
        for row in rows:
            message = {}
            for k, v in zip(names, row, strict=True):
                if v is not None:
                    message[k] = (decode(v) if isinstance(v, str) else clean(v)) if k in NESTED else v
            encode(message)
            n += 1
    return n


def best(fn, repeat: int = 3) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - started)
    return min(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jsonl = root / "history.jsonl"
        sample = Sample(SampleConfig(seed=1, accounts=300, days=60, start=date(2026, 9, 1), events=args.events))
        jsonl.write_text("".join(line + "\n" for line in sample.lines()))
        files = {"jsonl": jsonl, **write(jsonl, root)}
        print(f"{'input':24} {'messages()':>14} {'built in Python':>16} {'decode_history':>16}")
        for label, path in files.items():
            sql, n = best(lambda p=path: sum(1 for _ in messages(p)))
            py = best(lambda p=path: python_rows(p))[0] if label != "jsonl" else None
            decode = best(lambda p=path: decode_history([p]).count, repeat=2)[0]
            py_text = f"{n / py / 1000:12.0f}k/s" if py else f"{'-':>16}"
            print(f"{label:24} {n / sql / 1000:10.0f}k/s {py_text} {n / decode / 1000:12.0f}k/s   ({n} rows)")


if __name__ == "__main__":
    main()
