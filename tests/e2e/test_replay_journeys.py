"""Journeys end to end: a crafted history replayed through template.yaml's application, whose journey
steps and stops are known in advance (the steps' one-time schedules fire on the replay's clock)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import DEFINITION, T0, History, read_jsonl, run

POLICY = """\
name: e2e-journeys
version: 1
holdout: {share: 0.0}
caps: {account_days: 7, user_days: 7}
quiet_hours: {default_timezone: UTC, start: "09:00", end: "18:00", days: [mon, tue, wed, thu, fri]}
rules:
  - name: rep-follow-up
    when: {touch: high}
    then:
      - {channel: rep_task}
      - {name: demo-invite, after_days: 7, channel: email, template: demo_invite}
  - name: journey
    then:
      - {channel: email, template: upgrade_nudge}
      - {name: offer, after_days: 7, channel: offer, offer: trial-extension-14}
      - {name: demo-invite, after_days: 14, channel: email, template: demo_invite}
"""


def _history() -> History:
    h = History()
    # conv: qualifies Tuesday 10:00, converts on day 10: its journey stops after step 1 (day 7)
    h.identify("ann", "conv", T0 - timedelta(hours=1), email="ann@conv.example", name="Ann Lee", timezone="UTC")
    h.group("ann", "conv", T0 - timedelta(hours=1), name="Conv", employees=12, plan="free")
    h.sign_ins("ann", "conv", T0, 6)
    h.track("Subscription Started", "ann", "conv", T0 + timedelta(days=10), plan="pro", mrr=49)
    # full: qualifies and never converts: all three steps, then the journey is completed
    h.identify("eve", "full", T0 - timedelta(hours=1), email="eve@full.example", name="Eve Park", timezone="UTC")
    h.group("eve", "full", T0 - timedelta(hours=1), name="Full", employees=8, plan="free")
    h.sign_ins("eve", "full", T0 + timedelta(minutes=5), 5)
    # bigco: high touch: a rep task, then a demo invite a week later
    h.identify("bob", "bigco", T0 - timedelta(hours=1), email="bob@bigco.example", name="Bob Stone", timezone="UTC")
    h.group("bob", "bigco", T0 - timedelta(hours=1), name="BigCo", employees=500, plan="free")
    h.sign_ins("bob", "bigco", T0 + timedelta(minutes=30), 5)
    # tiny never qualifies; its sign-in on day 20 carries the replay's clock past every step
    h.identify("cat", "tiny", T0, email="cat@tiny.example", timezone="UTC")
    h.sign_ins("cat", "tiny", T0 + timedelta(days=20), 1)
    return h


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("journeys")
    (tmp / "definition.yaml").write_text(DEFINITION)
    (tmp / "policy.yaml").write_text(POLICY)
    history = _history().write(tmp / "history.jsonl")
    out = tmp / "out"
    summary = run(history, out, tmp / "definition.yaml", tmp / "policy.yaml", price_sample=0)
    return summary, out


def test_each_journey_runs_its_steps_on_their_days_until_it_stops(replayed):
    _, out = replayed
    steps: dict[str, list[tuple[int, str, str, str]]] = {}
    for a in read_jsonl(out / "actions.jsonl"):
        steps.setdefault(a["account_id"], []).append((a["step"], a["channel"], a["outcome"], a["time"][:10]))
    assert steps == {
        # converted on day 10 (2026-09-18): step 2 (day 14) never runs
        "conv": [(0, "email", "send", "2026-09-08"), (1, "offer", "send", "2026-09-15")],
        "full": [(0, "email", "send", "2026-09-08"), (1, "offer", "send", "2026-09-15"),
                 (2, "email", "send", "2026-09-22")],
        "bigco": [(0, "rep_task", "send", "2026-09-08"), (1, "email", "send", "2026-09-15")],
    }


def test_every_journey_stops_once_and_each_step_reaches_its_channel(replayed):
    summary, out = replayed
    # one Journey Stopped per journey: conv converted, full and bigco completed
    assert summary["counts"]["pqlflow_events"]["Journey Stopped"] == 3
    assert summary["counts"]["journeys_stopped"] == {"completed": 2, "converted": 1}
    assert summary["counts"]["pqlflow_events"]["Journey Step Due"] == 4  # conv 1, full 2, bigco 1
    offers = read_jsonl(out / "offers.jsonl")
    assert sorted(o["account_id"] for o in offers) == ["conv", "full"]
    demo_invites = [p for p in (out / "emails").glob("*.eml") if "demo" in p.read_text().lower()]
    assert len(list((out / "emails").glob("*.eml"))) == 4  # conv 1, full 2, bigco 1
    assert demo_invites
