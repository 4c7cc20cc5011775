"""Replay of a crafted history through template.yaml's application: PQLs, actions, emails known in advance."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import crafted, read_jsonl, run


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("crafted")
    from tests.e2e.conftest import DEFINITION, POLICY

    (tmp / "definition.yaml").write_text(DEFINITION)
    (tmp / "policy.yaml").write_text(POLICY)
    history = crafted().write(tmp / "history.jsonl")
    out = tmp / "out"
    summary = run(history, out, tmp / "definition.yaml", tmp / "policy.yaml")
    return summary, out


def test_the_accounts_that_cross_the_definition_qualify_when_their_sign_ins_arrive(replayed):
    # Given the crafted history replayed with "5 sign-ins is a PQL"
    _, out = replayed
    # When the transitions are read
    transitions = read_jsonl(out / "transitions.jsonl")
    # Then acme, bigco and night qualified, at the time of their 5th sign-in, and tiny never did
    qualified = {t["account_id"]: t for t in transitions if t["type"] == "PQL Qualified"}
    assert sorted(qualified) == ["acme", "bigco", "night"]
    assert qualified["acme"]["at"].startswith("2026-09-08T10:0")
    assert qualified["bigco"]["at"].startswith("2026-09-08T10:3")
    assert qualified["night"]["at"].startswith("2026-09-08T22:0")
    assert qualified["bigco"]["touch"] == "high"
    assert qualified["acme"]["touch"] == "low"
    assert qualified["acme"]["definition"] == {"name": "e2e-sign-ins", "version": 1}
    # (acme's 6 sign-ins arrive in one step, so the stored state it is judged on has all 6)
    assert [r["text"] for r in qualified["acme"]["reasons"]] == ["6 sign-ins"]
    assert [r["text"] for r in qualified["bigco"]["reasons"]] == ["5 sign-ins"]


def test_each_qualification_gets_the_action_the_policy_says(replayed):
    _, out = replayed
    actions = read_jsonl(out / "actions.jsonl")
    by_account: dict[str, list[tuple[str, str]]] = {}
    for a in actions:
        by_account.setdefault(a["account_id"], []).append((a["channel"], a["outcome"]))
    # acme: email now; bigco: a rep task; night: deferred to office hours, then sent by the schedule
    assert by_account == {
        "acme": [("email", "send")],
        "bigco": [("rep_task", "send")],
        "night": [("email", "deferred"), ("email", "send")],
    }
    (deferred,) = [a for a in actions if a["outcome"] == "deferred"]
    assert deferred["send_after"].startswith("2026-09-09T09:00")
    assert "context" not in deferred


def test_emails_are_the_mime_given_to_ses_and_their_html(replayed):
    _, out = replayed
    emls = sorted((out / "emails").glob("*.eml"))
    assert len(emls) == 2
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in emls]
    assert sorted(str(m["To"]) for m in messages) == ["Ann Lee <ann@acme.example>", "Dan Moss <dan@night.example>"]
    assert all(m["List-Unsubscribe"] and m["List-Unsubscribe-Post"] for m in messages)
    # the deferred one went out on Wednesday morning, simulated time
    night = next(m for m in messages if "dan@" in str(m["To"]))
    assert "9 Sep 2026 09:0" in str(night["Date"])
    for eml in emls:
        html = eml.with_suffix(".html").read_text()
        assert "<html" in html.lower()


def test_tasks_offers_quarantine_and_counts_add_up(replayed):
    summary, out = replayed
    tasks = read_jsonl(out / "tasks.jsonl")
    assert [t["account_id"] for t in tasks] == ["bigco"]
    assert read_jsonl(out / "offers.jsonl") == []
    quarantined = read_jsonl(out / "quarantine.jsonl")
    assert len(quarantined) == 1
    counts = summary["counts"]
    assert (counts["transitions"], counts["qualified"], counts["actions"], counts["emails"], counts["tasks"],
            counts["offers"], counts["quarantined"]) == (3, 3, 4, 2, 1, 0, 1)
    assert summary["events_ingested"] == len(crafted().lines)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
