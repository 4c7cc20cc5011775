"""`pqlflow discover` finds the behaviours a sample history was built to reward, never learns from what
happens after the moment it predicts, proposes a definition the project's loader accepts, scores it on the
held-out accounts with the backtest's engine, and reads JSON Lines and Parquet alike."""

from __future__ import annotations

import gzip
import html
import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pqlflow import cli
from pqlflow.analysis.backtest import run_backtest
from pqlflow.analysis.discover import run_discover
from pqlflow.analysis.discover_signals import lift_interval
from pqlflow.analysis.sample import Sample, SampleConfig
from pqlflow.qualify.definition import load_definition

START = date(2026, 1, 5)
HOUR = 3_600_000
NOW_S = datetime(2026, 6, 1, tzinfo=UTC).timestamp()  # after the history: no event is in the future


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """400 accounts over 60 days (~100k events), with the generator's hidden truth."""
    s = Sample(SampleConfig(seed=22, accounts=400, days=60, start=START, events=100_000))
    lines = list(s.lines())
    path = tmp_path_factory.mktemp("discover") / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, s.answers(), [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def result(sample):
    path, _, _ = sample
    return run_discover([path], now_s=NOW_S)


def _write(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(m, separators=(",", ":")) + "\n" for m in messages))
    return path


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def _planted(signal: dict[str, Any], milestones: list[dict[str, Any]]) -> str | None:
    """The milestone of the sample's answers a ranked signal measures, if any."""
    key = signal["key"]
    for m in milestones:
        for s in m["signals"]:
            if s.get("active_users") and key.startswith(("active_users", "velocity:active_users")):
                return m["milestone"]
            event = s.get("event")
            if event is None or event not in key:
                continue
            where = s.get("where")
            if where is None:
                return m["milestone"]
            ((prop, wanted),) = where.items()
            values = wanted if isinstance(wanted, list) else [wanted]
            if any(f"|{prop}={v}:" in key for v in values):
                return m["milestone"]
    return None


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    """The output without what may differ between two runs of the same history: timings and file names."""
    out = json.loads(json.dumps(data))
    out.pop("seconds")
    if out["proposal"]["heldout_backtest"]:
        out["proposal"]["heldout_backtest"]["work"].pop("seconds")
    out["history"].pop("files")
    for b in out["history"]["bad"]:
        b.pop("file")
    return out


# ---- the planted signals --------------------------------------------------------------------------


def test_the_top_signal_is_the_planted_paid_feature_use_and_every_planted_milestone_is_found(sample, result):
    # Given a sample history whose answers say which behaviours multiply the chance of converting
    _, answers, _ = sample
    milestones = answers["drivers"]["milestones"]
    signals = result.to_dict(top=1000)["signals"]

    # Then the best-ranked signal is the planted paid-tier feature use, and it holds on the held-out cohorts
    top = signals[0]
    assert _planted(top, milestones) == "paid_feature", top["condition"]
    assert top["lift_ci"][0] > 1.5
    assert top["heldout_lift"] > 1.5

    # And each planted milestone has a signal whose lift is confidently above 1 on the learn cohorts
    found = {_planted(s, milestones) for s in signals if s["lift_ci"][0] is not None and s["lift_ci"][0] > 1}
    assert {"paid_feature", "limit", "team", "collaboration"} <= found

    # And the proposal leads with a planted signal
    assert _planted({"key": result.proposal[0].candidate.key}, milestones) is not None


def test_a_behaviour_unrelated_to_converting_does_not_rank_near_the_top(sample, tmp_path):
    # Given the same history plus a few "Theme Changed" events per account, at random times between its
    # first event and the end of the history: as many for eager accounts as for idle ones
    path, _, messages = sample
    rng = random.Random(7)
    first: dict[str, dict[str, Any]] = {}
    for m in messages:
        first.setdefault(m.get("groupId") or m["context"]["groupId"], m)
    end = max(_ms(m["timestamp"]) for m in messages)
    extra = []
    for account, m in sorted(first.items()):
        begin = _ms(m["timestamp"])
        for k in range(rng.randint(0, 6)):
            extra.append({"type": "track", "messageId": f"noise-{account}-{k}",
                          "timestamp": _stamp(rng.randint(begin, end)), "userId": m["userId"],
                          "event": "Theme Changed", "properties": {"theme": rng.choice(["dark", "light"])},
                          "context": {"groupId": account}})
    noisy = _write(tmp_path / "noisy.jsonl", messages + extra)

    # When discover runs
    signals = run_discover([noisy], now_s=NOW_S).to_dict(top=1000)["signals"]

    # Then the noise is nowhere near the top, and never confidently above the base rate
    noise = [(i, s) for i, s in enumerate(signals) if "Theme Changed" in s["key"]]
    assert all(i >= 10 for i, _ in noise), [(i, s["condition"]) for i, s in noise]
    assert all(s["lift_ci"][0] is None or s["lift_ci"][0] < 1.3 for _, s in noise)


