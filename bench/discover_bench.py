"""Discover benchmark: `pqlflow discover` on a 1M-event history, time and peak RSS, next to DuckDB doing its
counting part on the same file, in the same run.

Uses the backtest bench's cached history (`pqlflow sample`, default 1,000,000 events over 2,000 accounts and 60 days,
seed 1, start 2026-01-01; cached in $TMPDIR/pqlflow-bench/), then runs, each in a fresh child process so that each
peak RSS is its own:
  1. discover: `run_discover` as the command runs it — decode (validation, dedupe, sort: the backtest's
     reader), per-account columns, weekly snapshots with every candidate's value, ranking with thresholds,
     the proposal and its held-out backtest; wall and CPU seconds per phase, peak RSS;
  2. DuckDB, one thread: read the same JSON Lines and compute, for every account, snapshot and tracked
     event name, the lifetime and last-7/14/30-day counts before the snapshot — the bulk of discover's
     candidate values (without property values, users, gauges, traits, ranking or the proposal).
The target (issue 17): discover on 1M events in under 30 s on one core.

Run: .venv/bin/python bench/discover_bench.py [--events N] [--accounts N] [--file F]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_SECONDS = 30.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_discover(path: Path) -> dict[str, Any]:
    from pqlflow.analysis.discover import run_discover

    cpu = time.process_time()
    wall = time.perf_counter()
    result = run_discover([path], now_s=time.time())
    data = result.to_dict()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "phases": result.seconds,
        "events": result.history.count,
        "lines": result.history.lines,
        "candidates": result.candidates,
        "snapshots": data["learn"]["snapshots"] + data["heldout"]["snapshots"],
        "top": data["signals"][0]["condition"] if data["signals"] else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_duckdb(path: Path) -> dict[str, Any]:
    import duckdb

    cpu = time.process_time()
    wall = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")
    columns = "{'type': 'VARCHAR', 'event': 'VARCHAR', 'timestamp': 'VARCHAR', 'userId': 'VARCHAR', " \
              "'groupId': 'VARCHAR', 'context': 'JSON'}"
    con.execute(
        "CREATE TABLE ev AS SELECT coalesce(groupId, context->>'groupId', 'user:' || userId) AS account, "
        "event, CAST(epoch_ms(CAST(timestamp AS TIMESTAMP)) // 86400000 AS BIGINT) AS day "
        f"FROM read_json(?, columns = {columns}, format = 'newline_delimited') WHERE type = 'track'",
        [str(path)],
    )
    first, last = con.execute("SELECT min(day), max(day) FROM ev").fetchone() or (0, 0)
    snaps = [first + 7 * k for k in range(1, 100) if first + 7 * k + 30 <= last + 1]
    rows = con.execute(
        "SELECT count(*) FROM (SELECT e.account, s.sday, e.event, count(*) AS lifetime, "
        "count(*) FILTER (WHERE e.day >= s.sday - 7) AS d7, count(*) FILTER (WHERE e.day >= s.sday - 14) AS d14, "
        "count(*) FILTER (WHERE e.day >= s.sday - 30) AS d30 "
        "FROM ev e JOIN (SELECT unnest(?::BIGINT[]) AS sday) s ON e.day < s.sday GROUP BY ALL)",
        [snaps],
    ).fetchone()
    con.close()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "rows": rows[0] if rows else 0,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(kind: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - this script, fixed arguments
        [sys.executable, __file__, "--child", kind, "--file", str(path)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--file", type=Path, default=None, help="use this history instead of generating one")
    parser.add_argument("--child", choices=("discover", "duckdb"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        work = child_discover if args.child == "discover" else child_duckdb
        print(json.dumps(work(args.file)))
        return
    from backtest_bench import history_file  # the backtest bench's cached history, made if missing

    path = args.file or history_file(args.events, args.accounts, args.seed)
    print(f"discover bench · {platform.python_implementation()} {platform.python_version()} · {path}")
    d = run_child("discover", path)
    q = run_child("duckdb", path)
    per_m = 1_000_000 / d["lines"] if d["lines"] else 0.0
    print(f"history: {d['lines']:,} lines, {d['events']:,} events; {d['candidates']:,} candidate signals, "
          f"{d['snapshots']:,} snapshots")
    print(f"discover:    {d['seconds']:6.2f} s wall, {d['cpu_seconds']:6.2f} s CPU, "
          f"peak RSS {d['peak_rss_mb']:7.1f} MiB ({d['peak_rss_mb'] * per_m:.0f} MiB per million events)")
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in d["phases"].items() if k != "total")
    print(f"  phases: {phases}")
    mining = d["phases"]["columns"] + d["phases"]["snapshots"]
    print(f"  mining (columns + snapshots): {mining:.2f} s; top signal: {d['top']}")
    print(f"duckdb (1 thread), event-name counts only: {q['seconds']:6.2f} s wall, {q['cpu_seconds']:6.2f} s CPU, "
          f"peak RSS {q['peak_rss_mb']:7.1f} MiB, {q['rows']:,} (account, snapshot, event) rows")
    verdict = "met" if d["cpu_seconds"] < TARGET_SECONDS else "NOT met"
    print(f"target: discover on 1M events under {TARGET_SECONDS:.0f} s on one core: {verdict} "
          f"({d['cpu_seconds']:.1f} s CPU)")


if __name__ == "__main__":
    main()
