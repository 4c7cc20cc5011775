"""Replay's input: duplicates and disorder change nothing; bad files get a clear error and exit code 2."""

from __future__ import annotations

import email
import email.policy
import json
import random
from pathlib import Path

import pytest
from pqlflow import cli

from tests.e2e.conftest import crafted, read_jsonl, run


def outputs(out: Path) -> dict:
    """What a user compares between two runs: every output except run-dependent ids and MIME boundaries."""
    result = {name: read_jsonl(out / name) for name in ("transitions.jsonl", "actions.jsonl", "offers.jsonl",
                                                         "tasks.jsonl")}
    mails = []
    for eml in sorted((out / "emails").glob("*.eml")):
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        mails.append({
            "headers": {k: str(v) for k, v in message.items() if k.lower() != "content-type"},
            "html": eml.with_suffix(".html").read_text(),
        })
    result["emails"] = mails
    return result


def test_duplicated_and_shuffled_input_gives_the_same_outputs_as_clean_input(tmp_path, definition_file,
                                                                             policy_file):
    # Given the crafted history, and a copy with every third event sent twice and all lines shuffled
    history = crafted()
    clean = history.write(tmp_path / "clean.jsonl")
    rng = random.Random(7)
    damaged_lines = history.lines + history.lines[::3]
    rng.shuffle(damaged_lines)
    damaged = history.write(tmp_path / "damaged.jsonl", damaged_lines)
    # When both are replayed
    a = run(clean, tmp_path / "a", definition_file, policy_file)
    b = run(damaged, tmp_path / "b", definition_file, policy_file)
    # Then transitions, actions, offers, tasks and emails are the same; only the input counts differ
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    assert a["counts"]["transitions"] == b["counts"]["transitions"] == 3
    assert b["input"]["events"] == a["input"]["events"] + len(history.lines[::3])
    assert b["input"]["distinct_message_ids"] == a["input"]["distinct_message_ids"]


def test_rerunning_into_the_same_folder_replaces_it(tmp_path, definition_file, policy_file):
    history = crafted().write(tmp_path / "h.jsonl")
    out = tmp_path / "out"
    run(history, out, definition_file, policy_file)
    (out / "emails" / "stale.eml").write_text("old")
    run(history, out, definition_file, policy_file)
    assert not (out / "emails" / "stale.eml").exists()
    assert (out / "summary.json").is_file()


def main(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["replay", *argv])
    return code, capsys.readouterr().err


def test_a_missing_file_is_named_and_exits_2(tmp_path, capsys):
    code, err = main(capsys, str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "nope.jsonl: no such file" in err


def test_a_line_that_is_not_json_is_named_with_its_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"type": "track"}) + "\n\n{not json\n")
    code, err = main(capsys, str(bad), "--out", str(tmp_path / "out"))
    assert code == 2
    assert f"{bad}:3: not JSON Lines" in err


def test_a_json_value_that_is_not_an_object_is_refused(tmp_path, capsys):
    bad = tmp_path / "list.jsonl"
    bad.write_text("[1, 2]\n")
    code, err = main(capsys, str(bad), "--out", str(tmp_path / "out"))
    assert (code, f"{bad}:1:" in err, "expected a JSON object" in err) == (2, True, True)


def test_an_out_folder_that_is_not_a_replay_output_is_never_deleted(tmp_path, capsys):
    history = crafted().write(tmp_path / "h.jsonl")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    code, err = main(capsys, str(history), "--out", str(precious))
    assert code == 2
    assert "holds no previous replay" in err
    assert (precious / "thesis.txt").read_text() == "keep me"


@pytest.mark.parametrize("option", [["--definition", "missing.yaml"], ["--policy", "missing.yaml"]])
def test_missing_definition_or_policy_files_are_named(tmp_path, capsys, option):
    history = crafted().write(tmp_path / "h.jsonl")
    code, err = main(capsys, str(history), "--out", str(tmp_path / "out"), option[0], str(tmp_path / option[1]))
    assert code == 2
    assert "missing.yaml" in err


def test_a_conversion_event_starts_a_new_step_so_a_pql_just_before_it_is_seen():
    from pqlflow.local.replay import FeedEvent, steps

    def event(minute: int, name: str) -> FeedEvent:
        return FeedEvent(minute * 60_000, "s", "track", "{}", "f", minute, name=name)

    history = [event(0, "Signed In"), event(5, "Signed In"), event(38, "Subscription Started"), event(40, "Signed In")]
    groups = list(steps(history, 6 * 3600, 400, frozenset({"Subscription Started"})))
    assert [[e.line for e in g] for g in groups] == [[0, 5], [38, 40]]
    assert [[e.line for e in g] for g in steps(history, 6 * 3600, 400)] == [[0, 5, 38, 40]]
