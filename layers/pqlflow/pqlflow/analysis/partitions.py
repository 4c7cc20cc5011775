"""Histories larger than memory: the backtest run one partition of accounts at a time, with the same answers.

Subjects never interact in a backtest: an account's events (its identify and group calls included — every
record carries the account it is filed under, `RECORD`'s `account_id`) are deduplicated, sorted and folded
on their own, and a `unit: user` subject is a user inside one account. So one streaming pass reads and
validates every line exactly as the in-memory engine does (`backtest.read_records`, the same decoder, so
bad lines keep their file, line number and order) and writes each valid record, with marshal, into one of
N spill files chosen by a stable hash (CRC-32) of its account; then each spill file is loaded alone,
arranged (`backtest.arrange`: the same dedupe and stable sort) and run through every definition with
`backtest.run_definition`, and the per-partition runs are merged. The merge restores the in-memory
engine's order — subjects (with their transitions and bad gauge values) by the file line where their
account first appears, which is the order of the in-memory history's accounts — so every list and every
metric comes out identical, not merely equal as a set (tests/unit/analysis/test_partitioned.py).

Spill files live in a temporary directory (under $TMPDIR) that is removed when the run ends, fails or is
interrupted. Peak memory is that of the largest partition plus the subjects' outcomes.
"""

from __future__ import annotations

import marshal
import math
import signal
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from pqlflow.analysis.backtest import (
    HISTORY_RETENTION_DAYS,
    BacktestResult,
    BadLine,
    DefinitionRun,
    FastDecoder,
    History,
    SubjectOutcome,
    arrange,
    check_window,
    decode_only,
    gc_paused,
    properties_read,
    qualified_accounts,
    read_records,
    run_backtest,
    run_definition,
)
from pqlflow.analysis.history_files import expand, kind_of
from pqlflow.analysis.worth import MoneyEvent, customer_worth, money_of_records
from pqlflow.ingest.usage import TrackingSpec
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.language import Definition

IN_MEMORY_EVENTS = 2_000_000  # up to this many (estimated) events, `auto` keeps the history in memory
EVENTS_PER_PARTITION = 1_000_000  # `auto` aims at about this many events per partition
MAX_PARTITIONS = 4_096
# Bytes per event, to estimate a history's size before reading it: a `pqlflow sample` JSON line is ~190
# bytes; gzip and Parquet are counted as if they held 12× their size in JSON Lines (more than they usually
# compress), so an estimate errs towards more, smaller partitions.
JSON_BYTES_PER_EVENT = 190
COMPRESSED_BYTES_PER_EVENT = JSON_BYTES_PER_EVENT / 12


def estimate_events(paths: Sequence[str | Path]) -> int:
    """About how many events the files hold, from their sizes (nothing is read but the first bytes)."""
    total = 0.0
    for path in expand(paths):
        size = path.stat().st_size
        total += size / (JSON_BYTES_PER_EVENT if kind_of(path) == "jsonl" else COMPRESSED_BYTES_PER_EVENT)
    return int(total)


def choose_partitions(paths: Sequence[str | Path]) -> int:
    """1 (in memory) for a history of up to `IN_MEMORY_EVENTS` estimated events, else enough partitions for
    about `EVENTS_PER_PARTITION` events each."""
    events = estimate_events(paths)
    if events <= IN_MEMORY_EVENTS:
        return 1
    return min(MAX_PARTITIONS, math.ceil(events / EVENTS_PER_PARTITION))


def parse_partitions(text: str) -> int | None:
    """`--partitions`: `auto` (None) or a whole number from 1 (in memory) to MAX_PARTITIONS."""
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PARTITIONS:
        raise UsageError(
            f"--partitions {text}: must be 'auto' or a whole number from 1 (in memory) to {MAX_PARTITIONS:,}"
        )
    return n


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


_NAME = itemgetter(6)  # a record's event name (`RECORD`)


