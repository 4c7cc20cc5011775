"""What stops a journey (pure): events routed out of order stop only the journeys they are older than."""

from __future__ import annotations

import pytest
from pqlflow.nurture.journey import Journey, stop_for


def journey(qualified_at: str | None = "2026-11-25T15:00:00Z") -> Journey:
    return Journey("acme", None, "tr-2", "nurture", 3, 1, "active", 0.0, qualified_at=qualified_at)


def disqualified(at: object) -> dict:
    return {"transition_id": "tr-dq", "account_id": "acme", "user_id": None, "disqualified_at": at}


@pytest.mark.parametrize(("at", "stops"), [
    ("2026-11-24T10:00:00Z", False),  # before the journey's qualification: routed late
    ("2026-11-25T15:00:00Z", True),   # the same moment: the disqualification wins
    ("2026-11-26T10:00:00Z", True),   # after it
    ("2026-11-26T10:00:00", True),    # a naive time is UTC
])
def test_a_disqualification_stops_only_a_journey_qualified_before_it(at, stops):
    # Given a journey of a qualification on the 25th, when a disqualification of the subject comes in
    stop = stop_for("PQL Disqualified", disqualified(at))
    # Then it stops the journey only if it is not older than that qualification
    assert stop is not None and stop.applies_to(journey()) is stops


@pytest.mark.parametrize("at", [None, "yesterday", 5])
def test_a_disqualification_without_a_readable_time_still_stops_the_journey(at):
    stop = stop_for("PQL Disqualified", disqualified(at))
    assert stop is not None and stop.applies_to(journey())


def test_a_journey_stored_before_its_qualification_time_was_kept_is_still_stopped():
    stop = stop_for("PQL Disqualified", disqualified("2026-11-24T10:00:00Z"))
    assert stop is not None and stop.applies_to(journey(qualified_at=None))
