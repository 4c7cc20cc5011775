"""A qualification shaped like the bundled demo's: an account qualified by the bundled default definition
(the points model) on sign-ins, one feature used, invites, one pricing page visit and four teammates
active, made by folding Segment messages and evaluating them exactly as ingest and qualify do."""

from __future__ import annotations

from typing import Any

from pqlflow.contracts.emitted import NurtureAction, PqlQualified
from pqlflow.qualify.evaluation import PqlState, decide, qualified_event
from pqlflow.qualify.language import Definition
from pqlflow.qualify.store import bundled_default

from tests.unit.qualify.test_qualification import History

USERS = {
    "usr_clara": ("Clara Fischer", "clara@boldbridge.example"),
    "usr_isabela": ("Isabela Costa", "isabela@boldbridge.example"),
    "usr_mohammed": ("Mohammed Ali", "mohammed@boldbridge.example"),
    "usr_priya": ("Priya Nair", "priya@boldbridge.example"),
}


def demo_qualification(defn: Definition | None = None, **events: int) -> PqlQualified:
    """Bold Bridge Labs' qualification; `events` overrides how many of each event it sends this week."""
    defn = defn or bundled_default()
    h = History(defn, account="acct_boldbridge")
    h.group(name="Bold Bridge Labs", plan="free", employees=40)
    for user, (name, email) in USERS.items():
        h.identify(user, name=name, email=email)
    counts = {"Signed In": 10, "Feature Used": 1, "Invite Sent": 5, "Page Viewed": 1} | {
        k.replace("_", " "): v for k, v in events.items()
    }
    h.at(3)
    for user in USERS:
        h.track("Signed In", user=user)
    usage = h.track("Signed In", times=max(counts["Signed In"] - len(USERS), 0), user="usr_clara")
    usage = h.track("Feature Used", times=counts["Feature Used"], user="usr_clara", name="Dashboards")
    usage = h.track("Invite Sent", times=counts["Invite Sent"], user="usr_clara")
    usage = h.track("Page Viewed", times=counts["Page Viewed"], user="usr_isabela", name="Pricing")
    transition = decide(defn, usage, PqlState(), usage.last_seen_ms or 0)
    assert transition is not None, "the demo-shaped account must qualify"
    return qualified_event(defn, usage, transition)


def email_action(q: PqlQualified, template: str = "upgrade_nudge", **fields: Any) -> NurtureAction:
    """The Nurture Action route makes for an email to Clara."""
    return NurtureAction(
        action_id=f"act_{q.transition_id[:12]}",
        transition_id=q.transition_id,
        account_id=q.account_id,
        channel="email",
        template=template,
        recipient_user_id="usr_clara",
        touch=q.touch,
        reasons=q.reasons,
        context=q.model_dump(mode="json"),
        **fields,
    )
