"""Backtest benchmark: `pqlflow backtest` throughput against bare JSON decoding of the same file, same run.

Generates a history with `pqlflow sample` (default 1,000,000 events over 2,000 accounts and 60 days,
seed 1; cached in $TMPDIR/pqlflow-bench/), then, in one process:
  1. bare decoding: read the file and JSON-decode every line (msgspec when installed, else json);
  2. the floor: read, decode each line into the backtest's typed struct and group by account, nothing else;
  3. the backtest: decode + validate exactly as ingest does + dedupe + sort, then fold and evaluate each
     definition (the same code path as `pqlflow backtest`).
Prints wall-clock and CPU seconds and events per second for both. CPU time is what "one core" means:
the backtest is single-threaded, and CPU time is not inflated by other processes on a busy machine.

Run: .venv/bin/python bench/backtest_bench.py [--events N] [--accounts N] [--file F] [--definition FILE ...]
"""

from __future__ import annotations

import argparse
import gc
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pqlflow.analysis.backtest import JSON_DECODER, decode_history, decode_only, properties_read, run_definition
from pqlflow.qualify.definition import load_definition

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEFINITIONS = ["slack-messages.yaml", "logins.yaml", "scoring.yaml"]
TARGET = 200_000  # events per CPU second (issue 6)


def history_file(events: int, accounts: int, seed: int) -> Path:
    cache = Path(tempfile.gettempdir()) / "pqlflow-bench"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sample-{events}-{accounts}-{seed}.jsonl"
    if not path.exists():
        print(f"generating {events:,} events with `pqlflow sample` → {path} …", flush=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [
                sys.executable,
                "-m",
                "pqlflow.cli",
                "sample",
                "--accounts",
                str(accounts),
                "--events",
                str(events),
                "--seed",
                str(seed),
                "--start",
                "2026-01-01",
                "--out",
                str(tmp),
                "--quiet",
            ],
            check=True,
        )
        tmp.rename(path)
    return path


def floor(path: Path) -> tuple[int, float]:
    """The least any backtest of this contract must do, validating nothing and folding nothing: read each line,
    decode it into the backtest's own typed struct (msgspec, in C) and file a tuple of its fields under its
    account. Returns (lines, CPU seconds). It bounds what a pure-Python backtest can reach on this machine."""
    from pqlflow.analysis.backtest import _MESSAGE

    decode = _MESSAGE.decode
    groups: dict[str | None, list[tuple[Any, ...]]] = {}
    n = 0
    gc.disable()
    cpu = time.process_time()
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            for n, raw in enumerate(f, 1):  # noqa: B007 - n is the count
                m = decode(raw)
                context = m.context
                rec = (m.timestamp, n, m.messageId, m.type, context.groupId if context else None, m.userId, m.event)
                group = groups.get(rec[4])
                if group is None:
                    groups[rec[4]] = [rec]
                else:
                    group.append(rec)
        return n, time.process_time() - cpu
    finally:
        del groups
        gc.enable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file", type=Path, help="use this JSON Lines history instead of generating one")
    parser.add_argument(
        "--definition",
        action="append",
        type=Path,
        help="definition(s) to run (default: slack-messages, logins, scoring examples)",
    )
    args = parser.parse_args()
    path = args.file or history_file(args.events, args.accounts, args.seed)
    definitions = args.definition or [ROOT / "examples" / "definitions" / n for n in DEFAULT_DEFINITIONS]
    print(f"python {platform.python_version()} · JSON via {JSON_DECODER} · {path.stat().st_size / 1e6:,.0f} MB")

    lines, bare_wall, bare_cpu = decode_only([path])
    print(
        f"bare decoding        {lines:>10,} lines  wall {bare_wall:6.2f} s  CPU {bare_cpu:6.2f} s  "
        f"= {lines / bare_cpu:>9,.0f} lines/CPU-s"
    )
    floor_lines, floor_cpu = floor(path)
    print(
        f"floor (typed decode + group by account, nothing validated, nothing folded)  CPU {floor_cpu:6.2f} s  "
        f"= {floor_lines / floor_cpu:>9,.0f} lines/CPU-s: no pure-Python backtest of this contract goes faster here"
    )
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    history = decode_history([path], keep_properties=properties_read(load_definition(d) for d in definitions))
    d_wall, d_cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"decode+validate+sort {history.lines:>10,} lines  wall {d_wall:6.2f} s  CPU {d_cpu:6.2f} s  "
        f"= {history.lines / d_cpu:>9,.0f} lines/CPU-s  ({history.count:,} events, "
        f"{history.duplicates:,} duplicates, {len(history.bad):,} bad)"
    )
    sort_cpu = history.sort_cpu_seconds
    validate_cpu = d_cpu - sort_cpu - floor_cpu / floor_lines * history.lines
    print(
        f"  of which: floor {floor_cpu:5.2f} s · validation beyond the floor {validate_cpu:5.2f} s · "
        f"dedupe + sort + per-account columns {sort_cpu:5.2f} s"
    )
    budget = history.lines / TARGET
    folds: list[float] = []
    ok = True
    for definition in definitions:
        defn = load_definition(definition)
        wall, cpu = time.perf_counter(), time.process_time()
        run = run_definition(history, defn, str(definition))
        r_wall, r_cpu = time.perf_counter() - wall, time.process_time() - cpu
        folds.append(r_cpu)
        total_cpu, total_wall = d_cpu + r_cpu, d_wall + r_wall
        rate = history.lines / total_cpu
        ok = ok and rate >= TARGET
        pqls = sum(1 for s in run.subjects if s.qualified_at_ms is not None)
        print(
            f"backtest {defn.name:<20} fold {r_cpu:5.2f} CPU-s  total wall {total_wall:6.2f} s  CPU "
            f"{total_cpu:6.2f} s  = {rate:>9,.0f} events/CPU-s  ({total_cpu / bare_cpu:4.1f}× bare decoding; "
            f"{run.folded:,} folded, {run.gated:,} gated, {run.decided:,} decided, {pqls:,} PQLs)"
        )
    print(f"target {TARGET:,} events/CPU-s: {'met' if ok else 'NOT met'} for every definition")
    print(
        f"budget at the target: {budget:.2f} CPU-s for {history.lines:,} lines; floor + dedupe/sort alone take "
        f"{floor_cpu + sort_cpu:.2f} s, leaving {budget - floor_cpu - sort_cpu:.2f} s for validation (measured "
        f"{validate_cpu:.2f} s) and a fold (fastest measured {min(folds):.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
