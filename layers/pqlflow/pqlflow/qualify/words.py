"""English for signals: a label from an event name, and its singular and plural, so "1 feature used" and
"3 features used" both read right when a definition's author gave no words of their own.

Segment's B2B SaaS spec names events object-then-verb ("Report Exported", "Invite Sent"): the label is
the object counted, "reports exported". Sign-in style names put the verb first ("Signed In",
"Logged Out"): the label is the noun, "sign-ins". Anything else is quoted ("“Checkout” events"). The
rules are small on purpose; an author who wants other words writes `label:` and `singular:`.
"""

from __future__ import annotations

import re
from typing import Any

# Past participles that do not end in -ed, for "Message Sent", "Report Built", ...
_IRREGULAR = frozenset(
    {
        "sent", "built", "made", "run", "done", "seen", "read", "written", "paid", "won", "lost", "begun", "taken",
        "given", "held", "kept", "left", "met", "set", "shown", "sold", "spent", "bought", "brought", "chosen",
        "drawn", "found", "got", "gotten", "hidden", "put", "shut", "split", "sung", "thrown",
    }
)
_PARTICLES = frozenset({"in", "up", "out", "on", "off", "down", "over"})
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


def is_one(value: Any) -> bool:
    """Whether a count reads as singular: exactly 1 (1.0 too; never True, never "1 of something")."""
    return not isinstance(value, bool) and isinstance(value, int | float) and value == 1


def plural_of(word: str) -> str:
    """One English word made plural by the regular rules: report → reports, company → companies."""
    lower = word.lower()
    if re.search(r"[^aeiou]y$", lower):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", lower):
        return word + "es"
    return word + "s"


def _singular_word(word: str) -> str | None:
    """The singular of a word that looks plural, else None (it is not plural, or not by the rules)."""
    lower = word.lower()
    if len(lower) < 3 or not lower.endswith("s") or re.search(r"(ss|us|is|ous)$", lower):
        return None
    if lower.endswith("ies") and len(lower) > 4:
        return word[:-3] + "y"
    if re.search(r"(ches|shes|sses|xes|zes)$", lower):
        return word[:-2]
    return word[:-1]


def singular_of(label: str) -> str:
    """A plural label's singular: the first word that looks plural, made singular.

    "features used" → "feature used", "pricing page views" → "pricing page view", "sign-ins in the last
    30 days" → "sign-in in the last 30 days". A label with no such word is its own singular ("storage").
    """
    words = label.split(" ")
    for i, word in enumerate(words):
        if word.lower() in ("in", "of", "with", "per", "the", "last", "days"):
            break  # "reports in the last 30 days": only the words before a preposition name what is counted
        one = _singular_word(word)
        if one is not None:
            return " ".join([*words[:i], one, *words[i + 1 :]])
    return label


def _lower(word: str) -> str:
    return word if word.isupper() and len(word) > 1 else word.lower()  # keep acronyms: API, HD


def _participle(word: str) -> bool:
    lower = word.lower()
    return (lower.endswith("ed") and len(lower) > 3) or lower in _IRREGULAR


def _stem(participle: str) -> str:
    """The verb of a regular participle: signed → sign, logged → log, shared → share."""
    lower = participle.lower()
    stem = lower[:-2]
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        stem = stem[:-1]  # logged → log, but not called → cal
    elif lower.endswith("ied"):
        stem = lower[:-3] + "y"
    return stem


def event_words(event: str) -> tuple[str, str]:
    """(singular, plural) of what a count of `event` counts, derived from the event's name.

    "Report Exported" → ("report exported", "reports exported"); "Signed In" → ("sign-in", "sign-ins");
    a name the rules do not read → ("“Checkout” event", "“Checkout” events").
    """
    words = event.split()
    quoted = (f"“{event}” event", f"“{event}” events")
    if len(words) < 2 or not all(_WORD.match(w) for w in words):
        return quoted
    first, last = words[0], words[-1]
    if len(words) == 2 and _participle(first) and last.lower() in _PARTICLES and first.lower().endswith("ed"):
        noun = f"{_stem(first)}-{last.lower()}"
        return noun, noun + "s"
    if _participle(last) and not _participle(first):
        obj = [_lower(w) for w in words[:-1]]
        verb = last.lower()
        head = obj[-1]
        many_head = head if _singular_word(head) is not None or head.isupper() else plural_of(head)
        one_head = _singular_word(head) or head
        return " ".join([*obj[:-1], one_head, verb]), " ".join([*obj[:-1], many_head, verb])
    return quoted
