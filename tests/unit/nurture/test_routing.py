"""The route decision: touch routing, holdout, consent, caps, quiet hours and recipient choice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pqlflow.contracts.emitted import PqlQualified
from pqlflow.nurture.policy import parse_policy
from pqlflow.nurture.routing import (
    Engagement,
    NurtureState,
    action_id,
    address_hash,
    choose_recipient,
    in_holdout,
    lookups,
    route,
    route_step,
    scheduled_delivery,
)

# Monday 2026-11-23 15:00 UTC: 10:00 in New York, 16:00 in Berlin, 00:00 (Tuesday) in Tokyo.
MONDAY_3PM_UTC = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()
DAY = 86_400

POLICY = parse_policy("""
name: test
version: 1
holdout: {share: 0.0}
caps: {account_days: 7, user_days: 14}
quiet_hours: {default_timezone: America/New_York, start: "09:00", end: "18:00"}
consent: {email_suppressed: offer, fallback_offer: extended_trial}
rules:
  - name: rep
    when: {touch: high}
    then: {channel: rep_task, template: rep_follow_up}
  - name: moment-of-need
    when:
      any:
        - reason: {kind: limit}
        - reason: {kind: paid_feature}
    then: {channel: offer, offer: premium_feature}
  - name: students
    when: {trait: {name: plan, op: "==", value: student}}
    then: {channel: none, why: no nudges for students}
  - name: email
    then: {channel: email, template: upgrade_nudge}
""")


def qualification(**overrides) -> PqlQualified:
    data = {
        "transition_id": "tr-1",
        "account_id": "acme",
        "definition": {"name": "default", "version": 3},
        "qualified_at": "2026-11-23T14:59:00Z",
        "touch": "low",
        "score": 72,
        "reasons": [{"code": "messages", "text": "1,200 messages this week", "kind": "usage"}],
        "signals": {"messages_sent": 1200, "active_users": 4},
        "account_traits": {"plan": "free"},
        "users": [
            {"user_id": "u-old", "traits": {"email": "old@acme.test", "timezone": "Europe/Berlin"},
             "last_seen": "2026-11-01T09:00:00Z"},
            {"user_id": "u-new", "traits": {"email": "New@Acme.test", "timezone": "America/New_York"},
             "last_seen": "2026-11-23T14:00:00Z"},
            {"user_id": "u-noemail", "traits": {}, "last_seen": "2026-11-23T14:30:00Z"},
        ],
    }
    data.update(overrides)
    return PqlQualified.model_validate(data)


def decide(q=None, state=None, policy=POLICY, now=MONDAY_3PM_UTC):
    return route(q or qualification(), policy, state or NurtureState(), now)


# --- touch routing ---------------------------------------------------------------------------------


def test_high_touch_goes_to_the_rep():
    decision = decide(qualification(touch="high"))
    assert decision.primary.channel == "rep_task"
    assert decision.primary.outcome == "send"
    assert decision.primary.template == "rep_follow_up"
    assert decision.rule == "rep"


@pytest.mark.parametrize("kind", ["limit", "paid_feature"])
def test_low_touch_at_the_moment_of_need_gets_an_in_app_offer(kind):
    q = qualification(reasons=[{"code": "c", "text": "t", "kind": kind}])
    decision = decide(q)
    assert (decision.primary.channel, decision.primary.offer) == ("offer", "premium_feature")
    assert decision.primary.recipient_user_id == "u-noemail"  # offers need no email: the most active user


def test_low_touch_otherwise_gets_a_personalized_email_to_the_most_active_user_with_an_email():
    decision = decide()
    action = decision.primary
    assert (action.channel, action.outcome, action.template) == ("email", "send", "upgrade_nudge")
    assert action.recipient_user_id == "u-new"
    assert action.reasons[0].code == "messages"
    assert action.context["transition_id"] == "tr-1"  # the qualification travels with the action


def test_a_rule_over_account_traits_can_decide_no_nudge():
    decision = decide(qualification(account_traits={"plan": "student"}))
    assert (decision.primary.channel, decision.primary.why) == ("none", "no nudges for students")


def test_rep_task_can_bring_a_low_key_email_along():
    policy = parse_policy("""
