"""`pqlflow backtest`: exact metrics on a tiny hand-computed history, sweeps, comparison, bad input, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pqlflow import cli
from pqlflow.analysis.backtest import metrics, run_backtest
from pqlflow.qualify.definition import parse_definition

MONDAY = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # day 0 of the tiny history
TINY = """
name: tiny
version: 1
signals:
  messages: {count: Message Sent}
qualify: {signal: messages, gte: %s}
"""


def at(day: int, minute: int = 0) -> str:
    return (
        (MONDAY + timedelta(days=day, minutes=minute))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def track(account: str, name: str, day: int, minute: int = 0, mid: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": mid or f"{account}-{name}-{day}-{minute}",
        "timestamp": at(day, minute),
        "userId": f"{account}-user",
        "event": name,
        "context": {"groupId": account},
    }


def messages(account: str, n: int, day: int) -> list[dict[str, Any]]:
    return [track(account, "Message Sent", day, minute) for minute in range(n)]


def converts(account: str, day: int, minute: int = 2) -> dict[str, Any]:
    return track(account, "Subscription Started", day, minute)


def tiny_history() -> list[dict[str, Any]]:
    """Eight accounts; with `messages ≥ 3`, A B C qualify; A converts 10 days later, B 39 days later
    (outside the 30-day window), C never; D converts without qualifying; E F G H do neither."""
    return [
        *messages("A", 3, 0),
        converts("A", 10),
        *messages("B", 3, 1),
        converts("B", 40),
        *messages("C", 3, 2),
        *messages("D", 1, 0),
        converts("D", 5),
        *messages("E", 2, 0),
        *messages("F", 2, 3),
        *messages("G", 1, 4),
        *messages("H", 1, 6),
    ]


def write(path: Path, events: list[dict[str, Any]], extra: list[str] = ()) -> Path:
    path.write_text("\n".join([json.dumps(e) for e in events] + list(extra)) + "\n")
    return path


def backtest(paths: list[Path], *thresholds: int, window: float = 30) -> dict[str, Any]:
    defs = [(parse_definition(TINY % t, f"tiny-{t}.yaml"), f"tiny-{t}.yaml") for t in thresholds]
    return run_backtest(paths, defs, window_days=window).to_dict()


def test_metrics_on_a_hand_computed_history(tmp_path: Path) -> None:
    # Given the tiny history
    path = write(tmp_path / "h.jsonl", tiny_history())
    # When it is backtested with messages ≥ 3
    m = backtest([path], 3)["definitions"][0]
    # Then every number is the hand-computed one
    assert (m["active"], m["pqls"], m["converted"]) == (8, 3, 3)
    # B converted 39 days after qualifying, outside the 30-day window: a miss for precision and recall both
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 2, 4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["base_rate"] == pytest.approx(3 / 8)
    assert m["lift"] == pytest.approx((1 / 3) / (3 / 8))
    assert m["pql_conversion_rate"] == pytest.approx(1 / 3)
    assert m["non_pql_conversion_rate"] == pytest.approx(1 / 5)
    # A: qualified day 0 at 10:02, converted day 10 at 10:02 → 10 days; B: day 1 → day 40 → 39 days
    ttc = m["time_to_convert"]
    assert ttc["n"] == 2 and ttc["median_days"] == pytest.approx(24.5)
    assert {b["label"]: b["count"] for b in ttc["buckets"]} == {
        "< 1 d": 0,
        "1–3 d": 0,
        "3–7 d": 0,
        "1–2 wk": 1,
        "2–4 wk": 0,
        "4–8 wk": 1,
        "8+ wk": 0,
    }
    week = {w["week"]: w for w in m["weekly"]}
    assert week["2026-01-05"]["pqls"] == 3 and week["2026-01-05"]["pqls_converted"] == 1
    assert week["2026-01-12"]["converted"] == 1  # A on day 10 (D's day 5 is in the first week)
    (row,) = m["signals"]
    assert row["label"] == "messages ≥ 3"
    assert (row["with"], row["with_converted"], row["without"], row["without_converted"]) == (3, 2, 5, 1)
    assert row["coverage"] == pytest.approx(3 / 8)
    assert row["lift"] == pytest.approx((2 / 3) / (3 / 8))
    assert m["reasons"][0]["count"] == 3


def test_window_decides_which_pqls_count_as_converted(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    # When the window is 40 days, B's conversion on day 40 (39 days after qualifying) counts
    m = backtest([path], 3, window=40)["definitions"][0]
    assert (m["tp"], m["fp"]) == (2, 1)


def test_sweep_volume_never_rises_with_the_threshold(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    m = backtest([path], 3)["definitions"][0]
    (sweep,) = m["sweeps"]
    points = {p["threshold"]: p for p in sweep["points"]}
    # Then the current threshold's row is the run itself
    assert points[3]["pqls"] == 3 and points[3]["current"] and points[3]["converted"] == 1
    volumes = [p["pqls"] for p in sweep["points"]]
    assert volumes == sorted(volumes, reverse=True)


def test_sweep_at_given_thresholds_matches_running_each_threshold(tmp_path: Path) -> None:
    # Given the tiny history, swept from the run at threshold 3
    path = write(tmp_path / "h.jsonl", tiny_history())
    defs = [(parse_definition(TINY % 3), "t3")]
    result = run_backtest([path], defs)
    from pqlflow.analysis.backtest import sweep

    swept = sweep(result.runs[0], 0, 30 * 86_400_000, thresholds=[1, 2, 3, 4])["points"]
    # Then each row equals a real run at that threshold (and D qualifies at 1, before converting)
    for point in swept:
        real = backtest([path], int(point["threshold"]))["definitions"][0]
        assert (point["pqls"], point["converted"]) == (real["pqls"], real["tp"]), point
        # and recall is over the same three converters at every threshold (B converts late at every one)
        assert point["recall"] == pytest.approx(real["recall"]) == pytest.approx(point["converted"] / 3), point
    assert [p["pqls"] for p in swept] == [8, 5, 3, 0]


def test_comparison_lines_up_two_definitions(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    # When messages ≥ 3 is compared with messages ≥ 2
    data = backtest([path], 3, 2)
    a, b = data["definitions"]
    assert (a["pqls"], b["pqls"]) == (3, 5)
    groups = {g["group"]: (g["accounts"], g["converted"]) for g in data["comparison"]["groups"]}
    # Then A B C are qualified by both, E F only by the second, D G H by neither
    assert groups == {"both": (3, 2), "only_a": (0, 0), "only_b": (2, 0), "neither": (3, 1)}
    assert data["comparison"]["same_time"] == 0 and data["comparison"]["b_earlier"] == 3


def test_duplicates_out_of_order_envelopes_and_bad_lines(tmp_path: Path) -> None:
    # Given the history shuffled, with a duplicate, an EventBridge envelope and two bad lines
    events = list(reversed(tiny_history()))
    envelope = {
        "version": "0",
        "detail-type": "track",
        "source": "aws.partner/segment.com/x",
        "detail": track("H", "Message Sent", 7),
    }
    path = write(
        tmp_path / "h.jsonl",
        events + [events[0]],
        ['{"type": "track",', json.dumps(envelope), json.dumps({"type": "track", "messageId": "x"})],
    )
    # When it is backtested
    data = backtest([path], 3)
    h = data["history"]
    n = len(events)
    # Then the duplicate counts once, bad lines are listed with their line numbers, and nothing else changes
    assert h["duplicates"] == 1
    assert [b["line"] for b in h["bad"]] == [n + 2, n + 4]
    assert "not valid JSON" in h["bad"][0]["reason"] and h["bad"][1]["reason"].startswith(
        "timestamp: missing"
    )
    m = data["definitions"][0]
    assert (m["pqls"], m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 2, 2, 4)
    assert h["events"] == n + 1


def test_a_message_id_counts_once_per_account_as_ingest_counts_it(tmp_path: Path) -> None:
    # Given two accounts whose events reuse the same messageIds (two sources numbering from 1), and
    # one of them delivered twice
    a = [track("A", "Message Sent", 0, minute, mid=f"m{minute}") for minute in range(3)]
    b = [track("B", "Message Sent", 0, minute, mid=f"m{minute}") for minute in range(3)]
    path = write(tmp_path / "h.jsonl", a + b + [b[1]])
    # When it is backtested with messages ≥ 3
    data = backtest([path], 3)
    # Then each account keeps its three messages (both qualify); only the redelivery is a duplicate
    assert data["history"]["duplicates"] == 1
    assert data["definitions"][0]["pqls"] == 2


def test_two_files_are_one_history(tmp_path: Path) -> None:
    events = tiny_history()
    first = write(tmp_path / "a.jsonl", events[:7])
    second = write(tmp_path / "b.jsonl", events[7:], ["not json"])
    data = backtest([first, second], 3)
    assert data["definitions"][0]["pqls"] == 3
    assert [(Path(b["file"]).name, b["line"]) for b in data["history"]["bad"]] == [
        ("b.jsonl", len(events) - 6)
    ]


def test_cli_text_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    definition = tmp_path / "tiny.yaml"
    definition.write_text(TINY % 3)
    out = tmp_path / "report"
    # When the CLI runs with --out
    assert cli.main(["backtest", str(path), "--definition", str(definition), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # Then the text report shows the run's numbers and the speed next to bare decoding
    assert "precision" in text and "33.3%" in text and "37.5%" in text  # precision and recall 1/3, base rate 3/8
    assert "bare JSON decoding" in text
    assert (out / "report.html").is_file() and json.loads((out / "report.json").read_text())["definitions"]
    # And --json is machine-readable
    assert cli.main(["backtest", str(path), "--definition", str(definition), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["definitions"][0]["tp"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jsonl", "--definition", "{defn}"], "missing.jsonl: no such file"),
        (["{events}", "--definition", "nope.yaml"], "nope.yaml: no such file"),
        (["{events}", "--definition", "{defn}", "--window", "0"], "--window 0"),
        (["{dir}", "--definition", "{defn}"], "a directory with no *.parquet file under it"),
    ],
)
def test_cli_errors_exit_2_and_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    events = write(tmp_path / "h.jsonl", tiny_history())
    definition = tmp_path / "tiny.yaml"
    definition.write_text(TINY % 3)
    argv = [a.format(defn=definition, events=events, dir=tmp_path) for a in args]
    if argv[0] == "missing.jsonl":
        argv[0] = str(tmp_path / "missing.jsonl")
    assert cli.main(["backtest", *argv]) == 2
    assert message in capsys.readouterr().err


def test_metrics_of_a_run_without_pqls(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    m = backtest([path], 100)["definitions"][0]
    assert m["pqls"] == 0 and m["precision"] is None and m["lift"] is None and m["recall"] == 0
    assert m["time_to_convert"]["median_days"] is None


def test_metrics_function_is_pure(tmp_path: Path) -> None:
    path = write(tmp_path / "h.jsonl", tiny_history())
    result = run_backtest([path], [(parse_definition(TINY % 3), "t")])
    assert metrics(result.runs[0]) == metrics(result.runs[0])