class Spill:
    """N spill files of records, each account's records in one of them, in file order."""

    def __init__(self, directory: Path, n: int) -> None:
        self.n = n
        self.paths = [directory / f"part-{i:04d}.marshal" for i in range(n)]
        self.files: list[IO[bytes]] = []
        self.buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
        self.sizes = [0] * n  # records written to each
        self.names: set[str | None] = set()  # the records' event names (None: identify, group)
        for path in self.paths:
            self.files.append(open(path, "wb", buffering=1 << 20))  # noqa: SIM115 - closed by close()

    def buffer_of(self, account: str) -> list[tuple[Any, ...]]:
        """The buffer an account's records go to (the same for every run: CRC-32 is not salted per process)."""
        return self.buffers[zlib.crc32(account.encode("utf-8", "surrogatepass")) % self.n]

    def flush(self) -> None:
        for i, buffer in enumerate(self.buffers):
            if buffer:
                block = marshal.dumps(buffer)  # length-prefixed: marshal.load on a file reads it in tiny pieces
                self.files[i].write(len(block).to_bytes(8, "little"))
                self.files[i].write(block)
                self.sizes[i] += len(buffer)
                self.names.update(map(_NAME, buffer))
                buffer.clear()  # in place: the accounts' entries point at this list

    @property
    def event_names(self) -> set[str]:
        """The event names of every record written, duplicates included."""
        return {n for n in self.names if n is not None}

    def close(self) -> None:
        for f in self.files:
            f.close()

    def load(self, i: int) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, int]]:
        """Partition i's records grouped by account in order of first appearance, and each account's first
        line (the global index of its first record in file order)."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        first: dict[str, int] = {}
        with open(self.paths[i], "rb", buffering=1 << 20) as f:
            while head := f.read(8):
                block = f.read(int.from_bytes(head, "little"))
                for rec in marshal.loads(block):  # noqa: S302 - our own file, in a directory only we can read
                    group = groups.get(rec[4])
                    if group is None:
                        groups[rec[4]] = [rec]
                        first[rec[4]] = rec[1]
                    else:
                        group.append(rec)
        return groups, first


def run_backtest_partitioned(
    paths: Sequence[str | Path],
    definitions: Sequence[tuple[Definition, str]],
    *,
    partitions: int | None = None,
    window_days: float = 30,
    measure_decode: bool = False,
    now_s: float | None = None,
) -> BacktestResult:
    """`backtest.run_backtest` for a history of any size: in memory with `partitions` 1, in that many
    partitions of accounts when more, chosen from the files' sizes when None (`choose_partitions`). A
    partitioned result's `history.groups` is empty (the records were never all in memory)."""
    n = choose_partitions(paths) if partitions is None else partitions
    if n == 1:
        return run_backtest(paths, definitions, window_days=window_days, measure_decode=measure_decode, now_s=now_s)
    check_window(window_days)
    bare = decode_only(paths) if measure_decode else None
    started = time.perf_counter()
    cpu = time.process_time()
    keep = properties_read(d for d, _ in definitions)
    history, runs = backtest_partitioned(paths, definitions, n, now_s=now_s, keep_properties=keep)
    return BacktestResult(history, runs, window_days, bare, time.perf_counter() - started, time.process_time() - cpu)


@dataclass
class _Subject:
    """One subject's outcome with what belongs to it in its partition's run, for the merge."""

    first_line: int
    outcome: SubjectOutcome
    transitions: list[tuple[str, int]]
    bad: list[BadLine] = field(default_factory=list)


