"""Signals in words: labels, singular and plural, kinds and talking points from the definition, the words a
qualification's reasons carry to the channels, and what changed since last week."""

from __future__ import annotations

import pytest
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.evaluation import PqlState, decide, evaluate, qualified_event
from pqlflow.qualify.words import event_words, singular_of

from tests.unit.qualify.test_definition import HEAD, error_of
from tests.unit.qualify.test_qualification import History


@pytest.mark.parametrize(
    ("event", "one", "many"),
    [
        ("Report Exported", "report exported", "reports exported"),
        ("Feature Used", "feature used", "features used"),
        ("Message Sent", "message sent", "messages sent"),
        ("Company Created", "company created", "companies created"),
        ("HD Video Uploaded", "HD video uploaded", "HD videos uploaded"),
        ("Signed In", "sign-in", "sign-ins"),
        ("Checkout", "“Checkout” event", "“Checkout” events"),
    ],
)
def test_a_count_without_a_label_is_named_from_its_event(event: str, one: str, many: str) -> None:
    assert event_words(event) == (one, many)


@pytest.mark.parametrize(
    ("label", "one"),
    [
        ("features used in the last 30 days", "feature used in the last 30 days"),
        ("pricing page views", "pricing page view"),
        ("sign-ins", "sign-in"),
        ("storage", "storage"),
    ],
)
def test_an_authors_plural_label_gets_a_singular(label: str, one: str) -> None:
    assert singular_of(label) == one


def _reason_texts(defn_text: str, track: list[tuple[str, int]]) -> list[str]:
    defn = parse_definition(HEAD + defn_text)
    h = History(defn)
    usage = None
    for event, times in track:
        usage = h.track(event, times=times)
    assert usage is not None
    return [r.text for r in evaluate(defn, usage, usage.last_seen_ms or 0).reasons]


def test_count_phrases_agree_in_number() -> None:
    # Given a count with the author's plural label and one named from its event
    defn = (
        "signals:\n  features: {count: Feature Used, label: features used}\n"
        "  exports: {count: Report Exported, last_days: 7}\n"
        "qualify: {all: [{signal: features, gte: 1}, {signal: exports, gte: 1}]}\n"
    )
    # When each happened once, then three times / Then the words follow the number
    assert _reason_texts(defn, [("Feature Used", 1), ("Report Exported", 1)]) == [
        "1 feature used",
        "1 report exported in the last 7 days",
    ]
    assert _reason_texts(defn, [("Feature Used", 3), ("Report Exported", 3)]) == [
        "3 features used",
        "3 reports exported in the last 7 days",
    ]


def test_the_authors_singular_wins_over_the_derived_one() -> None:
    defn = (
        "signals:\n  people: {count: Person Added, label: people added, singular: person added}\n"
        "qualify: {signal: people, gte: 1}\n"
    )
    assert _reason_texts(defn, [("Person Added", 1)]) == ["1 person added"]
    assert _reason_texts(defn, [("Person Added", 2)]) == ["2 people added"]


def test_kinds_are_derived_from_what_the_definition_already_says() -> None:
    # Given signals whose shape says what they mean, and one whose author says it
    defn = parse_definition(
        HEAD + "signals:\n"
        "  paid: {count: Feature Used, where: {tier: paid}}\n"
        "  pricing: {count: Page Viewed, where: {name: Pricing}}\n"
        "  invites: {count: Invite Sent}\n"
        "  exports: {count: Report Exported}\n"
        "  seats: {count: Seat Added, kind: team}\n"
        "  storage: {gauge: {event: Storage Updated, property: bytes}}\n"
        "  storage_use: {ratio: {of: storage, limit: 100}}\n"
        "  team: {active_users: {last_days: 7}}\n"
        "qualify: {signal: exports, gte: 1}\n"
    )
    # Then each signal has the kind a reason on it gets
    kinds = {name: signal.reason_kind for name, signal in defn.signals.items()}
    assert kinds == {
        "paid": "paid_feature",
        "pricing": "intent",
        "invites": "team",
        "exports": "usage",
        "seats": "team",
        "storage": "usage",
        "storage_use": "limit",
        "team": "team",
    }


