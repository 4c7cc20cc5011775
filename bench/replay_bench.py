"""Replay speed: the first N events of the demo history through the whole local system, with and without
replay's emulator speed fixes, next to the in-memory backtest of the same events (measured in one run).

    .venv/bin/python bench/replay_bench.py [N]        (default 2000; run from the repository root)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pqlflow.analysis.backtest import run_backtest
from pqlflow.local.replay import run_replay
from pqlflow.qualify.store import DEFAULT_PATH, bundled_default

ROOT = Path(__file__).resolve().parents[1]


def measure(label: str, work) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, result


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    lines = (ROOT / "events" / "demo" / "history.jsonl").read_text().splitlines()[:n]
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history.jsonl"
        history.write_text("\n".join(lines) + "\n")
        rows = []
        for label, speedups in (("replay, emulator speed fixes", True), ("replay, plain moto", False)):
            wall, cpu, result = measure(label, lambda s=speedups: run_replay(
                [history], template=ROOT / "template.yaml", speedups=s))
            invocations = sum(result.counters["invocations"].values())
            rows.append((label, wall, cpu, f"{invocations} invocations, {result.steps} steps"))
        wall, cpu, _ = measure("backtest", lambda: run_backtest([history], [(bundled_default(), str(DEFAULT_PATH))]))
        rows.append(("backtest (in memory, no emulator)", wall, cpu, ""))
    print(f"{n:,} events of events/demo/history.jsonl, bundled default definition")
    print(f"{'':38} {'wall s':>8} {'CPU s':>8} {'events/s (CPU)':>15}")
    for label, wall, cpu, note in rows:
        print(f"{label:38} {wall:8.2f} {cpu:8.2f} {n / cpu:15,.0f}  {note}")


if __name__ == "__main__":
    main()