# ---- no look-ahead ------------------------------------------------------------------------------


def test_a_behaviour_that_happens_only_after_converting_never_ranks_and_changes_nothing(sample, result, tmp_path):
    # Given every conversion followed by an "Invoice Paid" an hour later and a "Billing Portal Opened" the
    # next day: a perfect predictor for anyone who may look past the moment predicted
    path, _, messages = sample
    extra = []
    for m in messages:
        if m["type"] == "track" and m["event"] == "Subscription Started":
            for name, delay in (("Invoice Paid", 3_600_000), ("Billing Portal Opened", 86_400_000)):
                extra.append({"type": "track", "messageId": f"{m['messageId']}-{name}",
                              "timestamp": _stamp(_ms(m["timestamp"]) + delay), "userId": m["userId"],
                              "event": name, "properties": {"amount": 12}, "context": m["context"]})
    assert len(extra) > 20
    after = _write(tmp_path / "after.jsonl", messages + extra)

    # When discover runs on it
    seen = run_discover([after], now_s=NOW_S)

    # Then neither behaviour appears among the signals at all, and the ranking is exactly the same
    keys = [s["key"] for s in seen.to_dict(top=1000)["signals"]]
    assert not [k for k in keys if "Invoice Paid" in k or "Billing Portal" in k]
    before = [(s["key"], s["threshold"], s["lift"]) for s in result.to_dict(top=1000)["signals"]]
    assert [(s["key"], s["threshold"], s["lift"]) for s in seen.to_dict(top=1000)["signals"]] == before
    assert seen.proposal_yaml == result.proposal_yaml


def test_a_snapshot_counts_only_events_strictly_before_it(tmp_path):
    # Given one account among others that signs in once at each snapshot's exact midnight and converts
    # within the window; everyone else signs in at noon and does not convert
    start = datetime(2026, 1, 5, tzinfo=UTC)
    messages: list[dict[str, Any]] = []

    def track(account: str, at: datetime, event: str, n: int) -> None:
        messages.append({"type": "track", "messageId": f"{account}-{n}-{event}", "timestamp": _stamp(int(
            at.timestamp() * 1000)), "userId": f"u-{account}", "event": event, "context": {"groupId": account}})

    for a in range(30):
        account = f"acct-{a:02d}"
        for d in range(0, 60):
            track(account, start + timedelta(days=d, hours=12), "Signed In", d)
        if a < 12:  # the converters also do "Midnight Job" at 00:00:00.000 on snapshot days only
            for d in range(7, 60, 7):
                track(account, start + timedelta(days=d), "Midnight Job", d)
            track(account, start + timedelta(days=36, hours=13), "Subscription Started", 99)
    history = _write(tmp_path / "h.jsonl", messages)

    # When discover runs (snapshots at midnight of days 7, 14, 21 and 28)
    data = run_discover([history], now_s=NOW_S).to_dict(top=1000)
    job = next(s for s in data["signals"] if s["key"].startswith("count:Midnight Job"))

    # Then the job at the very moment of a snapshot is not counted in it: of the 12 converters' 4 learn
    # snapshots each (the first 18 accounts learn), the day-7 one has no job before it, so 3 × 12 have one
    assert data["learn"] == {"accounts": 18, "snapshots": 72, "converting_snapshots": 48}
    assert job["threshold"] == 1
    assert (job["learn_with"], job["learn_converted"]) == (36, 36)


# ---- the proposal and its held-out backtest --------------------------------------------------------


