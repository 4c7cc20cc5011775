"""The wiring replay runs is template.yaml's: edit a rule's pattern or a filter in a copy, and replay follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import TEMPLATE, crafted, read_jsonl, run


def edited_template(tmp_path: Path, old: str, new: str) -> Path:
    text = TEMPLATE.read_text()
    assert text.count(old) == 1, old
    copy = tmp_path / "template.yaml"
    copy.write_text(text.replace(old, new))
    return copy


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return crafted().write(tmp_path / "history.jsonl")


def test_an_email_rule_that_no_longer_matches_sends_no_email(tmp_path, history, definition_file, policy_file):
    # Given a copy of the template whose send_email rule takes channel "sms" instead of "email"
    copy = edited_template(
        tmp_path,
        "                channel: [email]\n                outcome: [send]",
        "                channel: [sms]\n                outcome: [send]",
    )
    # When the crafted history is replayed with it
    summary = run(history, tmp_path / "out", definition_file, policy_file, template=copy)
    # Then the same actions are decided, but no email goes out and send_email never runs
    actions = read_jsonl(tmp_path / "out" / "actions.jsonl")
    assert sorted({a["account_id"] for a in actions if a["channel"] == "email"}) == ["acme", "night"]
    assert summary["counts"]["emails"] == 0
    assert "SendEmailFunction" not in summary["lambda"]["invocations"]
    assert summary["counts"]["tasks"] == 1


def test_a_stream_filter_that_excludes_usage_items_means_no_pqls(tmp_path, history, definition_file, policy_file):
    # Given a copy of the template whose qualify stream filter wants items of kind "nothing"
    copy = edited_template(
        tmp_path, '{"NewImage": {"kind": {"S": ["usage"]}}}', '{"NewImage": {"kind": {"S": ["nothing"]}}}'
    )
    # When replayed
    summary = run(history, tmp_path / "out", definition_file, policy_file, template=copy)
    # Then usage is ingested, but qualify is never invoked: no transition, no action
    assert summary["lambda"]["invocations"].get("IngestFunction", 0) > 0
    assert "QualifyFunction" not in summary["lambda"]["invocations"]
    assert (summary["counts"]["transitions"], summary["counts"]["actions"]) == (0, 0)


def test_the_usage_rule_pattern_decides_what_is_ingested(tmp_path, history, definition_file, policy_file):
    # Given a copy of the template whose usage rule takes only identify calls (not track)
    copy = edited_template(
        tmp_path,
        "        detail-type: [track, identify, group, page, screen]\n        # Any Segment",
        "        detail-type: [identify]\n        # Any Segment",
    )
    # When replayed
    summary = run(history, tmp_path / "out", definition_file, policy_file, template=copy)
    # Then sign-ins (track) never reach ingest: nobody qualifies, and the bad track event is not quarantined
    assert summary["counts"]["qualified"] == 0
    assert summary["counts"]["quarantined"] == 0
    assert summary["runtime"]["rule_matches"].get("UsageEventsRule") == 4
