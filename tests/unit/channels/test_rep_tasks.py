"""Rep tasks: roster, owner choice, round-robin draw, SLA due dates and what the task tells the rep."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pqlflow.channels.rep_tasks.task import (
    BusinessHours,
    Sla,
    build_task,
    choose_owner,
    due_at,
    load_roster,
    parse_roster,
    pick_round_robin,
    since_last_week,
    talking_points,
    usage_against_limits,
)
from pqlflow.contracts.emitted import DefinitionRef, NurtureAction, PqlQualified, Reason, UserSummary
from pqlflow.kernel.errors import UsageError

from tests.support.demo_account import demo_qualification

ROOT = Path(__file__).resolve().parents[3]
ROSTER = ROOT / "examples" / "reps" / "roster.yaml"


def qualification(**overrides) -> PqlQualified:
    fields = {
        "transition_id": "tr-1",
        "account_id": "acct-1",
        "definition": DefinitionRef(name="crm-contacts", version=3),
        "qualified_at": "2026-11-20T15:00:00Z",
        "touch": "high",
        "score": 87.0,
        "reasons": [
            Reason(
                code="limit.contacts",
                text="8,000 of 10,000 contacts (80%)",
                kind="limit",
                signal="contacts",
                value=8000,
                threshold=10000,
            ),
            Reason(
                code="team.size",
                text="6 teammates active this week",
                kind="team",
                signal="active_users",
                value=6,
            ),
        ],
        "signals": {
            "contacts": 8000,
            "active_users": 6,
            "imports": 41,
            "reports_viewed": 120,
            "plan": "free",
        },
        "account_traits": {"name": "Acme Corp", "territory": "amer", "hubspot_company_id": "9001"},
        "users": [
            UserSummary(
                user_id="u1", traits={"name": "Ana", "email": "ana@acme.test"}, last_seen="2026-11-20"
            ),
            UserSummary(user_id="u2", traits={"title": "Head of Sales"}, last_seen="2026-11-19"),
        ],
    }
    return PqlQualified(**(fields | overrides))


def action_for(q: PqlQualified) -> NurtureAction:
    return NurtureAction(
        action_id=f"act-{q.transition_id}",
        transition_id=q.transition_id,
        account_id=q.account_id,
        channel="rep_task",
        touch="high",
        reasons=q.reasons,
        context=q.model_dump(mode="json"),
    )


def test_owner_trait_wins_over_round_robin():
    # Given an account with an owner trait
    roster = load_roster(ROSTER)
    q = qualification(account_traits={"owner": "rep-emea-1", "territory": "amer"})

    # When the owner is chosen
    choice = choose_owner(q, roster)

    # Then it is the owner, not the next rep in the pool
    assert (choice.source, choice.owner) == ("trait", "rep-emea-1")


def test_round_robin_pool_follows_territory_and_segment_filters():
    roster = load_roster(ROSTER)

    amer = choose_owner(qualification(account_traits={"territory": "AMER"}), roster)
    assert amer.source == "round_robin"
    assert amer.eligible == ["rep-amer-1", "rep-amer-2", "rep-any-1"]
    assert amer.pool == "any:amer"

    enterprise_emea = choose_owner(
        qualification(account_traits={"territory": "emea", "segment": "enterprise"}), roster
    )
    # rep-emea-1 serves any segment in EMEA, rep-ent-1 enterprise anywhere, rep-any-1 everyone
    assert enterprise_emea.eligible == ["rep-any-1", "rep-emea-1", "rep-ent-1"]
    assert enterprise_emea.pool == "enterprise:emea"


def test_reps_without_filters_serve_everyone_and_unknown_traits_fall_back():
    roster = parse_roster(
        {
            "reps": [
                {"id": "a", "territories": ["emea"]},
                {"id": "b", "territories": ["emea"], "segments": ["smb"]},
                {"id": "c", "territories": ["apac"]},
            ]
        }
    )
    assert choose_owner(qualification(account_traits={"territory": "emea"}), roster).eligible == ["a"]
    assert choose_owner(
        qualification(account_traits={"territory": "emea", "segment": "smb"}), roster
    ).eligible == [
        "a",
        "b",
    ]
    # No rep serves LATAM: every active rep is eligible rather than nobody
    assert choose_owner(qualification(account_traits={"territory": "latam"}), roster).eligible == [
        "a",
        "b",
        "c",
    ]


def test_round_robin_draw_is_balanced():
    reps = ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    counts = Counter(pick_round_robin(reps, slot) for slot in range(1000))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_roster_errors_name_the_field(tmp_path):
    with pytest.raises(UsageError, match="rep id 'a' appears twice"):
        parse_roster({"reps": [{"id": "a"}, {"id": "a"}]})
    with pytest.raises(UsageError, match=r"field sla\.business_hours\.timezone"):
        parse_roster({"reps": [{"id": "a"}], "sla": {"business_hours": {"timezone": "Mars/Olympus"}}})
    path = tmp_path / "roster.yaml"
    path.write_text("reps: []\n")
    with pytest.raises(UsageError, match="roster.yaml: field reps"):
        load_roster(path)


def test_a_roster_that_lets_an_account_trait_pick_the_crm_company_is_refused():
    # Given a roster from before, naming the account trait that held the HubSpot company id (anyone who
    # can set their account's traits could attach tasks, and what they say, to another company)
    # When it is loaded / Then the error names the field and where the mapping lives now
    with pytest.raises(UsageError, match=r"field company_id_trait: .*connector secret"):
        parse_roster({"reps": [{"id": "a"}], "company_id_trait": "hubspot_company_id"})


def test_due_date_without_business_hours_is_plain_hours():
    start = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    assert due_at(start, Sla(hours=24)) == datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def test_due_date_in_business_hours_skips_nights_and_weekends():
    # Given an 8-hour SLA in New York business hours and a PQL on Friday at 15:00 local (20:00 UTC)
    sla = Sla(hours=8, business_hours=BusinessHours(timezone="America/New_York"))
    friday_3pm = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)

    # Then 2 hours count on Friday and 6 on Monday: due Monday 15:00 local
    assert due_at(friday_3pm, sla) == datetime(2026, 11, 23, 20, 0, tzinfo=UTC)

    # And a PQL on Saturday starts counting Monday at 09:00
    saturday = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert due_at(
        saturday, Sla(hours=1, business_hours=BusinessHours(timezone="America/New_York"))
    ) == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def test_task_says_why_who_usage_what_to_say_and_when():
    # Given a high-touch qualification
    roster = load_roster(ROSTER)
    q = qualification()
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # Friday 10:00 in New York

    # When the task is built for a round-robin rep
    task = build_task(action_for(q), q, "rep-amer-2", "round_robin", roster, now)

    # Then it carries the reasons, score, signals, active users, usage, talking points and due date
    assert task.title.startswith("PQL follow-up: Acme Corp")
    assert "8,000 of 10,000 contacts (80%)" in task.body
    assert "score 87" in task.body
    assert "contacts: 8,000" in task.body
    assert "Ana <ana@acme.test>" in task.body and "Head of Sales" in task.body
    # times as a person writes them, not ISO 8601
    assert "became a product-qualified lead on Fri 20 Nov 2026, 15:00 UTC" in task.body
    assert "(last seen 20 Nov 2026)" in task.body and "Head of Sales, last seen 19 Nov 2026" in task.body
    assert "T15:00" not in task.body
    assert "Usage against limits:" in task.body and "contacts: 8,000 of 10,000 (80%)" in task.body
    assert "Suggested talking points:" in task.body
    assert list(task.top_signals)[:2] == ["contacts", "active_users"]
    # 8 business hours from Friday 10:00 New York: 7 on Friday, 1 on Monday → Monday 10:00 (15:00 UTC)
    assert task.due_at == "2026-11-23T15:00:00Z"
    assert "Due Mon 23 Nov 2026, 15:00 UTC (SLA 8h in business hours)" in task.body
    assert task.priority == "HIGH"
    assert task.hubspot_owner_id == "64492918"
    # the account's `hubspot_company_id` trait is not trusted: the task names no CRM company of its own
    assert "9001" not in task.model_dump_json()
    assert task.task_id == build_task(action_for(q), q, "rep-amer-1", "round_robin", roster, now).task_id


def test_talking_points_follow_the_reasons():
    points = talking_points(
        [
            Reason(code="f", text="used SSO", kind="paid_feature", signal="sso_configured"),
            Reason(code="v", text="3x more projects this week", kind="velocity"),
            Reason(code="v2", text="again", kind="velocity"),
        ]
    )
    assert len(points) == 3
    assert "sso configured" in points[0] and "demo" in points[0]
    assert "accelerating" in points[1]
    assert talking_points([]) != []


def test_usage_lines_only_for_numeric_limits():
    lines = usage_against_limits(
        [
            Reason(code="a", text="t", kind="limit", signal="storage_gb", value=9.5, threshold=10),
            Reason(code="b", text="t", kind="limit", signal="x", value="lots", threshold=10),
            Reason(code="c", text="t", kind="usage", signal="y", value=5, threshold=10),
        ]
    )
    assert [line.text for line in lines] == ["storage_gb: 9.50 of 10 (95%)"]


def test_a_pricing_page_visit_is_buying_intent_for_the_rep_not_a_feature_to_coach():
    from pqlflow.cli.schemas import samples

    # Given a qualification by the bundled scoring definition, whose account viewed the pricing page once
    q = samples()["PQL Qualified"]
    assert isinstance(q, PqlQualified)
    pricing = [r for r in q.reasons if r.signal == "pricing_views"]
    assert [r.kind for r in pricing] == ["intent"]
    # When the rep task's talking points are written
    points = talking_points(q.reasons)
    # Then the visit is the first thing to raise, in the definition author's words: a purchase being weighed,
    # with what changed this week and what to offer, and no feature coaching
    assert "pricing page" in points[0]
    assert "(1 pricing page view, +1 this week): they are weighing a purchase" in points[0]
    assert "walk them through Pro" in points[0]
    assert not any("advanced tips" in p or "1 times" in p for p in points)


def test_the_demo_rep_task_says_why_now_what_changed_and_what_to_offer():
    # Given the demo's kind of qualification (10 sign-ins, 1 feature, 5 invites, a pricing page visit)
    q = demo_qualification()
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    # When its rep task is built
    task = build_task(action_for(q), q, "rep-amer-2", "round_robin", load_roster(ROSTER), now)
    body = task.body
    # Then the title leads with the buying intent, not the most frequent event
    assert task.title == "PQL follow-up: Bold Bridge Labs — Buying intent: 1 pricing page view"
    # And "why now" is in the order a rep raises it: intent, team growth, then use, then the score
    why = body.split("Why now:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert why == [
        "- Buying intent: 1 pricing page view",
        "- Team growing: 5 invites sent",
        "- Team growing: 5 teammates active in the last 7 days",
        "- Regular use: 10 sign-ins in the last 30 days",
        "- Regular use: 1 feature used in the last 30 days",
        "- Strong overall engagement: score 68 (60 needed)",
    ]
    # And it says what changed since last week (all of it happened this week) and what to offer
    assert "- pricing page views: 1, none a week ago" in body
    assert "- sign-ins in the last 30 days: 10, none a week ago" in body
    offer = body.split("What to offer:\n", 1)[1].split("\n\n", 1)[0]
    assert offer.startswith("- A walkthrough of the paid plan and a quote")
    # And the talking points start with the purchase being weighed, in the definition author's words
    assert task.talking_points[0].startswith("They looked at the pricing page (1 pricing page view, +1 this week)")
    assert "who is joining next" in task.talking_points[1]  # the author's point for invites
    # And no generic coaching for signals that are not features, no raw signal names
    assert "advanced tips" not in body and "sign ins" not in body and "1 features" not in body
    assert "- sign-ins in the last 30 days: 10" in body.split("Top signals:", 1)[1]


def test_what_changed_since_last_week_reads_up_down_and_the_same():
    lines = since_last_week(
        [
            Reason(code="a", text="t", kind="usage", signal="exports", value=9, previous=5, label="reports exported"),
            Reason(code="b", text="t", kind="team", signal="team", value=3, previous=4, label="teammates"),
            Reason(code="c", text="t", kind="usage", signal="logins", value=2, previous=2),
            Reason(code="e", text="t", kind="usage", signal="exports", value=3, previous=0),  # the same signal
            Reason(code="d", text="t", kind="limit", signal="contacts", value=8000),  # a gauge: not known
            Reason(code="f", text="t", kind="team", signal="invites", value=3, previous=0, label="invites sent"),
        ]
    )
    assert lines == [
        "teammates: 3, down from 4 a week ago (-1)",
        "invites sent: 3, none a week ago",
        "reports exported: 9, up from 5 a week ago (+4)",
        "logins: 2, the same as a week ago",
    ]


def test_a_usage_signal_that_is_not_a_feature_gets_no_feature_coaching():
    (point,) = talking_points(
        [Reason(code="s", text="10 sign-ins in the last 30 days", kind="usage", signal="sign_ins", value=10)]
    )
    assert "advanced tips" not in point and "feature" not in point
    assert "10 sign-ins in the last 30 days" in point
