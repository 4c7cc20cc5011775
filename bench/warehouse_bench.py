"""Warehouse-scale benchmark: `pqlflow backtest` on a history larger than the in-memory engine should hold,
partitioned (out of core), next to the in-memory engine on a size that fits, in the same run.

The history (default 30,000,000 events) is made of seeded `pqlflow sample` chunks of 1,000,000 events over
2,000 accounts and 60 days from 2026-01-01 (chunk k has seed 1000·SEED + k, so its account ids and
messageIds are its own; 0.2% of the lines are redelivered copies), concatenated into one JSON Lines file
and cached in $TMPDIR/pqlflow-bench/. `pqlflow sample` streams its output, but one process for 30M
events is single-threaded either way; chunks make the cache resumable and any prefix of chunks a
smaller history (`--events`).

Each backtest runs in a child process of its own (`python -m pqlflow.cli backtest … --json`), whose own
peak RSS (ru_maxrss) and CPU time os.wait4 reports:
  1. in memory (`--partitions 1`, today's engine) on the first `--fits` events (default 3,000,000);
  2. partitioned (`--partitions auto`) on the same events: the same answers, the cost of spilling;
  3. partitioned on the whole history.
for a one-rule definition (slack-messages) and the points model (scoring). Printed per run: events,
wall and CPU seconds, events per CPU second, peak RSS and peak RSS per million events, and whether the
two engines' answers on the same events are identical (PQLs, metrics, sweeps, per-signal table).

Run: .venv/bin/python bench/warehouse_bench.py [--events N] [--fits N] [--definition FILE ...]
     [--generate-only] [--skip-in-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHUNK_EVENTS = 1_000_000
CHUNK_ACCOUNTS = 2_000
DEFAULT_DEFINITIONS = ["slack-messages.yaml", "scoring.yaml"]
TARGET_RSS_MB = 4096


def _cache() -> Path:
    path = Path(tempfile.gettempdir()) / "pqlflow-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def chunk_file(k: int, events: int, seed: int) -> Path:
    """Chunk k of the warehouse history (made with `pqlflow sample` if not cached)."""
    path = _cache() / f"warehouse-chunk-{seed}-{k}-{events}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        accounts = max(10, CHUNK_ACCOUNTS * events // CHUNK_EVENTS)
        subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "pqlflow.cli", "sample", "--accounts", str(accounts), "--events", str(events),
             "--seed", str(seed * 1000 + k), "--start", "2026-01-01", "--duplicates", "0.002",
             "--out", str(tmp), "--quiet"],
            check=True,
        )
        tmp.rename(path)
    return path


def history_file(events: int, seed: int) -> Path:
    """The first `events` events of the warehouse history, as one JSON Lines file (cached)."""
    path = _cache() / f"warehouse-{events}-{seed}.jsonl"
    if path.exists():
        return path
    started = time.perf_counter()
    sizes = [CHUNK_EVENTS] * (events // CHUNK_EVENTS) + ([events % CHUNK_EVENTS] if events % CHUNK_EVENTS else [])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for k, size in enumerate(sizes):
            chunk = chunk_file(k, size, seed)
            with open(chunk, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
            print(f"  chunk {k + 1}/{len(sizes)} ({time.perf_counter() - started:,.0f} s)", flush=True)
    tmp.rename(path)
    print(f"generated {path} in {time.perf_counter() - started:,.0f} s", flush=True)
    return path


def run_child(path: Path, definition: Path | None, partitions: str) -> dict[str, Any]:
    """`pqlflow backtest --json` (or `pqlflow discover --json` without a definition) in a child process: its
    answers, wall and CPU time, and peak RSS. os.wait4 gives that one child's own resource usage
    (RUSAGE_CHILDREN would give the largest peak of all the children so far)."""
    if definition is None:
        argv = ["discover", str(path)]
    else:
        argv = ["backtest", str(path), "--definition", str(definition), "--no-decode-baseline"]
    with tempfile.TemporaryFile() as out:
        wall = time.perf_counter()
        child = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "pqlflow.cli", *argv, "--partitions", partitions, "--json"],
            stdout=out,
        )
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - wall
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"pqlflow backtest exited {child.returncode}")
        out.seek(0)
        data = json.loads(out.read())
    return {"data": data, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def answers(data: Any) -> Any:
    """What a backtest or discover answers, without timings ("seconds", "speed")."""
    if isinstance(data, dict):
        return {k: answers(v) for k, v in data.items() if k not in ("seconds", "speed")}
    if isinstance(data, list):
        return [answers(v) for v in data]
    return data


def line(label: str, r: dict[str, Any]) -> str:
    data = r["data"]
    events = data["history"]["events"]
    lines = data["history"]["lines"]
    if "definitions" in data:
        found = f"{data['definitions'][0]['pqls']:,} PQLs"
    else:
        found = f"{len(data['signals'])} signals, first: {data['signals'][0]['label'] if data['signals'] else '-'}"
    return (
        f"{label:<34} {lines:>11,} lines  wall {r['wall']:7.1f} s  CPU {r['cpu']:7.1f} s  "
        f"= {lines / r['cpu']:>8,.0f} lines/CPU-s  peak RSS {r['rss_mb']:7,.0f} MiB "
        f"({r['rss_mb'] / (lines / 1e6):6.1f} MiB per M lines)  {events:,} events, {found}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000_000)
    parser.add_argument("--fits", type=int, default=3_000_000, help="events for the in-memory comparison")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--definition", action="append", type=Path)
    parser.add_argument("--discover", action="store_true", help="also run `pqlflow discover` the same ways")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--skip-in-memory", action="store_true", help="only the partitioned run on --events")
    args = parser.parse_args()
    big = history_file(args.events, args.seed)
    small = history_file(min(args.fits, args.events), args.seed)
    if args.generate_only:
        return 0
    definitions: list[Path | None] = list(args.definition or [ROOT / "examples" / "definitions" / n
                                                              for n in DEFAULT_DEFINITIONS])
    if args.discover:
        definitions.append(None)
    print(f"python {platform.python_version()} · {big.stat().st_size / 1e9:,.2f} GB ({big.name}) · "
          f"{small.stat().st_size / 1e9:,.2f} GB ({small.name})", flush=True)
    same = True
    for definition in definitions:
        print(f"-- {'pqlflow discover' if definition is None else definition.name}", flush=True)
        if not args.skip_in_memory:
            memory = run_child(small, definition, "1")
            print(line("in memory (--partitions 1)", memory), flush=True)
            spilled = run_child(small, definition, "auto" if args.fits > 2_000_000 else "4")
            print(line("partitioned, same history", spilled), flush=True)
            agree = answers(memory["data"]) == answers(spilled["data"])
            same = same and agree
            print(f"   answers identical: {agree}", flush=True)
        if args.events > args.fits or args.skip_in_memory:
            whole = run_child(big, definition, "auto")
            print(line("partitioned (--partitions auto)", whole), flush=True)
            print(f"   within {TARGET_RSS_MB:,} MiB of peak RSS: {whole['rss_mb'] <= TARGET_RSS_MB}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