name: t
version: 1
rules:
  - name: rep
    then: {channel: rep_task, template: rep_follow_up, also_email: demo_invite}
""")
    decision = decide(qualification(touch="high"), policy=policy)
    task, email = decision.actions
    assert task.channel == "rep_task" and email.channel == "email" and email.template == "demo_invite"
    assert email.action_id == action_id("tr-1", "also_email") != task.action_id
    assert {c.scope for c in decision.cap_claims} == {"account", "user"}


def test_no_rule_matching_is_recorded_not_silent():
    policy = parse_policy("name: t\nversion: 1\nrules:\n"
                          "  - {name: r, when: {touch: high}, then: {channel: none}}\n")
    decision = decide(policy=policy)
    assert (decision.primary.channel, decision.primary.why) == ("none", "no policy rule matched")


def test_signal_score_and_not_conditions():
    policy = parse_policy("""
name: t
version: 1
rules:
  - name: big-and-hot
    when:
      all:
        - signal: {name: messages_sent, op: ">=", value: 1000}
        - score: {op: ">", value: 70}
        - not: {trait: {name: plan, op: in, value: [business, enterprise]}}
        - signal: {name: never_sent, op: missing}
    then: {channel: email, template: hot}
  - name: rest
    then: {channel: email, template: cold}