def test_the_proposal_loads_as_a_definition_without_warnings_and_is_scored_on_the_held_out_accounts(
    sample, result, tmp_path
):
    # Given the proposal written to a file
    path, _, messages = sample
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(result.proposal_yaml)

    # Then the project's loader accepts it with no warning (no trial-start-alone qualification), with the
    # standard exclusions
    defn = load_definition(proposed)
    assert defn.warnings == []
    assert defn.exclusions.converted and defn.exclusions.paying == {"plan": ["pro", "business", "enterprise"]}
    assert result.proposal and result.backtest is not None

    # And its held-out score is what `pqlflow backtest` gives on exactly the held-out accounts' events
    held = set(result.heldout_accounts)
    assert held and len(held) < len({m.get("context", {}).get("groupId") or m.get("groupId") for m in messages})
    only = [m for m in messages if (m.get("groupId") or m.get("context", {}).get("groupId")) in held]
    part = _write(tmp_path / "heldout.jsonl", only)
    ref = run_backtest([part], [(defn, str(proposed))], now_s=NOW_S).to_dict()["definitions"][0]
    for key in ("active", "converted", "pqls", "tp", "fp", "fn", "precision", "recall", "lift"):
        assert result.backtest[key] == ref[key], key
    assert result.backtest["pqls"] > 0 and result.backtest["lift"] > 1


def test_a_proposed_team_signal_is_guarded_against_sign_ups_alone():
    # Given a signal that three people signing up would meet by themselves
    from pqlflow.analysis.discover_proposal import build
    from pqlflow.analysis.discover_signals import Candidate, Ranked, Rows
    from pqlflow.qualify.definition import parse_definition

    team = Candidate("active_users:14d", "active_users", "active_users", "active users, last 14 days",
                     {"active_users": {"last_days": 14}})
    ranked = Ranked(team, 3, 0.2, 0.5, 0.1, 3.0, 2.0, 4.0, 1.0, 50, 25, 10, 5, 0.5, 0.5, 3.0, frozenset())
    rows = Rows(values={"count:Signed In:lifetime": {0: 5, 1: 2}, "count:Trial Started:lifetime": {0: 1, 1: 1, 2: 1}})

    # When it is proposed
    text = build([ranked], rows, 30)

    # Then it only qualifies together with real use of the product, and the loader has no warning
    defn = parse_definition(text, "p.yaml")
    assert defn.warnings == []
    assert "Signed In" in text and "all:" in text


# ---- inputs ------------------------------------------------------------------------------------------


def test_json_lines_gzip_and_parquet_of_the_same_history_give_identical_output(sample, result, tmp_path):
    # Given the history as gzip JSON Lines and as Parquet (one row per message, objects as JSON)
    path, _, _ = sample
    gz = tmp_path / "history.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    parquet = tmp_path / "history.parquet"
    columns = {c: "VARCHAR" for c in ("type", "messageId", "timestamp", "userId", "event", "name", "groupId")}
    columns |= {c: "JSON" for c in ("properties", "traits", "context")}
    spec = "{" + ", ".join(f"'{k}': '{t}'" for k, t in columns.items()) + "}"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_json('{path}', columns = {spec}, format = 'newline_delimited')) "
                f"TO '{parquet}' (FORMAT parquet)")
    con.close()

    # When discover reads each
    expected = _stable(result.to_dict(top=1000))
    for other in (gz, parquet):
        got = _stable(run_discover([other], now_s=NOW_S).to_dict(top=1000))
        # Then the output is identical
        assert got == expected, other.name