class SpilledHistory:
    """A history read once and spilled by account into `n` partitions, to be read back one partition at a
    time, as often as needed (`parts`, `run`). Use it as a context manager: the spill directory is removed
    when the block ends, normally or not.

    After reading, `totals` holds the files, lines and bad lines; `count`, `duplicates`, `start_ms` and
    `end_ms` are filled in by the first complete pass of `parts` (they need each account deduplicated)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        n: int,
        *,
        now_s: float | None = None,
        keep_properties: frozenset[str] | None = None,
        retention_days: int = HISTORY_RETENTION_DAYS,
    ) -> None:
        self.n = n
        self.paths = paths
        self.decoder = FastDecoder(clock.now() if now_s is None else now_s, retention_days, keep_properties)
        self._scratch = tempfile.TemporaryDirectory(prefix="pqlflow-backtest-")
        try:
            self.spill = Spill(Path(self._scratch.name), n)
        except BaseException:
            self._scratch.cleanup()
            raise
        self.totals = History({}, [])
        self.sort_cpu_seconds = 0.0  # arranging the partitions (CPU)
        self.decode_seconds = 0.0  # the reading pass, and loading + arranging the partitions (wall)
        self._counted = False

    def __enter__(self) -> SpilledHistory:
        self._on_term = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (a `kill`, a CI timeout) would end the process without unwinding: no `finally`, and
            # gigabytes of spill files left in $TMPDIR. As SystemExit, it unwinds through __exit__.
            self._on_term = signal.signal(signal.SIGTERM, _exit_on_term) or signal.SIG_DFL
        started = time.perf_counter()
        try:
            routes: dict[str, list[tuple[Any, ...]]] = {}
            self.read = read_records(self.paths, self.decoder, routes, self.spill.buffer_of, self.spill.flush)
            self.spill.flush()
        except BaseException:
            self.spill.close()
            self.__exit__()
            raise
        self.spill.close()
        self.totals = History({}, self.read.files, lines=self.read.index - self.read.blank, bad=self.read.bad)
        self.decode_seconds = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        self._scratch.cleanup()
        if self._on_term is not None:
            signal.signal(signal.SIGTERM, self._on_term)
            self._on_term = None

    @property
    def valid(self) -> int:
        """Valid records read, duplicates included (0: no valid event at all)."""
        return sum(self.spill.sizes)

    def parts(self, accounts: set[str] | None = None) -> Iterator[tuple[History, dict[str, int]]]:
        """Each partition (only these accounts, if given) as an arranged History, with each account's first
        line; the first complete pass also counts the whole history's events, duplicates and time span."""
        counting = not self._counted and accounts is None
        totals = self.totals
        for i in range(self.n):
            wall = time.perf_counter()
            groups, first = self.spill.load(i)
            if accounts is not None:
                groups = {a: g for a, g in groups.items() if a in accounts}
            if not groups:
                continue
            cpu = time.process_time()
            part = arrange(groups, self.read)
            self.sort_cpu_seconds += time.process_time() - cpu
            self.decode_seconds += time.perf_counter() - wall
            if counting:
                totals.count += part.count
                totals.duplicates += part.duplicates
                if part.start_ms is not None and (totals.start_ms is None or part.start_ms < totals.start_ms):
                    totals.start_ms = part.start_ms
                if part.end_ms is not None and (totals.end_ms is None or part.end_ms > totals.end_ms):
                    totals.end_ms = part.end_ms
            yield part, first
            del groups, part
        self._counted = self._counted or counting

    def run(
        self,
        definitions: Sequence[tuple[Definition, str, TrackingSpec | None]],
        accounts: set[str] | None = None,
        worth: bool = False,
    ) -> list[DefinitionRun]:
        """Each definition's run over every partition (only these accounts, if given), merged into the
        in-memory engine's order: what `run_definition` gives on the whole history in memory (with `worth`,
        its customer-worth table too, from each partition's money events)."""
        subjects: list[list[_Subject]] = [[] for _ in definitions]
        runs: list[DefinitionRun | None] = [None] * len(definitions)
        money: list[tuple[dict[str, int], dict[str, list[MoneyEvent]]]] = [({}, {}) for _ in definitions]
        for part, first in self.parts(accounts):
            for j, (defn, source, spec) in enumerate(definitions):
                run = run_definition(part, defn, source, spec)
                subjects[j] += _split(run, part, first)
                runs[j] = _add(runs[j], run)
                if worth:
                    seen, events = money_of_records(part.groups, defn, defn.tracking_spec(spec))
                    money[j][0].update(seen)
                    money[j][1].update(events)
            del part, first  # before the next partition is loaded: one partition in memory, not two
        merged = []
        for j, (defn, source, spec) in enumerate(definitions):
            run = runs[j] or run_definition(History({}, self.read.files), defn, source, spec)  # no subject at all
            _restore_order(run, subjects[j])
            if worth:
                run.worth = customer_worth(money[j][0], qualified_accounts(run), money[j][1],
                                           self.totals.end_ms or 0)
            merged.append(run)
        return merged


