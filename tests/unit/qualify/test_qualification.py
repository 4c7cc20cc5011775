"""Evaluation and transitions: signals, reasons, points with decay, hysteresis, cooldown, exclusions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pqlflow.contracts.emitted import PqlQualified
from pqlflow.contracts.usage_events import UsageEvent, parse_message
from pqlflow.ingest.usage import DAY_MS, AccountUsage
from pqlflow.qualify.definition import load_definition, parse_definition
from pqlflow.qualify.evaluation import (
    PqlState,
    decide,
    evaluate,
    needs_decision,
    qualified_event,
    transition_id,
)
from pqlflow.qualify.language import Definition

ROOT = Path(__file__).resolve().parents[3]
BASE_MS = 1_793_527_200_000  # 2026-11-01T10:00:00Z


def example(name: str) -> Definition:
    return load_definition(ROOT / "examples" / "definitions" / name)


class History:
    """Folds Segment messages into one subject's usage, on a simulated clock."""

    def __init__(self, defn: Definition, account: str = "acme"):
        self.defn = defn
        self.spec = defn.tracking_spec()
        self.account = account
        self.usage = AccountUsage(account)
        self.ms = BASE_MS
        self.n = 0

    def _apply(self, message: dict[str, Any]) -> AccountUsage:
        event = parse_message(message, now_s=BASE_MS / 1000 + 60 * 86400, retention_days=365)
        assert isinstance(event, UsageEvent), event
        self.usage.apply(event, self.spec)
        return self.usage

    def at(self, days: float) -> History:
        self.ms = BASE_MS + int(days * DAY_MS)
        return self

    def track(self, event: str, times: int = 1, user: str = "u1", **properties: Any) -> AccountUsage:
        for _ in range(times):
            self.n += 1
            self.ms += 1000
            self._apply(
                {
                    "type": "track",
                    "event": event,
                    "messageId": f"m{self.n}",
                    "userId": user,
                    "timestamp": _iso(self.ms),
                    "properties": properties,
                    "context": {"groupId": self.account},
                }
            )
        return self.usage

    def group(self, **traits: Any) -> AccountUsage:
        self.n += 1
        self.ms += 1000
        return self._apply(
            {
                "type": "group",
                "messageId": f"m{self.n}",
                "userId": "u1",
                "groupId": self.account,
                "timestamp": _iso(self.ms),
                "traits": traits,
            }
        )

    def identify(self, user: str, **traits: Any) -> AccountUsage:
        self.n += 1
        self.ms += 1000
        return self._apply(
            {
                "type": "identify",
                "messageId": f"m{self.n}",
                "userId": user,
                "timestamp": _iso(self.ms),
                "traits": traits,
                "context": {"groupId": self.account},
            }
        )


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run(defn: Definition, usage: AccountUsage, state: PqlState | None) -> tuple[str | None, PqlState | None]:
    t = decide(defn, usage, state, usage.last_seen_ms or 0)
    return (t.kind, t.new_state) if t else (None, state)


# ---- signals and reasons --------------------------------------------------------------------------------


def test_reasons_are_human_readable_with_kind_and_signal_values() -> None:
    # Given a team of three on the slack definition at its limit
    h = History(example("slack-messages.yaml"))
    h.track("Message Sent", 1998, user="ann")
    h.track("Message Sent", user="bob")
    usage = h.track("Message Sent", user="cy")

    ev = evaluate(h.defn, usage, usage.last_seen_ms or 0)

    assert ev.qualified
    (reason,) = ev.reasons
    assert (reason.text, reason.kind, reason.value, reason.threshold) == (
        "2,000 messages sent — the free plan's limit",
        "limit",
        2000,
        2000,
    )
    assert ev.signals == {"messages": 2000, "team_7d": 3}


