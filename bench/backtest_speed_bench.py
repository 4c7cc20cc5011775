"""Backtest speed against DuckDB, side by side in one run on the same 1M-event file (issue 17 item 3).

Uses the backtest bench's cached history (`pqlflow sample`, default 1,000,000 events over 2,000 accounts and
60 days, seed 1, start 2026-01-01; cached in $TMPDIR/pqlflow-bench/) and runs, each in a fresh child process
(so no run inherits another's heap or caches), `--repeat` times:
  1. DuckDB, one thread: the equivalent query of a one-rule count definition — read the same JSON Lines, and
     per account the lifetime count of `Message Sent` and the time of its 2,000th (`lifetime_and_crossing`);
  2. `pqlflow backtest` of examples/definitions/slack-messages.yaml (that one rule), as the command runs it
     (`run_backtest_partitioned`, partitions auto: in memory at this size), with its phases: reading and
     validating, dedupe + sort + per-account columns, the fold and evaluation;
  3. the same for examples/definitions/scoring.yaml (points with decay);
  2b, 3b. each again with `--engine auto` (the columnar engine, `pqlflow.analysis.columnar`, where it
     answers exactly, else the reference), with the engine that answered and whether its answers (every
     subject's qualifications, reasons, touch and conversion, every transition) are identical to the
     reference run's;
  4. `pqlflow discover` on the same file (`run_discover`);
  5. four floors. For any engine that hands each event to Python: msgspec decoding every line into the
     backtest's typed message struct, nothing else (`floor_typed_decode`); and DuckDB reading the file and
     handing Python the five fields a count rule needs, per event (`floor_duckdb_rows`). For an exact engine
     that keeps the events in DuckDB: msgspec proving every line strict JSON, which DuckDB's reader does not
     (`floor_strict_json`); and DuckDB handing Python, per account, what a fold of a count rule reads, with
     no check (`floor_duckdb_lists`).
Prints CPU and wall seconds (the range over the repeats), the ratios of each backtest's CPU time to DuckDB's
against the targets (2× for the one-rule definition, 3× for scoring), and discover against its 30 s. CPU time
is what "one core" means: every run here is single-threaded, and CPU time is not inflated by other processes
on a shared machine (wall time is printed beside it).

Run: .venv/bin/python bench/backtest_speed_bench.py [--repeat N] [--events N] [--accounts N] [--file F]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = {"slack": ROOT / "examples/definitions/slack-messages.yaml",
               "scoring": ROOT / "examples/definitions/scoring.yaml"}
TARGETS = {"slack": 2.0, "scoring": 3.0}  # × DuckDB's CPU time (issue 17 item 3)
DISCOVER_TARGET_SECONDS = 30.0
COUNTED = "Message Sent"
THRESHOLD = 2000

# The equivalent of slack-messages' rule in SQL: every account's lifetime count of one event name and the time
# of the event that made it reach the threshold. The account is the contract's: the group of a group call,
# else the message's context.groupId, else the user alone ("user:" + userId).
QUERY = """
WITH ev AS (
    SELECT {account} AS account, event, type,
           epoch_ms(CAST("timestamp" AS TIMESTAMPTZ)) AS ms
    FROM read_json(?, columns = {columns}, format = 'newline_delimited')
), counted AS (
    SELECT account, ms, row_number() OVER (PARTITION BY account ORDER BY ms) AS n
    FROM ev WHERE type = 'track' AND event = ?
)
SELECT account, count(*) AS lifetime, min(ms) FILTER (WHERE n = ?) AS crossed_ms
FROM counted GROUP BY account ORDER BY account
"""
COLUMNS = ("{'type': 'VARCHAR', 'event': 'VARCHAR', 'timestamp': 'VARCHAR', 'userId': 'VARCHAR', "
           "'groupId': 'VARCHAR', 'context': 'JSON'}")
ACCOUNT = "coalesce(groupId, context->>'groupId', 'user:' || userId)"
# the same file with the messageIds too, for the floors
WITH_IDS = f"read_json(?, columns = {COLUMNS[:-1]}, 'messageId': 'VARCHAR'}}, format = 'newline_delimited')"


@contextmanager
def one_thread() -> Iterator[Any]:
    """A DuckDB connection in memory, on one thread, in UTC."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def lifetime_and_crossing(
    path: Path, event: str = COUNTED, threshold: int = THRESHOLD
) -> list[tuple[str, int, int | None]]:
    """DuckDB (one thread): (account, lifetime count of `event`, epoch ms of its `threshold`-th or None) for
    every account with at least one, sorted by account."""
    with one_thread() as con:
        rows: list[tuple[str, int, int | None]] = con.execute(
            QUERY.format(account=ACCOUNT, columns=COLUMNS), [str(path), event, threshold]
        ).fetchall()
    return rows


def floor_typed_decode(path: Path) -> int:
    """Decode every line into the backtest's typed struct (msgspec, in C) and keep nothing: the least a
    backtest that validates each event in Python does per event. Returns the lines decoded."""
    from pqlflow.analysis.backtest import _MESSAGE

    decode, n = _MESSAGE.decode, 0
    with open(path, "rb", buffering=1 << 20) as f:
        for raw in f:
            decode(raw)
            n += 1
    return n


