"""`pqlflow discover`: which behaviours predict upgrading, mined from a history and checked on a time split.

`run_discover(paths)` reads a history exactly as the backtest does (`backtest.decode_history`: JSON Lines,
plain or gzip, or Parquet; the same validation, dedupe and time sort), then:

1. **Snapshots, no look-ahead.** Every 7 days at UTC midnight from the history's first day, each account
   that is active, not excluded (the standard exclusions: `qualify/defaults/definition.yaml`) and not yet
   converted is one snapshot. Its signals are measured from its events strictly before that moment
   (`pqlflow.analysis.discover_signals`); its label is whether it converts within `window_days` after it.
   A snapshot is taken only when its whole window is inside the history, so every label is known.
2. **A time split.** Accounts first seen before the split (the first `LEARN_SHARE` of the accounts, by
   first-seen time) are the learn cohorts; later ones are held out. Thresholds are chosen, and signals
   ranked, on the learn cohorts only; the held-out cohorts then measure precision, recall and lift.
3. **A proposal.** The best expressible signals, as a definition (`pqlflow.analysis.discover_proposal`),
   scored by the backtest's own engine (`backtest.run_definition` + `metrics`) on the held-out cohorts'
   events.

`pqlflow.analysis.discover_report` renders a `DiscoverResult` as text, JSON and one HTML page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqlflow.analysis.backtest import (
    DAY_MS,
    History,
    _iso,
    decode_history,
    gc_paused,
    metrics,
    no_valid_event,
    run_definition,
)
from pqlflow.analysis.discover_proposal import propose
from pqlflow.analysis.discover_signals import (
    SNAPSHOT_DAYS,
    AccountColumns,
    Ranked,
    account_columns,
    catalog,
    condition_text,
    rank,
    snapshot_rows,
)
from pqlflow.analysis.partitions import SpilledHistory, choose_partitions
from pqlflow.ingest.usage import TrackingSpec
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.store import bundled_default

LEARN_SHARE = 0.6


@dataclass
class DiscoverResult:
    history: History
    window_days: float
    conversions: list[str]
    split_ms: int
    snapshots: list[int]  # the snapshot times (ms)
    learn: dict[str, int]  # accounts, rows, converting rows
    heldout: dict[str, int]
    candidates: int
    ranked: list[Ranked]  # best variant per base, best first
    proposal_yaml: str
    proposal: list[Ranked]
    backtest: dict[str, Any] | None  # the proposal's backtest metrics on the held-out cohorts
    seconds: dict[str, float]
    heldout_accounts: list[str]  # the accounts the proposal was backtested on

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "source": "discover",
            "history": self.history.summary(),
            "window_days": self.window_days,
            "conversions": self.conversions,
            "snapshot_every_days": SNAPSHOT_DAYS,
            "snapshots": [_iso(t) for t in self.snapshots],
            "split": _iso(self.split_ms),
            "learn": self.learn,
            "heldout": self.heldout,
            "candidates": self.candidates,
            "signals": [r.to_dict() for r in self.ranked[:top]],
            "proposal": {
                "yaml": self.proposal_yaml,
                "conditions": [condition_text(r.candidate, r.threshold) for r in self.proposal],
                "heldout_backtest": self.backtest,
            },
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _seen(history: History) -> set[str]:
    """The event names of a history's (deduplicated) records."""
    return {n for group in history.names.values() for n in group if n is not None}


def _conversions(seen: set[str], names: Sequence[str] | None) -> frozenset[str]:
    """The conversion events: the tracking spec's by default, or the names given (each must be in the
    history). Without one conversion in the history there is nothing to learn: that is an error too."""
    if not names:
        default = TrackingSpec().conversions
        if not default & seen:
            raise UsageError(
                f"no conversion event ({', '.join(sorted(default))}) in the history: nothing to learn from; "
                "name your conversion events with --conversions"
            )
        return default
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise UsageError("--conversions: give at least one event name")
    unknown = [n for n in wanted if n not in seen]
    if unknown:
        raise UsageError(
            "--conversions: no such event in the history: " + ", ".join(repr(n) for n in unknown)
            + " (event names are case-sensitive)"
        )
    return frozenset(wanted)