def test_default_reason_texts_say_what_happened() -> None:
    defn = parse_definition(
        "name: t\nversion: 1\nsignals:\n  team: {active_users: {last_days: 7}}\n  inv: {count: Invite Sent}\n"
        "qualify: {all: [{signal: team, gte: 3}, {signal: inv, gte: 1}]}\n"
    )
    h = History(defn)
    h.track("Invite Sent", user="ann")
    h.track("Signed In", user="bob")
    usage = h.track("Signed In", user="cy")
    texts = [(r.text, r.kind) for r in evaluate(defn, usage, usage.last_seen_ms or 0).reasons]
    # the count is named from its event ("Invite Sent" → "invite sent"), in the number it has, and an invite is
    # team growth
    assert texts == [("3 teammates active in the last 7 days", "team"), ("1 invite sent", "team")]


def test_property_filters_count_only_matching_events() -> None:
    h = History(example("hubspot-freemium.yaml"))
    h.track("Feature Used", 4, tier="paid")
    usage = h.track("Feature Used", 10, tier="free")
    assert not evaluate(h.defn, usage, usage.last_seen_ms or 0).qualified
    usage = h.track("Feature Used", tier="paid")
    ev = evaluate(h.defn, usage, usage.last_seen_ms or 0)
    assert ev.qualified and ev.reasons[0].kind == "paid_feature"


def test_ratio_to_a_trait_limit_and_storage_quota_branch() -> None:
    h = History(example("dropbox-collaboration.yaml"))
    h.group(storage_quota_bytes=1000)
    usage = h.track("Storage Updated", used_bytes=899)
    assert not evaluate(h.defn, usage, usage.last_seen_ms or 0).qualified
    usage = h.track("Storage Updated", used_bytes=900)
    ev = evaluate(h.defn, usage, usage.last_seen_ms or 0)
    assert ev.qualified and [r.text for r in ev.reasons] == ["90% of the storage quota used"]


def test_ratio_without_its_limit_trait_is_unknown_and_does_not_qualify() -> None:
    h = History(example("crm-contact-limit.yaml"))
    usage = h.track("Contacts Updated", total=9999)
    ev = evaluate(h.defn, usage, usage.last_seen_ms or 0)
    assert ev.signals["contact_use"] is None and not ev.qualified


def test_first_days_window_counts_teammates_from_first_seen_by_whole_days() -> None:
    # Given first use on day 0 and an invite
    h = History(example("team-velocity.yaml"))
    h.track("Signed In", user="ann")
    h.track("Invite Sent", user="ann")
    h.at(1).track("Signed In", user="bob")
    # When the third teammate arrives on day 14 (the window is days 0..13)
    usage = h.at(14).track("Signed In", user="cy")
    # Then it is too late
    assert not evaluate(h.defn, usage, usage.last_seen_ms or 0).qualified


def test_velocity_compares_the_last_days_with_the_days_before() -> None:
    defn = parse_definition(
        "name: t\nversion: 1\nsignals:\n  v: {velocity: {count: Invite Sent, days: 7}}\n"
        "  d: {days_to: {count: Invite Sent, reach: 3}}\nqualify: {signal: v, gte: 2}\n"
    )
    h = History(defn)
    h.track("Invite Sent", 2)
    usage = h.at(8).track("Invite Sent", 4)
    ev = evaluate(defn, usage, usage.last_seen_ms or 0)
    assert ev.signals == {"v": 2.0, "d": 8}
    assert ev.qualified and ev.reasons[0].kind == "velocity"


def test_user_unit_uses_the_users_own_traits_and_reports_the_user() -> None:
    defn = example("logins.yaml")
    h = History(defn)
    h.usage = AccountUsage("acme", "ann")
    h.identify("ann", email="ann@customer.io", name="Ann")
    usage = h.track("Signed In", 10, user="ann")
    t = decide(defn, usage, None, usage.last_seen_ms or 0)
    assert t is not None
    event = qualified_event(defn, usage, t)
    assert event.user_id == "ann" and event.users[0].traits == {"email": "ann@customer.io", "name": "Ann"}