def floor_duckdb_rows(path: Path) -> int:
    """DuckDB (one thread) reads the file and hands Python, per event, the fields a count rule reads
    (messageId, timestamp, user, account, event name), fetched and dropped. Returns the rows fetched."""
    with one_thread() as con:
        cursor = con.execute(
            f"SELECT messageId, \"timestamp\", userId, coalesce(groupId, context->>'groupId'), event FROM {WITH_IDS}",
            [str(path)],
        )
        n = 0
        while rows := cursor.fetchmany(65_536):
            n += len(rows)
    return n


def floor_strict_json(path: Path) -> int:
    """Prove every line one strict JSON object (no NaN, no trailing comma: what DuckDB's reader lets through and
    the reference refuses) with msgspec, in blocks of lines, building nothing but an empty struct per line: the
    least an exact engine that lets DuckDB read the file pays on top of DuckDB. Returns the lines proved."""
    import msgspec

    class Nothing(msgspec.Struct):
        pass

    decode_lines, n, rest = msgspec.json.Decoder(Nothing).decode_lines, 0, b""
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            n += len(decode_lines(block[:cut]))
    return n + (len(decode_lines(rest)) if rest.strip() else 0)


def account_lists(path: Path, event: str = COUNTED) -> list[tuple[str, int, int, int, list[int] | None]]:
    """DuckDB (one thread), checking no line: per account (sorted), its first and last event's epoch ms, its
    count of distinct messageIds (the dedupe), and the sorted times of `event` (None without one; redelivered
    copies included, which the fold drops): what a per-account fold of a count rule reads."""
    with one_thread() as con:
        rows: list[tuple[str, int, int, int, list[int] | None]] = con.execute(
            "SELECT account, min(ms), max(ms), count(DISTINCT messageId), list(ms ORDER BY ms) FILTER (WHERE "
            f"type = 'track' AND event = ?) FROM (SELECT {ACCOUNT} AS account, messageId, type, event, "
            f"epoch_ms(CAST(\"timestamp\" AS TIMESTAMPTZ)) AS ms FROM {WITH_IDS}) GROUP BY account ORDER BY account",
            [event, str(path)],
        ).fetchall()
    return rows


def floor_duckdb_lists(path: Path) -> int:
    """`account_lists`, fetched: the least an exact engine pays that folds in Python what DuckDB gathered per
    account (the columnar engine gathers this and the trait events' lines, after proving every line).
    Returns the accounts fetched."""
    return len(account_lists(path))


FLOORS = (
    ("floor_decode", "floor: msgspec typed decode of every line, nothing kept", floor_typed_decode),
    ("floor_duckdb", "floor: DuckDB hands Python 5 fields per event", floor_duckdb_rows),
    ("floor_strict", "floor: msgspec proves every line strict JSON, builds nothing", floor_strict_json),
    ("floor_lists", "floor: DuckDB hands Python per-account lists, checks nothing", floor_duckdb_lists),
)
KINDS = ("duckdb", "slack", "slack_auto", "scoring", "scoring_auto", *(kind for kind, _, _ in FLOORS))


def answer_digest(run: Any) -> str:
    """A digest of what a backtest answered, subject by subject (who qualified when, how often, with which
    reasons and touch, and when they converted), so two engines' answers can be compared in one line."""
    import hashlib

    rows = sorted((s.account_id, s.user_id or "", s.qualified_at_ms or 0, s.qualifications, s.disqualifications,
                   s.converted_at_ms or 0, s.touch or "", [list(r) for r in s.reasons]) for s in run.subjects)
    return hashlib.sha256(json.dumps([rows, sorted(run.transitions)]).encode()).hexdigest()[:16]