def test_bad_lines_are_reported_with_their_line_and_the_rest_is_used(sample, result, tmp_path):
    path, _, _ = sample
    damaged = tmp_path / "damaged.jsonl"
    lines = path.read_text().splitlines()
    damaged.write_text("\n".join(lines[:5] + ["{not json", '{"type":"track"}'] + lines[5:]) + "\n")

    data = run_discover([damaged], now_s=NOW_S).to_dict()

    assert data["history"]["bad_lines"] == 2
    assert [b["line"] for b in data["history"]["bad"]] == [6, 7]
    assert data["signals"][0]["key"] == result.to_dict()["signals"][0]["key"]


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: (d / "blob.bin").write_bytes(bytes(range(256)) * 40) and d / "blob.bin", [],
         "no valid event"),
        (lambda d: (d / "x.parquet").write_bytes(b"PAR1" + b"\0" * 64) and d / "x.parquet", [],
         "x.parquet: not a readable Parquet file"),
        (lambda d: d / "missing.jsonl", [], "missing.jsonl: no such file"),
        (lambda d: _write(d / "free.jsonl", [
            {"type": "track", "messageId": f"m{i}", "timestamp": _stamp(_ms("2026-01-05T10:00:00.000Z") + i * HOUR),
             "userId": f"u{i % 7}", "event": "Signed In"} for i in range(24 * 50)]), [],
         "no conversion event (Order Completed, Plan Upgraded, Subscription Started) in the history"),
        (None, ["--conversions", "Plan Bought,Subscription Started"], "'Plan Bought'"),
        (None, ["--window", "90"], "--window 90"),
        (None, ["--window", "0"], "--window 0"),
    ],
)
def test_bad_input_exits_2_with_the_reason(sample, tmp_path, capsys, make, args, message):
    target = make(tmp_path) if make is not None else sample[0]
    assert cli.main(["discover", str(target), *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_a_parquet_file_without_a_column_it_needs_names_the_file_and_the_column(tmp_path, capsys):
    parquet = tmp_path / "events.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 'track' AS type, 'm1' AS messageId, 'u1' AS userId) TO '{parquet}' (FORMAT parquet)")
    con.close()
    assert cli.main(["discover", str(parquet)]) == 2
    err = capsys.readouterr().err
    assert "events.parquet" in err and "'timestamp'" in err


# ---- the command ---------------------------------------------------------------------------------


def test_the_command_prints_the_table_and_writes_json_html_and_the_proposal(sample, result, tmp_path, capsys):
    path, _, _ = sample
    out = tmp_path / "disc"

    assert cli.main(["discover", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert cli.main(["discover", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)

    top = result.to_dict()["signals"][0]
    assert top["condition"] in text and "held-out precision" in text and "Proposed definition" in text
    written = json.loads((out / "discover.json").read_text())
    assert _stable(written) == _stable(printed)
    assert written["signals"][0]["condition"] == top["condition"]
    page = (out / "discover.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert html.escape(top["condition"]) in page and "Proposed definition" in page
    assert load_definition(out / "proposed.yaml").warnings == []
    assert f"pqlflow backtest {path} --definition {out / 'proposed.yaml'}" in text


def test_lift_interval_contains_the_lift_and_narrows_with_more_data():
    lift, low, high = lift_interval(30, 100, 100, 1000)
    assert lift == pytest.approx(3.0)
    assert low < 3.0 < high
    _, low10, high10 = lift_interval(300, 1000, 1000, 10000)
    assert low < low10 < high10 < high
    _, wide_low, wide_high = lift_interval(30, 100, 100, 1000, deff=4)
    assert wide_low < low and wide_high > high
    assert lift_interval(0, 0, 100, 1000) == (None, None, None)


def test_conversion_names_choose_the_label(sample):
    # Given conversions named on the command line: connecting an integration is the "conversion"
    path, _, _ = sample
    data = run_discover([path], conversions=["Integration Connected"], now_s=NOW_S).to_dict()
    assert data["conversions"] == ["Integration Connected"]
    assert all("Integration Connected" not in s["key"] for s in data["signals"])


def test_only_low_cardinality_property_values_become_signals(tmp_path):
    # Given sign-ins with a device (3 values) and a batch id (60 values, a new one each day); a third of the
    # accounts convert, and those sign in from the desktop app
    start = _ms("2026-01-05T09:00:00.000Z")
    messages: list[dict[str, Any]] = []
    for a in range(60):
        for d in range(60):
            device = "desktop" if a % 3 == 0 else ("ios", "web")[d % 2]
            messages.append({"type": "track", "messageId": f"{a}-{d}", "timestamp": _stamp(start + d * 86_400_000),
                             "userId": f"u{a}", "event": "Signed In", "context": {"groupId": f"acct-{a:02d}"},
                             "properties": {"device": device, "request_id": f"req-{d}"}})
        if a % 3 == 0:
            messages.append({"type": "track", "messageId": f"{a}-conv", "userId": f"u{a}",
                             "timestamp": _stamp(start + 40 * 86_400_000), "event": "Subscription Started",
                             "context": {"groupId": f"acct-{a:02d}"}})

    # When discover runs
    data = run_discover([_write(tmp_path / "h.jsonl", messages)], now_s=NOW_S).to_dict()

    # Then the desktop app is a signal with a confident lift, and no request id ever is
    desktop = [s for s in data["signals"] if s["key"].startswith("count:Signed In|device=desktop:")]
    assert desktop and desktop[0]["lift_ci"][0] > 1.5
    assert not [s for s in data["signals"] if "request_id" in s["key"]]