def backtest_partitioned(
    paths: Sequence[str | Path],
    definitions: Sequence[tuple[Definition, str]],
    partitions: int,
    *,
    now_s: float | None = None,
    keep_properties: frozenset[str] | None = None,
    retention_days: int = HISTORY_RETENTION_DAYS,
) -> tuple[History, list[DefinitionRun]]:
    """The history's totals (a `History` without records: `groups` is empty) and each definition's run,
    identical to `decode_history` + `run_definition` on the whole history in memory."""
    with gc_paused(), SpilledHistory(paths, partitions, now_s=now_s, keep_properties=keep_properties,
                                     retention_days=retention_days) as spilled:
        runs = spilled.run([(defn, source, None) for defn, source in definitions], worth=True)
        totals = spilled.totals
        totals.decode_seconds = spilled.decode_seconds
        totals.sort_cpu_seconds = spilled.sort_cpu_seconds
    return totals, runs


def _split(run: DefinitionRun, part: History, first: dict[str, int]) -> list[_Subject]:
    """A partition's run, subject by subject: each with its transitions (they are appended in subject order,
    one per qualification, disqualification and conversion) and its bad gauge values."""
    out = []
    at = 0
    for s in run.subjects:
        n = s.qualifications + s.disqualifications + (s.converted_at_ms is not None)
        out.append(_Subject(first[s.account_id], s, run.transitions[at : at + n]))
        at += n
    if at != len(run.transitions):  # pragma: no cover - a transition kind the count above does not know
        raise AssertionError(f"{len(run.transitions)} transitions, {at} counted from the subjects")
    if run.bad:
        # A bad gauge value belongs to the subject whose records hold its line. A file given twice has two
        # starts; only one of its indexes can hold a record here (the other copy is a duplicate, dropped).
        def indexes(bad: BadLine) -> list[int]:
            return [start + bad.line - 1 for path, start in part.files if path == bad.file]

        wanted = {i for bad in run.bad for i in indexes(bad)}
        where = {rec[1]: (account, rec[5]) for account, records in part.groups.items()
                 for rec in records if rec[1] in wanted}
        by_subject = {(s.outcome.account_id, s.outcome.user_id): s for s in out}
        for bad in run.bad:  # in the partition's order, which is its subjects' order
            account, user = next(where[i] for i in indexes(bad) if i in where)
            subject = by_subject.get((account, None)) or by_subject[(account, user)]
            subject.bad.append(bad)
    return out


def _add(total: DefinitionRun | None, run: DefinitionRun) -> DefinitionRun:
    if total is None:
        return run
    total.folded += run.folded
    total.gated += run.gated
    total.decided += run.decided
    total.seconds += run.seconds
    return total


def _restore_order(run: DefinitionRun, subjects: list[_Subject]) -> None:
    """The subjects, transitions and bad gauge values of every partition in the in-memory engine's order:
    accounts by their first line in the files (stable: a `unit: user` account's subjects keep theirs)."""
    subjects.sort(key=lambda s: s.first_line)
    run.subjects = [s.outcome for s in subjects]
    run.transitions = [t for s in subjects for t in s.transitions]
    run.bad = [b for s in subjects for b in s.bad]