def run_discover(
    paths: Sequence[str | Path],
    *,
    conversions: Sequence[str] | None = None,
    window_days: float = 30,
    now_s: float | None = None,
    learn_share: float = LEARN_SHARE,
    partitions: int | None = 1,
) -> DiscoverResult:
    """Mine, rank and validate candidate signals of a history; propose a definition and backtest it.
    `partitions` as in `pqlflow.analysis.partitions.run_backtest_partitioned` (1: in memory; None: from
    the files' sizes): a partitioned run holds one partition's records at a time, with the same result."""
    if not window_days > 0 or not math.isfinite(window_days):
        raise UsageError(f"--window {window_days:g}: must be a positive number of days")
    n = choose_partitions(paths) if partitions is None else partitions
    if n > 1:
        return _run_partitioned(paths, n, conversions, window_days, now_s, learn_share)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    history = decode_history(paths, now_s=now_s)
    reason = no_valid_event(history)
    if reason is not None:
        raise UsageError(reason)
    timings["decode"] = time.perf_counter() - started
    conv = _conversions(_seen(history), conversions)
    _snapshots(history, window_days)
    mark = time.perf_counter()
    cardinality: dict[tuple[str, str], set[Any]] = {}
    with gc_paused():
        accounts = [
            account_columns(a, recs, history.days[a], conv, cardinality)
            for a, recs in history.groups.items()
        ]
    timings["columns"] = time.perf_counter() - mark

    def heldout(text: str, keep: set[str]) -> dict[str, Any]:
        return _backtest_heldout(history, text, keep, conv, window_days)

    return _discover(history, accounts, cardinality, conv, window_days, learn_share, heldout, timings, started)


def _snapshots(history: History, window_days: float) -> list[int]:
    """The snapshot times: every SNAPSHOT_DAYS from the history's first day, each with its whole window
    inside the history (an error when there is none)."""
    window_ms = int(window_days * DAY_MS)
    assert history.start_ms is not None and history.end_ms is not None
    first_day = history.start_ms // DAY_MS
    snapshots = [
        (first_day + k * SNAPSHOT_DAYS) * DAY_MS
        for k in range(1, 10_000)
        if (first_day + k * SNAPSHOT_DAYS) * DAY_MS + window_ms <= history.end_ms
    ]
    span = (history.end_ms - history.start_ms) / DAY_MS
    if not snapshots:
        raise UsageError(
            f"--window {window_days:g}: the history spans {span:.1f} days; discover needs at least "
            f"{SNAPSHOT_DAYS} days before a window of {window_days:g} days (try a shorter --window)"
        )
    return snapshots


