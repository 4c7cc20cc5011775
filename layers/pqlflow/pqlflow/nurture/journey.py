"""Journeys: the follow-up steps after a qualification's first action, and what stops them. Pure.

A policy rule's `then` may be a list of steps (`pqlflow.nurture.policy.Step`): step 0 is decided at the
qualification like any single action; step n comes due `after_days` after the qualification, when
its `when` is checked against the qualification and the engagement with earlier steps, and its
action is decided under the same caps, consent and quiet hours.

One journey runs per subject (the account, or the account's user for user-unit definitions). It ends
at once and for good (`JourneyStopped`) on the first of:

| event on the bus                         | reason          | which journeys                        |
|------------------------------------------|-----------------|---------------------------------------|
| `Account Converted`                      | converted       | every journey of the account          |
| `PQL Disqualified`                       | disqualified    | the subject's, if qualified before it |
| `Offer Accepted`                         | offer_accepted  | every journey of the account          |
| `Rep Task Closed`                        | task_closed     | the task's qualification's            |
| `Email Complained`, `Email Bounced` (permanent) | suppressed | the email's qualification's          |
| a later `PQL Qualified` of the subject   | requalified     | the subject's earlier journey         |
| a step finds the address suppressed      | unsubscribed    | that journey                          |
| a step finds the account suppressed      | suppressed      | that journey                          |
| the last step ran                        | completed       | that journey                          |

EventBridge keeps no order, so "later" and "before" are the events' own times (`qualified_at`,
`disqualified_at`), not the order route sees them in: a disqualification or a qualification routed late
never stops (or replaces) the journey of a qualification that came after it.

Engagement events (`Email Delivered/Opened/Clicked`, `Offer Viewed/Dismissed`) are recorded on the
journey as (step, engagement) for later steps' `engaged` conditions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pqlflow.contracts.emitted import JourneyStepDue, JourneyStopped, StopReason
from pqlflow.kernel import clock
from pqlflow.nurture.policy import Rule

DAY_SECONDS = 86_400


def subject_sk(user_id: str | None) -> str:
    """The journey item's sort key under `A#<account>`: one journey per subject."""
    return "JOURNEY" if user_id is None else f"JOURNEY#U#{user_id}"


def schedule_name(transition_id: str, step: int) -> str:
    """Deterministic (a retry finds its own schedule), within Scheduler's 64 characters."""
    digest = hashlib.sha256(f"journey:{transition_id}:{step}".encode()).hexdigest()[:40]
    return f"pqlflow-j-{digest}"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Journey:
    """A subject's journey as stored."""

    account_id: str
    user_id: str | None
    transition_id: str
    rule: str
    steps: int
    next_step: int
    status: str  # active | stopped | completed
    started_at: float
    engagement: frozenset[tuple[int, str]] = frozenset()
    stop: JourneyStopped | None = None
    stop_emitted: bool = False
    qualified_at: str | None = None
    """The qualification's `qualified_at` (None on items written before it was kept)."""

    @property
    def active(self) -> bool:
        return self.status == "active"

    def qualified_after(self, at: object) -> bool:
        """Whether the journey's qualification is later than the event time `at` (unknown times: no)."""
        mine, theirs = clock.parse_iso(self.qualified_at), clock.parse_iso(at)
        return mine is not None and theirs is not None and mine > theirs

    def due(self, rule: Rule, step: int) -> float:
        """When step `step` comes due: `after_days` after the journey started."""
        return self.started_at + rule.steps[step].after_days * DAY_SECONDS

    def step_due(self, rule: Rule, step: int) -> JourneyStepDue:
        return JourneyStepDue(transition_id=self.transition_id, account_id=self.account_id, user_id=self.user_id,
                              rule=self.rule, step=step, due_at=iso(self.due(rule, step)))

    def stopped(self, reason: StopReason, at: float, why: str | None, after_step: int | None = None
                ) -> JourneyStopped:
        return JourneyStopped(transition_id=self.transition_id, account_id=self.account_id, user_id=self.user_id,
                              rule=self.rule, reason=reason,
                              after_step=self.next_step - 1 if after_step is None else after_step,
                              stopped_at=iso(at), why=why)


@dataclass(frozen=True)
class Stop:
    """What an event on the bus stops: journeys of `account_id`, narrowed to a subject or a qualification."""

    reason: StopReason
    account_id: str
    why: str
    transition_id: str | None = None
    subject: tuple[str | None] | None = None  # (user_id,) for one subject's journey; None: every subject
    at: str | None = None
    """When it happened, for stops that end only journeys qualified before (a disqualification)."""

    def applies_to(self, journey: Journey) -> bool:
        if self.transition_id is not None and journey.transition_id != self.transition_id:
            return False
        if self.at is not None and journey.qualified_after(self.at):
            return False  # routed late: the subject qualified again after it
        return self.subject is None or journey.user_id == self.subject[0]


def stop_for(detail_type: str, detail: Mapping[str, Any]) -> Stop | None:
    """The stop an event on the bus causes, or None (it stops nothing)."""
    account = detail.get("account_id")
    if not isinstance(account, str) or not account:
        return None
    if detail_type == "Account Converted":
        return Stop("converted", account, f"the account converted at {detail.get('converted_at')}")
    if detail_type == "PQL Disqualified":
        at = detail.get("disqualified_at")
        return Stop("disqualified", account, f"disqualified at {at}", subject=(detail.get("user_id"),),
                    at=at if isinstance(at, str) else None)
    if detail_type == "Offer Accepted":
        return Stop("offer_accepted", account, f"offer {detail.get('offer')} accepted at {detail.get('accepted_at')}")
    transition = detail.get("transition_id")
    if not isinstance(transition, str):
        return None
    if detail_type == "Rep Task Closed":
        return Stop("task_closed", account, f"the rep closed the task ({detail.get('outcome')}, via "
                    f"{detail.get('via')})", transition_id=transition)
    if detail_type == "Email Complained" or (
        detail_type == "Email Bounced" and detail.get("bounce_type") == "Permanent"
    ):
        return Stop("suppressed", account, f"{detail_type.lower()}: the address is suppressed",
                    transition_id=transition)
    return None


ENGAGEMENT_EVENTS = {
    "Email Delivered": "email_delivered", "Email Opened": "email_opened", "Email Clicked": "email_clicked",
    "Offer Viewed": "offer_viewed", "Offer Dismissed": "offer_dismissed",
}
STOP_EVENTS = ("Account Converted", "PQL Disqualified", "Offer Accepted", "Rep Task Closed", "Email Complained",
               "Email Bounced")


def engagement_of(detail_type: str, detail: Mapping[str, Any]) -> tuple[str, str, int, str] | None:
    """(account, transition, step, engagement) an engagement event records, or None."""
    kind = ENGAGEMENT_EVENTS.get(detail_type)
    account, transition, step = detail.get("account_id"), detail.get("transition_id"), detail.get("step", 0)
    if kind is None or not isinstance(account, str) or not isinstance(transition, str):
        return None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    return account, transition, step, kind