SCORING_LIKE = (
    "signals:\n"
    "  exports:\n"
    "    count: Report Exported\n"
    "    talking_point: '{value} {label} ({change}): ask who reads them.'\n"
    "  pricing:\n"
    "    count: Page Viewed\n"
    "    where: {name: Pricing}\n"
    "    label: pricing page views\n"
    "    talking_point: 'Pricing page: {value} {label}, {change}. Ask what they need to decide.'\n"
    "qualify: {all: [{signal: exports, gte: 4}, {signal: pricing, gte: 1}]}\n"
)


def test_a_qualification_carries_the_authors_words_and_what_changed_since_last_week() -> None:
    # Given exports 10 days ago and this week, and one pricing page visit today
    defn = parse_definition(HEAD + SCORING_LIKE)
    h = History(defn)
    h.at(0).track("Report Exported", times=2)
    h.at(10).track("Report Exported", times=3)
    usage = h.at(10.2).track("Page Viewed", name="Pricing")
    # When the account qualifies and the event is emitted
    transition = decide(defn, usage, PqlState(), usage.last_seen_ms or 0)
    assert transition is not None
    event = qualified_event(defn, usage, transition)
    by_signal = {r.signal: r for r in event.reasons}
    exports, pricing = by_signal["exports"], by_signal["pricing"]
    # Then the reasons carry the labels, the talking points filled in, and the values a week before
    assert (exports.text, exports.label, exports.label_one) == (
        "5 reports exported",
        "reports exported",
        "report exported",
    )
    assert exports.previous == 2
    assert exports.talking_point == "5 reports exported (+3 this week): ask who reads them."
    assert pricing.kind == "intent"
    assert pricing.text == "1 pricing page view"
    assert pricing.talking_point == (
        "Pricing page: 1 pricing page view, +1 this week. Ask what they need to decide."
    )


def test_evaluation_without_reasons_reads_no_words() -> None:
    # The qualify function's per-record check asks for no reasons: the same verdict, nothing written
    defn = parse_definition(HEAD + SCORING_LIKE)
    h = History(defn)
    usage = h.track("Report Exported", times=4)
    usage = h.track("Page Viewed", name="Pricing")
    fast = evaluate(defn, usage, usage.last_seen_ms or 0, explain=False, reasons=False)
    full = evaluate(defn, usage, usage.last_seen_ms or 0)
    assert fast.would_enter == full.would_enter is True
    assert fast.reasons == [] and full.reasons


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        (
            "{count: A B, label: a b, talking_point: 'ask about {volume}'}",
            "t.yaml:4: signals.x.talking_point: unknown placeholder {volume} (known: change, label, value)",
        ),
        (
            "{count: A B, singular: a b}",
            "t.yaml:4: signals.x.singular: needs `label` (the words after any other number)",
        ),
        (
            "{count: A B, kind: urgent}",
            "t.yaml:4: signals.x.kind: expected 'limit', 'paid_feature', 'usage', 'intent', 'team', 'velocity', "
            "'score' or 'trait', got 'urgent'",
        ),
        ("{count: A B, label: ''}", "t.yaml:4: signals.x.label: must be one line of visible text, got ''"),
        (
            '{count: A B, label: "two\\nlines"}',
            "t.yaml:4: signals.x.label: must be one line of visible text, got 'two\\nlines'",
        ),
    ],
)
def test_bad_words_are_errors_that_name_the_field_and_value(signal: str, expected: str) -> None:
    error = error_of(HEAD + "signals:\n  x: " + signal + "\nqualify: {signal: x, gte: 1}\n")
    assert str(error).startswith(expected)


def test_labels_are_plain_text_never_evaluated() -> None:
    # Given a label that looks like template code and markup
    defn = (
        "signals:\n  x: {count: A B, label: '{{ 7*7 }} <b>exports</b>'}\n"
        "qualify: {signal: x, gte: 1}\n"
    )
    # Then the reason says it literally (the email escapes it; see tests/unit/channels)
    assert _reason_texts(defn, [("A B", 2)]) == ["2 {{ 7*7 }} <b>exports</b>"]
