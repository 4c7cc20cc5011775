"""`pqlflow sample`: a deterministic, valid, realistic synthetic history, and its delivery damage options."""

from __future__ import annotations

import json
import shlex
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pqlflow import cli
from pqlflow.analysis.sample import PLANS, REP_ROSTER, Sample, SampleConfig
from pqlflow.contracts.usage_events import Rejection, UsageEvent, parse_message
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError

REPO = Path(__file__).resolve().parents[3]
START = date(2026, 9, 1)


def _lines(**kw) -> list[str]:
    return list(Sample(SampleConfig(start=START, **kw)).lines())


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def history() -> tuple[list[str], dict]:
    sample = Sample(SampleConfig(seed=11, accounts=40, days=45, start=START))
    lines = list(sample.lines())
    return lines, sample.answers()


def test_same_seed_and_options_give_identical_bytes_and_another_seed_does_not():
    # Given two runs with the same seed and options, and one with another seed
    first = _lines(seed=5, accounts=15, days=20)
    second = _lines(seed=5, accounts=15, days=20)
    other = _lines(seed=6, accounts=15, days=20)

    # Then the same seed reproduces the file exactly; another seed gives another history
    assert first == second
    assert first != other


def test_every_line_is_a_valid_segment_message_at_its_own_time_and_belongs_to_an_account(history):
    lines, answers = history
    account_ids = {a["account_id"] for a in answers["accounts"]}
    parsed: list[UsageEvent] = []

    # When each line goes through the event contract with "now" = its own timestamp
    for n, line in enumerate(lines, 1):
        message = json.loads(line)
        result = parse_message(message, _seconds(message["timestamp"]))
        assert not isinstance(result, Rejection), f"line {n}: {result}"
        parsed.append(result)

    # Then every one is accepted, is attributed to a generated account (no stray B2C account from an
    # identify without a group), and message ids are unique
    assert {e.account_id for e in parsed} <= account_ids
    assert len({e.message_id for e in parsed}) == len(lines)


def test_lines_are_in_time_order_inside_the_requested_days(history):
    lines, _ = history
    stamps = [json.loads(line)["timestamp"] for line in lines]

    assert stamps == sorted(stamps)
    assert stamps[0] >= "2026-09-01T00:00:00.000Z"
    assert stamps[-1] < "2026-10-16T00:00:00.000Z"


def test_the_history_has_the_shape_of_a_freemium_b2b_saas(history):
    lines, answers = history
    messages = [json.loads(line) for line in lines]
    names = Counter(m.get("event") or m["type"] for m in messages)
    pages = Counter(m["name"] for m in messages if m["type"] == "page")
    identify = [m for m in messages if m["type"] == "identify"]
    group = [m for m in messages if m["type"] == "group"]

    # Then the B2B SaaS events are all there
    for name in ("Signed Up", "Signed In", "Message Sent", "Conversation Started", "Friend Added",
                 "Invite Sent", "File Uploaded", "Folder Shared", "Integration Connected", "Feature Used",
                 "Contacts Updated", "Storage Updated", "Trial Started", "Subscription Started"):
        assert names[name] > 0, name
    assert pages["Pricing"] > 0
    # users carry personal traits at example domains, accounts their plan and limits
    assert all(m["traits"]["email"].endswith(".example.com") for m in identify)
    assert {"name", "timezone", "role"} <= set(identify[0]["traits"])
    assert {"plan", "employees", "industry", "seats", "contacts_limit", "storage_quota_bytes"} <= set(
        group[0]["traits"])
    assert {m["traits"]["plan"] for m in group} >= {"free", "trial"}
    owners = {m["traits"]["owner"] for m in group if "owner" in m["traits"]}
    assert owners and owners <= set(REP_ROSTER)
    assert {m["properties"]["tier"] for m in messages if m.get("event") == "Feature Used"} == {"free", "paid"}
    # most accounts have 1–5 users
    sizes = [a["users"] for a in answers["accounts"]]
    assert sum(1 for s in sizes if s <= 5) > len(sizes) / 2