def _timed(work: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = work()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def child(kind: str, path: Path) -> dict[str, Any]:
    if kind == "duckdb":
        rows, cpu, wall = _timed(lambda: lifetime_and_crossing(path))
        return {"cpu": cpu, "wall": wall, "accounts": len(rows), "crossed": sum(1 for r in rows if r[2] is not None)}
    work = next((fn for floor, _, fn in FLOORS if floor == kind), None)
    if work is not None:
        n, cpu, wall = _timed(lambda: work(path))
        return {"cpu": cpu, "wall": wall, "lines": n}
    if kind == "discover":
        from pqlflow.analysis.discover import run_discover

        result, cpu, wall = _timed(lambda: run_discover([path], now_s=time.time()))
        return {"cpu": cpu, "wall": wall, "candidates": result.candidates}
    from pqlflow.analysis.columnar import run_backtest_engine
    from pqlflow.analysis.partitions import run_backtest_partitioned
    from pqlflow.qualify.definition import load_definition

    definition = DEFINITIONS[kind.removesuffix("_auto")]
    defn = load_definition(definition)
    # `_auto`: `--engine auto` (the columnar engine where it answers exactly); else the reference (the default)
    engine = run_backtest_engine if kind.endswith("_auto") else run_backtest_partitioned
    result, cpu, wall = _timed(lambda: engine([path], [(defn, definition.name)], now_s=time.time()))
    history, run = result.history, result.runs[0]
    return {
        "cpu": cpu,
        "wall": wall,
        "engine": getattr(result, "engine", "reference"),
        "fallback": getattr(result, "fallback", None),
        "answer": answer_digest(run),
        "lines": history.lines,
        "read_validate": history.decode_seconds - history.sort_cpu_seconds,
        "sort": history.sort_cpu_seconds,
        "fold": run.seconds,
        "pqls": sum(1 for s in run.subjects if s.qualified_at_ms is not None),
        "folded": run.folded,
    }


def run_child(kind: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(  # noqa: S603 - this script, fixed arguments
        [sys.executable, __file__, "--child", kind, "--file", str(path)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:5.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, to show the noise (default 2)")
    parser.add_argument("--file", type=Path, default=None, help="use this JSON Lines history instead of generating one")
    parser.add_argument("--child", choices=(*KINDS, "discover"), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.file)))
        return 0
    from backtest_bench import history_file  # the backtest bench's cached history, made if missing

    path = args.file or history_file(args.events, args.accounts, args.seed)
    print(f"backtest speed bench · {platform.python_implementation()} {platform.python_version()} · {path} "
          f"({path.stat().st_size / 1e6:,.0f} MB) · {args.repeat} run(s) of each, each in its own process")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (*KINDS, "discover")}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere does not hit one kind only
        for kind, results in runs.items():
            results.append(run_child(kind, path))
    duck = runs["duckdb"]
    duck_cpu = [r["cpu"] for r in duck]
    print(f"duckdb, 1 thread: lifetime '{COUNTED}' per account + its {THRESHOLD:,}th   CPU {_span(duck_cpu)} s  "
          f"wall {_span([r['wall'] for r in duck])} s  ({duck[0]['accounts']:,} accounts, "
          f"{duck[0]['crossed']:,} reach {THRESHOLD:,})")
    for kind in ("slack", "slack_auto", "scoring", "scoring_auto"):
        rs = runs[kind]
        name = DEFINITIONS[kind.removesuffix("_auto")].name
        cpu = [r["cpu"] for r in rs]
        ratios = [c / d for c, d in zip(cpu, duck_cpu, strict=True)]
        if kind.endswith("_auto"):
            same = {r["answer"] for r in rs} == {r["answer"] for r in runs[kind.removesuffix("_auto")]}
            engine = rs[0]["engine"] + (f" (fell back: {rs[0]['fallback']})" if rs[0]["fallback"] else "")
            met = max(ratios) <= TARGETS[kind.removesuffix("_auto")]
            print(f"backtest {name:<20} --engine auto → {engine}")
            print(f"  CPU {_span(cpu)} s  wall {_span([r['wall'] for r in rs])} s  ({rs[0]['pqls']:,} PQLs; answers "
                  f"{'identical to' if same else 'DIFFER from'} the reference's)")
            if rs[0]["engine"] == "columnar":
                load, fold = _span([r["read_validate"] for r in rs]), _span([r["fold"] for r in rs])
                print(f"  phases: load (read, prove the strict shape in SQL, dedupe) {load} s · the definition "
                      f"(trait fold and decide by the live code) {fold} s")
            print(f"  {_span(ratios)}× DuckDB's CPU time; target within {TARGETS[kind.removesuffix('_auto')]:g}×: "
                  f"{'met' if met else 'NOT met'}")
            continue
        print(f"backtest {name:<20} --engine reference                           CPU {_span(cpu)} s  "
              f"wall {_span([r['wall'] for r in rs])} s  ({rs[0]['lines']:,} lines, {rs[0]['pqls']:,} PQLs, "
              f"{rs[0]['folded']:,} folded)")
        print(f"  phases: read + validate {_span([r['read_validate'] for r in rs])} s · dedupe + sort + columns "
              f"{_span([r['sort'] for r in rs])} s · fold + evaluate {_span([r['fold'] for r in rs])} s")
        print(f"  {_span(ratios)}× DuckDB's CPU time")
    for kind, what, _ in FLOORS:
        rs = runs[kind]
        cpu = [r["cpu"] for r in rs]
        ratios = [c / d for c, d in zip(cpu, duck_cpu, strict=True)]
        print(f"{what:<62} CPU {_span(cpu)} s  wall {_span([r['wall'] for r in rs])} s  "
              f"= {_span(ratios)}× DuckDB's query")
    disc = runs["discover"]
    disc_cpu = [r["cpu"] for r in disc]
    met = max(disc_cpu) < DISCOVER_TARGET_SECONDS
    print(f"discover ({disc[0]['candidates']:,} candidates)                                    CPU "
          f"{_span(disc_cpu)} s  wall {_span([r['wall'] for r in disc])} s  target under "
          f"{DISCOVER_TARGET_SECONDS:.0f} s: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