""")
    assert decide(policy=policy).primary.template == "hot"
    assert decide(qualification(score=50), policy=policy).primary.template == "cold"
    business = qualification(account_traits={"plan": "business"})
    assert decide(business, policy=policy).primary.template == "cold"


# --- ids -------------------------------------------------------------------------------------------


def test_the_same_qualification_always_gets_the_same_action_id():
    first, again = decide(), decide(now=MONDAY_3PM_UTC + 3600)
    assert first.primary.action_id == again.primary.action_id == action_id("tr-1")
    assert decide(qualification(transition_id="tr-2")).primary.action_id != first.primary.action_id


# --- holdout ---------------------------------------------------------------------------------------


def test_holdout_share_is_within_tolerance_over_ten_thousand_accounts():
    # Given a 10% holdout
    ids = [f"account-{n}" for n in range(10_000)]
    # When each account is placed
    held = sum(in_holdout(i, 0.10, "salt-a") for i in ids)
    # Then about 10% are held out (binomial sd is 30; allow 5 sd)
    assert 850 <= held <= 1150


def test_the_same_account_always_lands_on_the_same_side():
    ids = [f"account-{n}" for n in range(2_000)]
    first = [in_holdout(i, 0.10, "salt-a") for i in ids]
    assert first == [in_holdout(i, 0.10, "salt-a") for i in ids]
    # and a new salt draws a different group
    assert first != [in_holdout(i, 0.10, "salt-b") for i in ids]


def test_a_held_out_account_gets_a_recorded_holdout_action_and_no_nudge():
    policy = POLICY.model_copy(update={"holdout": POLICY.holdout.model_copy(update={"share": 0.5})})
    accounts = [f"acct-{n}" for n in range(40)]
    held = [a for a in accounts if in_holdout(a, 0.5, policy.holdout.salt)]
    assert held
    decision = decide(qualification(account_id=held[0]), policy=policy)
    assert (decision.primary.channel, decision.primary.outcome) == ("none", "holdout")
    assert decision.cap_claims == ()  # a holdout does not use up the cap
    # recorded under the rule that would have nudged it (each rule's lift is against its own holdout), and
    # starting no journey
    nudged = decide(qualification(account_id=next(a for a in accounts if a not in held)), policy=policy)
    assert decision.primary.rule == nudged.primary.rule is not None
    assert decision.rule is None


# --- consent and suppression -----------------------------------------------------------------------


def test_a_suppressed_account_gets_nothing_even_at_high_touch():
    decision = decide(qualification(touch="high"), NurtureState(account_suppressed=True))
    assert (decision.primary.channel, decision.primary.outcome) == ("none", "suppressed")
    assert len(decision.actions) == 1


def test_a_suppressed_address_gets_no_email_and_falls_back_to_the_policy_offer():
    # Given the most active emailable user unsubscribed (the hash is case-insensitive)
    state = NurtureState(suppressed_addresses=frozenset({address_hash("new@acme.test")}))
    decision = decide(state=state)
    # Then no email goes out: the consent fallback offer does
    assert decision.primary.channel == "offer"
    assert decision.primary.offer == "extended_trial"
    assert "suppressed" in decision.primary.why


def test_without_a_fallback_a_suppressed_address_means_outcome_suppressed():
    consent = POLICY.consent.model_copy(update={"email_suppressed": "suppress"})
    policy = POLICY.model_copy(update={"consent": consent})
    state = NurtureState(suppressed_addresses=frozenset({address_hash("new@acme.test")}))
    decision = decide(state=state, policy=policy)
    assert (decision.primary.channel, decision.primary.outcome) == ("none", "suppressed")
    assert decision.cap_claims == ()


def test_lookups_name_only_the_candidate_recipients():
    look = lookups(qualification())
    assert look.user_ids == ("u-new", "u-noemail")
    assert look.address_hashes == (address_hash("new@acme.test"),)


# --- recipient -------------------------------------------------------------------------------------


def test_the_qualifying_user_comes_first_for_user_unit_definitions():
    q = qualification(user_id="u-old")
    assert choose_recipient(q, require_email=True).user_id == "u-old"


def test_users_without_last_seen_rank_last():
    q = qualification(users=[{"user_id": "a", "traits": {"email": "a@x.test"}},
                             {"user_id": "b", "traits": {"email": "b@x.test"},
                              "last_seen": "2026-01-01T00:00:00Z"}])
    assert choose_recipient(q, require_email=True).user_id == "b"


def test_no_user_with_an_email_falls_back_like_a_suppressed_address():
    decision = decide(qualification(users=[{"user_id": "u", "traits": {}}]))
    assert (decision.primary.channel, decision.primary.offer) == ("offer", "extended_trial")


# --- frequency caps --------------------------------------------------------------------------------


def test_account_nudged_within_the_cap_is_capped_with_why():
    state = NurtureState(account_last_nudge_at=MONDAY_3PM_UTC - 3 * DAY)
    decision = decide(state=state)
    assert (decision.primary.channel, decision.primary.outcome) == ("none", "capped")
    assert "account cap" in decision.primary.why and "7 days" in decision.primary.why
    assert decision.cap_claims == ()


def test_account_nudged_before_the_cap_window_is_nudged_again():
    state = NurtureState(account_last_nudge_at=MONDAY_3PM_UTC - 8 * DAY)
    assert decide(state=state).primary.outcome == "send"


def test_user_cap_applies_across_accounts():
    state = NurtureState(user_last_nudge_at={"u-new": MONDAY_3PM_UTC - 10 * DAY})
    decision = decide(state=state)
    assert decision.primary.outcome == "capped"
    assert "user cap" in decision.primary.why and "u-new" in decision.primary.why


def test_a_sent_nudge_claims_both_caps():
    claims = decide().cap_claims
    assert {(c.scope, c.id, c.days) for c in claims} == {("account", "acme", 7), ("user", "u-new", 14)}


def test_zero_disables_a_cap():
    policy = POLICY.model_copy(update={"caps": POLICY.caps.model_copy(update={"account_days": 0})})
    state = NurtureState(account_last_nudge_at=MONDAY_3PM_UTC - 60)
    decision = decide(state=state, policy=policy)
    assert decision.primary.outcome == "send"
    assert [c.scope for c in decision.cap_claims] == ["user"]


# --- quiet hours -----------------------------------------------------------------------------------


def with_recipient_zone(zone, **overrides):
    return qualification(users=[{"user_id": "u", "traits": {"email": "u@x.test", "timezone": zone},
                                 "last_seen": "2026-11-23T14:00:00Z"}], **overrides)


def test_email_inside_local_daytime_goes_now():
    decision = decide(with_recipient_zone("America/New_York"))  # 10:00 local
    assert decision.primary.outcome == "send" and decision.primary.send_after is None


def test_email_after_local_hours_is_deferred_to_the_next_local_morning():
    decision = decide(with_recipient_zone("Asia/Tokyo"))  # Tuesday 00:00 local
    action = decision.primary
    assert (action.channel, action.outcome) == ("email", "deferred")
    assert action.send_after == "2026-11-24T00:00:00Z"  # Tuesday 09:00 in Tokyo
    assert "Asia/Tokyo" in action.why
    # the delivery the schedule puts on the bus later is the same action, to be sent
    delivery = decision.deliveries()[0]
    assert delivery.action_id == action.action_id
    assert (delivery.outcome, delivery.send_after) == ("send", action.send_after)
    assert scheduled_delivery(action) == delivery


def test_friday_evening_waits_for_monday_morning_on_weekdays_only():
    friday_7pm_berlin = datetime(2026, 11, 27, 18, 0, tzinfo=UTC).timestamp()
    decision = decide(with_recipient_zone("Europe/Berlin"), now=friday_7pm_berlin)
    assert decision.primary.send_after == "2026-11-30T08:00:00Z"  # Monday 09:00 CET


def test_a_missing_or_bogus_timezone_uses_the_policy_default():
    six_am_new_york = datetime(2026, 11, 23, 11, 0, tzinfo=UTC).timestamp()
    decision = decide(with_recipient_zone("Not/AZone"), now=six_am_new_york)
    assert decision.primary.send_after == "2026-11-23T14:00:00Z"  # 09:00 EST


def test_quiet_hours_follow_daylight_saving_time():
    # Sunday 2026-03-08 is the US spring-forward: Monday 09:00 EDT is 13:00 UTC, not 14:00
    sunday_noon_new_york = datetime(2026, 3, 8, 17, 0, tzinfo=UTC).timestamp()
    decision = decide(with_recipient_zone("America/New_York"), now=sunday_noon_new_york)
    assert decision.primary.send_after == "2026-03-09T13:00:00Z"


def test_offers_and_rep_tasks_ignore_quiet_hours():
    assert decide(with_recipient_zone("Asia/Tokyo", touch="high")).primary.outcome == "send"
    limit = with_recipient_zone("Asia/Tokyo", reasons=[{"code": "c", "text": "t", "kind": "limit"}])
    assert decide(limit).primary.outcome == "send"


JOURNEY = parse_policy("""
name: journey
version: 1
holdout: {share: 0.0}
caps: {account_days: 7, user_days: 7}
quiet_hours: {default_timezone: Europe/Berlin, start: "09:00", end: "18:00"}
rules:
  - name: nurture
    then:
      - {channel: email, template: upgrade_nudge}
      - {after_days: 7, channel: email, template: demo_invite}
""")


def test_a_late_journey_step_is_capped_as_planned_but_waits_for_the_window_of_when_it_goes_out():
    # Given a step planned for 16:00 Berlin, exactly one cap after the last nudge, that runs at 21:00 Berlin
    rule = JOURNEY.rules[0]
    planned, late = MONDAY_3PM_UTC, MONDAY_3PM_UTC + 5 * 3600
    state = NurtureState(account_last_nudge_at=planned - 7 * DAY,
                         user_last_nudge_at={"u": planned - 7 * DAY})
    q = with_recipient_zone("Europe/Berlin")
    # When it is decided as of its planned time, going out now
    step = route_step(q, JOURNEY, rule, 1, state, Engagement(rule), planned, send_now=late)
    # Then the caps do not hold it back, and the email waits for 09:00 Berlin the next morning
    assert step.decision is not None
    action = step.decision.primary
    assert (action.outcome, action.send_after) == ("deferred", "2026-11-24T08:00:00Z")
    # And on time, it goes out at once
    on_time = route_step(q, JOURNEY, rule, 1, state, Engagement(rule), planned).decision
    assert on_time is not None and on_time.primary.outcome == "send"