def test_gauges_grow_toward_the_plan_limits_and_never_past_them(history):
    lines, _ = history
    contacts: dict[str, list[int]] = defaultdict(list)
    storage: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        m = json.loads(line)
        if m.get("event") == "Contacts Updated":
            contacts[m["context"]["groupId"]].append(m["properties"]["total"])
        elif m.get("event") == "Storage Updated":
            storage[m["context"]["groupId"]].append(m["properties"]["used_bytes"])

    for series in (*contacts.values(), *storage.values()):
        assert series == sorted(series)
    assert max(max(s) for s in contacts.values()) <= PLANS["free"]["contacts_limit"]
    assert max(max(s) for s in contacts.values()) >= 0.8 * PLANS["free"]["contacts_limit"]


def test_activity_follows_the_working_day_and_week_in_each_users_timezone(history):
    lines, _ = history
    timezone_of = {}
    offsets = {"America/New_York": -5, "America/Chicago": -6, "America/Los_Angeles": -8, "Europe/London": 0,
               "Europe/Berlin": 1}
    local_hours: Counter[int] = Counter()
    weekend = weekday = 0
    for line in lines:
        m = json.loads(line)
        if m["type"] == "identify":
            timezone_of[m["userId"]] = m["traits"]["timezone"]
        elif m.get("event") == "Signed In" and timezone_of.get(m["userId"]) in offsets:
            local = _seconds(m["timestamp"]) + 3600 * offsets[timezone_of[m["userId"]]]
            moment = datetime.fromtimestamp(local, UTC)
            local_hours[moment.hour] += 1
            if moment.weekday() >= 5:
                weekend += 1
            else:
                weekday += 1

    working = sum(local_hours[h] for h in range(8, 18))
    night = sum(local_hours[h] for h in (0, 1, 2, 3, 4))
    assert working > 10 * night
    assert weekday / 5 > 2.5 * (weekend / 2)


def test_conversion_is_more_likely_for_high_propensity_accounts_and_after_milestones():
    # Given a fixed-seed history of 240 accounts and its hidden truth
    accounts = Sample(SampleConfig(seed=21, accounts=240, days=50, start=START)).answers()["accounts"]
    ranked = sorted(accounts, key=lambda a: a["propensity"])
    third = len(ranked) // 3

    def rate(group):
        return sum(1 for a in group if a["converted_at"]) / len(group)

    # Then the top third by propensity converts far more often than the bottom third
    assert rate(ranked[-third:]) >= 3 * rate(ranked[:third])
    assert rate(ranked[-third:]) >= 0.3
    # and accounts that reached a limit convert more often than those that never did (a definition has lift)
    limit = [a for a in accounts if "limit" in a["milestones"]]
    no_limit = [a for a in accounts if "limit" not in a["milestones"]]
    assert rate(limit) >= 1.5 * rate(no_limit)


def test_the_answers_match_the_subscriptions_in_the_file(history):
    lines, answers = history
    started = {}
    for line in lines:
        m = json.loads(line)
        if m.get("event") == "Subscription Started":
            started[m["context"]["groupId"]] = m["timestamp"]
            assert m["properties"]["plan"] in ("pro", "business") and m["properties"]["mrr"] > 0

    truth = {a["account_id"]: a["converted_at"] for a in answers["accounts"] if a["converted_at"]}
    assert started == truth
    assert len(truth) >= 3


def test_events_option_aims_at_the_requested_total_without_changing_who_converts():
    natural = Sample(SampleConfig(seed=8, accounts=60, days=40, start=START))
    natural_lines = list(natural.lines())
    scaled = Sample(SampleConfig(seed=8, accounts=60, days=40, start=START, events=3 * len(natural_lines)))
    scaled_lines = list(scaled.lines())

    assert abs(len(scaled_lines) - 3 * len(natural_lines)) <= 0.02 * 3 * len(natural_lines)
    assert [a["converted_at"] for a in scaled.answers()["accounts"]] == [
        a["converted_at"] for a in natural.answers()["accounts"]]


def test_events_option_refuses_a_target_below_the_essential_events():
    with pytest.raises(UsageError, match="--events 10: too few for 30 accounts"):
        Sample(SampleConfig(seed=1, accounts=30, days=30, start=START, events=10))