# ---- exclusions win ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        (lambda h: h.group(plan="Pro"), "already paying: plan is Pro"),
        (lambda h: h.track("Subscription Started"), "already a paying customer (converted)"),
        (lambda h: h.group(website="https://www.ourcompany.com/about"), "internal account (company domain)"),
        (lambda h: h.identify("u1", email="dev@eng.ourcompany.com"), "internal account (staff email domain)"),
    ],
    ids=["paying-plan", "converted", "internal-domain", "staff-emails"],
)
def test_exclusions_win_over_any_usage(setup: Any, why: str) -> None:
    h = History(example("drift-conversations.yaml"))
    setup(h)
    usage = h.track("Conversation Started", 500)
    ev = evaluate(h.defn, usage, usage.last_seen_ms or 0)
    assert not ev.qualified and ev.excluded == why


def test_test_account_ids_are_excluded() -> None:
    h = History(example("drift-conversations.yaml"), account="test-123")
    usage = h.track("Conversation Started", 100)
    assert evaluate(h.defn, usage, usage.last_seen_ms or 0).excluded == "internal or test account"


# ---- points: decay and hysteresis ---------------------------------------------------------------------


def test_points_decay_by_half_life_over_simulated_time() -> None:
    # Given 10 features used today: 30 points (the cap)
    defn = example("scoring.yaml")
    h = History(defn)
    usage = h.track("Feature Used", 10)
    now = usage.last_seen_ms or 0
    assert evaluate(defn, usage, now).score == 30
    # When 14 days pass (one half-life), it is halved
    assert evaluate(defn, usage, now + 14 * DAY_MS).score == 15
    assert evaluate(defn, usage, now + 28 * DAY_MS).score == 7.5
    # And past the 30-day window the events no longer count at all
    assert evaluate(defn, usage, now + 31 * DAY_MS).score == 0


def test_negative_points_lower_the_score() -> None:
    defn = example("scoring.yaml")
    h = History(defn)
    h.group(industry="education")
    usage = h.track("Feature Used", 10)
    assert evaluate(defn, usage, usage.last_seen_ms or 0).score == 5


def test_hysteresis_keeps_a_qualified_account_until_threshold_minus_margin() -> None:
    # Given a scoring account qualified at exactly 60 points today
    defn = example("scoring.yaml")
    h = History(defn)
    h.track("Signed In", 10)  # 20
    h.track("Invite Sent", 3)  # 30
    usage = h.track("Feature Used", 4)  # 12 → 62
    kind, state = run(defn, usage, None)
    assert kind == "qualified"
    now = usage.last_seen_ms or 0

    # When the score decays just under the threshold, it stays qualified, every day of the way down
    scores = []
    day = 0
    while True:
        day += 1
        ev = evaluate(defn, usage, now + day * DAY_MS, was_qualified=True)
        scores.append(ev.score)
        transition = decide(defn, usage, state, now + day * DAY_MS)
        if ev.score is not None and ev.score >= 50:
            assert transition is None, f"flapped on day {day} at {ev.score}"
        else:
            # Then it is disqualified once it falls under 50, saying why
            assert transition is not None and transition.kind == "disqualified"
            assert transition.evaluation is not None
            assert transition.evaluation.unmet[0].text.startswith("score") and "below 50" in (
                transition.evaluation.unmet[0].text
            )
            break
    assert any(50 <= s < 60 for s in scores if s is not None)


def test_a_score_around_the_threshold_does_not_flap() -> None:
    defn = example("scoring.yaml")
    h = History(defn)
    h.track("Signed In", 10)
    h.track("Invite Sent", 3)
    state: PqlState | None = None
    kinds = []
    for _ in range(6):  # each feature used moves the score around 59..62+: one qualification only
        usage = h.track("Feature Used")
        kind, state = run(defn, usage, state)
        kinds.append(kind)
    assert [k for k in kinds if k] == ["qualified"]