def _discover(
    history: History,
    accounts: list[AccountColumns],
    cardinality: dict[tuple[str, str], set[Any]],
    conv: frozenset[str],
    window_days: float,
    learn_share: float,
    heldout: Callable[[str, set[str]], dict[str, Any]],
    timings: dict[str, float],
    started: float,
) -> DiscoverResult:
    """Everything after the per-account columns: snapshots, the split, ranking, the proposal and its
    backtest on the held-out accounts (`heldout(definition text, accounts)`)."""
    standard = bundled_default()  # its exclusions are the standard ones
    window_ms = int(window_days * DAY_MS)
    snapshots = _snapshots(history, window_days)
    mark = time.perf_counter()
    accounts = [a for a in accounts if a.first_ms < snapshots[-1]]
    accounts.sort(key=lambda a: (a.first_ms, a.id))
    if not accounts:
        raise UsageError("no account was active before the last snapshot: nothing to learn from")
    if len(accounts) < 2:
        raise UsageError("only one account was active before the last snapshot: nothing to compare")
    cut = max(1, min(len(accounts) - 1, int(len(accounts) * learn_share)))
    split_ms = accounts[cut].first_ms  # first seen at or after it: held out (ties by account id)
    timings["columns"] += time.perf_counter() - mark
    mark = time.perf_counter()
    candidates = catalog(accounts, cardinality, conv, standard.exclusions.paying)
    rows = snapshot_rows(accounts, snapshots, window_ms, cut, standard.exclusions, candidates)
    timings["snapshots"] = time.perf_counter() - mark
    mark = time.perf_counter()
    ranked_all = rank(candidates, rows)
    best: dict[str, Ranked] = {}
    for r in ranked_all:
        if r.candidate.base not in best or r.score > best[r.candidate.base].score:
            best[r.candidate.base] = r
    ranked = _distinct(sorted(best.values(), key=lambda r: (-r.score, r.candidate.key)))
    timings["rank"] = time.perf_counter() - mark
    learn_rows = [i for i, t in enumerate(rows.test) if not t]
    test_rows = [i for i, t in enumerate(rows.test) if t]
    learn_stats = {
        "accounts": len({rows.account[i] for i in learn_rows}), "snapshots": len(learn_rows),
        "converting_snapshots": sum(rows.label[i] for i in learn_rows),
    }
    test_stats = {
        "accounts": len({rows.account[i] for i in test_rows}), "snapshots": len(test_rows),
        "converting_snapshots": sum(rows.label[i] for i in test_rows),
    }
    mark = time.perf_counter()
    chosen, text = propose(ranked, rows, window_days)
    heldout_accounts = {a.id for a in accounts[cut:]}
    backtest = heldout(text, heldout_accounts) if chosen else None
    timings["propose_and_backtest"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return DiscoverResult(
        history, window_days, sorted(conv), split_ms, snapshots, learn_stats, test_stats, len(candidates),
        ranked, text, chosen, backtest, timings, sorted(heldout_accounts),
    )


def _run_partitioned(
    paths: Sequence[str | Path],
    n: int,
    conversions: Sequence[str] | None,
    window_days: float,
    now_s: float | None,
    learn_share: float,
) -> DiscoverResult:
    """`run_discover` on a history spilled into n partitions of accounts: only the per-account columns of
    every account are in memory at once, each partition's records in turn."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with gc_paused(), SpilledHistory(paths, n, now_s=now_s) as spilled:
        history = spilled.totals
        if not spilled.valid:
            raise UsageError(no_valid_event(history) or "no valid event")
        timings["decode"] = time.perf_counter() - started
        read_names = spilled.spill.event_names  # duplicates included: the history's, unless a dropped copy
        try:  # had a name of its own; then the exact names, from the partitions, decide the error
            conv = _conversions(read_names, conversions)
        except UsageError:
            exact: set[str] = set()
            for part, _ in spilled.parts():
                exact |= _seen(part)
                del part  # before the next partition is loaded
            conv = _conversions(exact, conversions)
        mark = time.perf_counter()
        cardinality: dict[tuple[str, str], set[Any]] = {}
        accounts: list[AccountColumns] = []
        seen: set[str] = set()
        for part, _ in spilled.parts():
            seen |= _seen(part)
            accounts += [account_columns(a, recs, part.days[a], conv, cardinality)
                         for a, recs in part.groups.items()]
            del part  # before the next partition is loaded
        if seen != read_names:
            conv = _conversions(seen, conversions)  # the same conversions, or the in-memory run's error
        timings["columns"] = time.perf_counter() - mark

        def heldout(text: str, keep: set[str]) -> dict[str, Any]:
            defn = parse_definition(text, "proposed.yaml")
            run = spilled.run([(defn, "proposed.yaml", TrackingSpec(conversions=conv))], keep)[0]
            return metrics(run, window_days, history.end_ms)

        return _discover(history, accounts, cardinality, conv, window_days, learn_share, heldout, timings,
                         started)


def _distinct(ranked: list[Ranked]) -> list[Ranked]:
    """Without signals that flag exactly the same snapshots as a better-ranked one (Pricing pages by
    `name` and by `path`, say): one line per behaviour."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in ranked:
        same = (r.learn_with, r.learn_hits, r.test_with, r.test_hits, r.rows)
        if same not in seen:
            seen.add(same)
            out.append(r)
    return out


def _backtest_heldout(history: History, text: str, accounts: Iterable[str], conv: frozenset[str],
                      window_days: float) -> dict[str, Any]:
    """The proposal through the backtest's own engine, on the held-out cohorts' events only."""
    keep = set(accounts)
    part = History(
        {a: g for a, g in history.groups.items() if a in keep}, history.files,
        names={a: v for a, v in history.names.items() if a in keep},
        days={a: v for a, v in history.days.items() if a in keep},
        users={a: v for a, v in history.users.items() if a in keep},
    )
    part.count = sum(len(g) for g in part.groups.values())
    defn = parse_definition(text, "proposed.yaml")
    run = run_definition(part, defn, "proposed.yaml", TrackingSpec(conversions=conv))
    return metrics(run, window_days, history.end_ms)