def test_duplicates_add_identical_redeliveries_after_the_original_and_nothing_else():
    clean = _lines(seed=4, accounts=20, days=20)
    sample = Sample(SampleConfig(seed=4, accounts=20, days=20, start=START, duplicates=0.1))
    dirty = list(sample.lines())

    extra = Counter(dirty) - Counter(clean)
    # Then every clean message is still there once, the extra lines are copies of clean ones (at most one more
    # each), about 10% of them, and each copy comes after its original
    assert Counter(clean) - Counter(dirty) == Counter()
    assert set(extra) <= set(clean) and set(extra.values()) == {1}
    assert sample.stats.duplicates == len(dirty) - len(clean) == sum(extra.values())
    assert 0.08 * len(clean) <= sample.stats.duplicates <= 0.12 * len(clean)
    first_seen: dict[str, int] = {}
    for i, line in enumerate(dirty):
        first_seen.setdefault(line, i)
    assert all(dirty.index(line) == first_seen[line] for line in extra)
    assert [line for i, line in enumerate(dirty) if first_seen[line] == i] == clean


def test_shuffle_window_reorders_within_the_window_only():
    clean = _lines(seed=4, accounts=20, days=20)
    shuffled = _lines(seed=4, accounts=20, days=20, shuffle_window=25)

    position = {line: i for i, line in enumerate(shuffled)}
    moves = [abs(position[line] - i) for i, line in enumerate(clean)]
    assert sorted(shuffled) == sorted(clean)
    assert shuffled != clean
    assert max(moves) <= 25
    assert sum(1 for m in moves if m) > len(clean) / 2


def test_default_start_ends_the_history_at_todays_utc_midnight_per_the_clock():
    # Given a clock set to an afternoon
    now = datetime(2027, 3, 10, 15, 30, tzinfo=UTC).timestamp()
    clock.set_source(lambda: now)
    try:
        lines = list(Sample(SampleConfig(seed=2, accounts=10, days=30)).lines())
    finally:
        clock.set_source(None)

    stamps = [json.loads(line)["timestamp"] for line in lines]
    assert stamps[0] >= "2027-02-08T00:00:00.000Z"
    assert stamps[-1] < "2027-03-10T00:00:00.000Z"
    # and all of it is inside ingest's retention window at that "now"
    assert all(isinstance(parse_message(json.loads(line), now), UsageEvent) for line in lines)


def test_cli_writes_the_file_and_the_answers(tmp_path, capsys):
    out, answers = tmp_path / "h.jsonl", tmp_path / "answers.json"

    code = cli.main(["sample", "--seed", "3", "--accounts", "12", "--days", "15", "--start", "2026-09-01",
                     "--out", str(out), "--answers", str(answers)])

    assert code == 0
    truth = json.loads(answers.read_text())
    assert len(truth["accounts"]) == 12 and truth["generator"]["seed"] == 3
    assert 0.0 < truth["accounts"][0]["propensity"] < 1.0
    assert len(out.read_text().splitlines()) == truth["messages"]
    assert "messages for 12 accounts" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accounts", "0"], "--accounts 0"),
        (["--days", "0"], "--days 0"),
        (["--start", "2026-13-01"], "--start '2026-13-01'"),
        (["--duplicates", "1.5"], "--duplicates 1.5"),
        (["--shuffle-window", "-1"], "--shuffle-window -1"),
        (["--events", "0"], "--events 0"),
        (["--out", "/nonexistent-dir/x.jsonl"], "--out /nonexistent-dir/x.jsonl: cannot write"),
    ],
)
def test_cli_names_the_bad_option_and_exits_2(args, message, capsys):
    code = cli.main(["sample", "--days", "3", "--accounts", "3", *args])

    assert code == 2
    assert message in capsys.readouterr().err


def test_the_shipped_demo_dataset_is_what_its_readme_command_generates(tmp_path):
    # Given the command recorded in events/demo/README.md
    readme = (REPO / "events/demo/README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if line.strip().startswith("pqlflow sample"))
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "history.jsonl")
    if "--answers" in argv:
        argv[argv.index("--answers") + 1] = str(tmp_path / "answers.json")

    # When it is run again
    assert cli.main(argv) == 0

    # Then it reproduces the shipped file byte for byte
    assert (tmp_path / "history.jsonl").read_bytes() == (REPO / "events/demo/history.jsonl").read_bytes()