# ---- re-qualification ---------------------------------------------------------------------------------


def _crm_state(h: History, total: int, state: PqlState | None) -> tuple[str | None, PqlState | None]:
    usage = h.track("Contacts Updated", total=total)
    return run(h.defn, usage, state)


def test_cooldown_holds_back_a_new_qualification_then_lets_it_through() -> None:
    # Given a CRM account qualified at 80% then cleaned up to 70% (disqualified)
    h = History(example("crm-contact-limit.yaml"))
    h.group(contacts_limit=10000)
    kind, state = _crm_state(h, 8000, None)
    assert kind == "qualified"
    kind, state = _crm_state(h.at(2), 7000, state)
    assert kind == "disqualified"
    # When it is back at 85% within the 14-day cooldown: nothing
    kind, state = _crm_state(h.at(10), 8500, state)
    assert kind is None
    # When it is still there after the cooldown: qualified again
    kind, state = _crm_state(h.at(14.5), 8600, state)
    assert kind == "qualified"
    assert state is not None and state.seq == 3


def test_a_disqualified_account_stays_out_when_again_is_false() -> None:
    text = (ROOT / "examples/definitions/crm-contact-limit.yaml").read_text()
    defn = parse_definition(text.replace("cooldown_days: 14", "cooldown_days: 0\n  again: false"))
    h = History(defn)
    h.group(contacts_limit=10000)
    _, state = _crm_state(h, 8000, None)
    kind, state = _crm_state(h.at(1), 1000, state)
    assert kind == "disqualified"
    kind, state = _crm_state(h.at(40), 9000, state)
    assert kind is None


def test_conversion_is_reported_once_then_nothing_more() -> None:
    defn = example("drift-conversations.yaml")
    h = History(defn)
    _, state = run(defn, h.track("Conversation Started", 100), None)
    kind, state = run(defn, h.at(3).track("Subscription Started"), state)
    assert kind == "converted"
    assert run(defn, h.track("Conversation Started"), state)[0] is None


# ---- what the qualify function needs to know without reading -------------------------------------------


def test_needs_decision_says_how_a_change_can_move_the_state() -> None:
    defn = example("drift-conversations.yaml")
    h = History(defn)
    before = AccountUsage("acme")
    h.track("Conversation Started", 98)
    old = _copy(h.usage)
    assert needs_decision(defn, old, h.track("Conversation Started")) is None
    old = _copy(h.usage)
    assert needs_decision(defn, old, h.track("Conversation Started")) == "enter"
    old = _copy(h.usage)
    assert needs_decision(defn, old, h.track("Conversation Started")) is None  # same day, still in
    old = _copy(h.usage)
    assert needs_decision(defn, old, h.group(plan="pro")) == "leave"
    old = _copy(h.usage)
    assert needs_decision(defn, old, h.track("Subscription Started")) == "convert"
    assert needs_decision(defn, before, None) is None


def _copy(usage: AccountUsage) -> AccountUsage:
    import copy

    return copy.deepcopy(usage)


def test_qualified_event_matches_the_contract() -> None:
    defn = example("slack-messages.yaml")
    h = History(defn)
    h.group(employees=500, name="Acme")
    h.identify("u1", email="ann@acme.io", name="Ann", password="x")  # noqa: S106 - not shared
    usage = h.track("Message Sent", 2000)
    t = decide(defn, usage, None, usage.last_seen_ms or 0)
    assert t is not None
    event = PqlQualified.model_validate_json(qualified_event(defn, usage, t).model_dump_json())
    assert event.touch == "high"
    assert event.transition_id == transition_id("acme", None, 1)
    assert event.qualified_at.endswith("Z")
    assert event.users[0].traits == {"email": "ann@acme.io", "name": "Ann"}
    assert event.account_traits == {"employees": 500, "name": "Acme"}
