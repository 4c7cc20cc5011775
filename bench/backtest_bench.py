"""Backtest benchmark: `pqlflow backtest` throughput against bare JSON decoding of the same file, same run.

Generates a history with `pqlflow sample` (default 1,000,000 events over 2,000 accounts and 60 days,
seed 1; cached in $TMPDIR/pqlflow-bench/), then, in one process:
  1. bare decoding: read the file and JSON-decode every line (orjson when installed, else json);
  2. the backtest: decode + validate exactly as ingest does + dedupe + sort, then fold and evaluate each
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

from pqlflow.backtest import JSON_DECODER, decode_history, decode_only, properties_read, run_definition
from pqlflow.definition import load_definition

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
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    history = decode_history([path], keep_properties=properties_read(load_definition(d) for d in definitions))
    d_wall, d_cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"decode+validate+sort {history.lines:>10,} lines  wall {d_wall:6.2f} s  CPU {d_cpu:6.2f} s  "
        f"= {history.lines / d_cpu:>9,.0f} lines/CPU-s  ({history.count:,} events, "
        f"{history.duplicates:,} duplicates, {len(history.bad):,} bad)"
    )
    ok = True
    for definition in definitions:
        defn = load_definition(definition)
        wall, cpu = time.perf_counter(), time.process_time()
        run = run_definition(history, defn, str(definition))
        r_wall, r_cpu = time.perf_counter() - wall, time.process_time() - cpu
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
