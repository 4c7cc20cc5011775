"""The SES message tags send_email puts on a nurture email, and reading them back from SES's events.

SES copies a message's tags into every event about it (`mail.tags`, each value a one-item list), so the
tags carry what an engagement event needs without a read: the action, its transition, account and
journey step, and the template. The recipient's user id is added only when it is an opaque id (an id
holding an `@` is an address, personal data, and stays out of SES).

SES allows only ASCII letters, digits, `_` and `-` in a tag value, at most 256 characters. A value made
only of those (and not starting with the `b64-` marker) is sent as it is, so ids stay readable in the
SES console; any other value is `b64-` and its unpadded URL-safe base64 (whose alphabet is exactly
those characters). A message whose values cannot fit carries the template tag only: SES events about
it are counted and not turned into engagement events.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEMPLATE = "pqlflow_template"
ACTION = "pqlflow_action"
TRANSITION = "pqlflow_transition"
ACCOUNT = "pqlflow_account"
STEP = "pqlflow_step"
USER = "pqlflow_user"

MAX_VALUE = 256
_PLAIN = re.compile(r"^[A-Za-z0-9_-]+$")
_MARK = "b64-"


class BadTag(ValueError):
    """A pqlflow tag on an SES event that does not decode (names the tag, never its value)."""


def encode(value: str) -> str:
    """`value` as an SES tag value: itself when SES allows it, else `b64-` + URL-safe base64."""
    if _PLAIN.match(value) and not value.startswith(_MARK):
        return value
    return _MARK + base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def decode(value: str) -> str:
    if not value.startswith(_MARK):
        return value
    raw = value[len(_MARK):]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class EngagementTags:
    """What an SES event's tags say about the nurture email it is about."""

    action_id: str
    transition_id: str
    account_id: str
    step: int
    template: str
    user_id: str | None = None


def for_message(
    *, action_id: str, transition_id: str, account_id: str, step: int, template: str, user_id: str | None
) -> dict[str, str]:
    """The message's tags (name → SES value). Only the template when another value cannot fit."""
    tags = {TEMPLATE: encode(template)}
    wanted = {ACTION: action_id, TRANSITION: transition_id, ACCOUNT: account_id, STEP: str(step)}
    if user_id and "@" not in user_id:
        wanted[USER] = user_id
    encoded = {name: encode(value) for name, value in wanted.items()}
    if any(len(v) > MAX_VALUE for v in (*encoded.values(), tags[TEMPLATE])):
        return {TEMPLATE: tags[TEMPLATE][:MAX_VALUE]} if len(tags[TEMPLATE]) <= MAX_VALUE else {}
    return tags | encoded


def _first(tags: Mapping[str, Any], name: str) -> str | None:
    value = tags.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and value else None


def template_of(tags: Mapping[str, Any]) -> str:
    """The template tag, decoded; `unknown` when absent or unreadable (only counted by it)."""
    value = _first(tags, TEMPLATE)
    try:
        return decode(value) if value else "unknown"
    except (binascii.Error, UnicodeDecodeError):
        return "unknown"


def read(tags: Mapping[str, Any]) -> EngagementTags | None:
    """The engagement tags of an SES event's `mail.tags`; None when the message is not a tagged nurture
    email (another sender on the configuration set, or a message sent before tagging). Raises `BadTag`
    when pqlflow's tags are there but broken."""
    action = _first(tags, ACTION)
    if action is None:
        return None
    values: dict[str, str | None] = {}
    for name in (ACTION, TRANSITION, ACCOUNT, STEP, TEMPLATE, USER):
        raw = _first(tags, name)
        if raw is None:
            values[name] = None
            continue
        try:
            values[name] = decode(raw)
        except (binascii.Error, UnicodeDecodeError):
            raise BadTag(f"SES tag {name} does not decode") from None
    for name in (TRANSITION, ACCOUNT, STEP):
        if not values[name]:
            raise BadTag(f"SES tag {ACTION} is set but {name} is missing")
    step = values[STEP] or ""
    if not step.isdigit():
        raise BadTag(f"SES tag {STEP} is not a whole number")
    return EngagementTags(
        action_id=str(values[ACTION]),
        transition_id=str(values[TRANSITION]),
        account_id=str(values[ACCOUNT]),
        step=int(step),
        template=values[TEMPLATE] or "unknown",
        user_id=values[USER],
    )
