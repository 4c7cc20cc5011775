"""SES's own events about the mail it sent: the suppressions they add, and the engagement events they become.

The configuration set's EventBridge event destination publishes them on the default bus (`Email
Delivered`, `Email Opened`, `Email Clicked`, `Email Bounced`, `Email Complaint Received`…; the `detail`
is SES's event record: `eventType`, `mail` with the message's tags, and one object named after the
type). A permanent bounce or a complaint suppresses the address for good
(`pqlflow.nurture.suppression.from_ses_event`); a redelivered event is harmless since the first
suppression wins.

A delivery, open, click, bounce or complaint of a nurture email (one send_email tagged, see
`pqlflow.channels.email.tags`) also becomes `Email Delivered` / `Email Opened` / `Email Clicked` /
`Email Bounced` / `Email Complained` on the pqlflow bus. Its `engagement_id` is derived from the SES
message id, the event type, the event's own timestamp and (for a click) the link, so a redelivered SES
event publishes the same id again and consumers dedupe on it. Messages without pqlflow's tags (another
sender on the configuration set, or a message sent before tagging) are counted and skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.email import tags as ses_tags
from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import (
    EmailBounced,
    EmailClicked,
    EmailComplained,
    EmailDelivered,
    EmailOpened,
    _Detail,
    _EmailEngagement,
)
from pqlflow.kernel import clock
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import SuppressionList, from_ses_event


class SesEventsSettings(BaseModel):
    """The ses_events function's environment (validated once per cold start)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)


class Suppressions(Protocol):
    def add(self, suppression: Any) -> bool: ...


class Publisher(Protocol):
    def publish(self, details: Sequence[_Detail]) -> int: ...


# SES eventType → the engagement event it becomes, and the detail's object that carries its timestamp.
ENGAGEMENT: dict[str, tuple[type[_EmailEngagement], str]] = {
    "Delivery": (EmailDelivered, "delivery"),
    "Open": (EmailOpened, "open"),
    "Click": (EmailClicked, "click"),
    "Bounce": (EmailBounced, "bounce"),
    "Complaint": (EmailComplained, "complaint"),
}

Skipped = Literal["untagged", "bad_tags", "not_engagement"]


@dataclass(frozen=True)
class SesEvent:
    """One SES event as pqlflow handled it (no personal data: safe to log)."""

    event_type: str
    template: str  # the `pqlflow_template` tag send_email put on the message
    suppressed: int  # addresses this event added to the suppression list
    ses_message_id: str | None
    engagement: _EmailEngagement | None = None  # the event published on the pqlflow bus
    skipped: Skipped | None = None  # why none was
    problem: str | None = None  # for bad_tags: which tag (never its value)


def safe_link(url: Any) -> str | None:
    """Scheme, host (and port) and path of a clicked link; never its query, fragment or user info,
    which can carry tokens. None for anything that is not an http(s) URL."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname + (f":{port}" if port else "")
    return urlunsplit((parts.scheme.lower(), host, parts.path, "", ""))


def _unsubscribe_click(url: Any) -> bool:
    """A click on pqlflow's unsubscribe link: a path ending in /unsubscribe with a `token` in its query."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.path.rstrip("/").endswith("/unsubscribe") and "token" in dict(parse_qsl(parts.query))


def engagement_id(ses_message_id: str, event_type: str, timestamp: str, link: str | None = None) -> str:
    """Deterministic from the SES event: a redelivery names the same engagement."""
    key = "\n".join((ses_message_id, event_type, timestamp, link or ""))
    return "en_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def engagement_of(detail: Mapping[str, Any], event_time: str | None = None) -> _EmailEngagement | Skipped:
    """The engagement event an SES event record becomes, or why there is none. Raises
    `pqlflow.channels.email.tags.BadTag` when pqlflow's tags are there but broken."""
    event_type = str(detail.get("eventType") or "")
    if event_type not in ENGAGEMENT:
        return "not_engagement"
    if event_type == "Complaint" and (detail.get("complaint") or {}).get("complaintFeedbackType") == "not-spam":
        return "not_engagement"  # a correction, not a complaint: `suppression.from_ses_event` suppresses nothing either
    if event_type == "Click" and _unsubscribe_click((detail.get("click") or {}).get("link")):
        return "not_engagement"  # someone leaving is not interest (the footer link is also marked ses:no-track)
    mail = detail.get("mail") or {}
    tagged = ses_tags.read(mail.get("tags") or {})
    if tagged is None:
        return "untagged"
    message_id = mail.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise ses_tags.BadTag("SES event has pqlflow tags but no mail.messageId")
    model, key = ENGAGEMENT[event_type]
    body = detail.get(key) or {}
    occurred = str(body.get("timestamp") or mail.get("timestamp") or event_time or "")
    if not occurred:
        raise ses_tags.BadTag(f"SES event has no {key}.timestamp, mail.timestamp or event time")
    link = safe_link(body.get("link")) if event_type == "Click" else None
    fields: dict[str, Any] = {
        "engagement_id": engagement_id(message_id, event_type, occurred, link),
        "action_id": tagged.action_id,
        "transition_id": tagged.transition_id,
        "account_id": tagged.account_id,
        "user_id": tagged.user_id,
        "step": tagged.step,
        "occurred_at": occurred,
        "template": tagged.template,
        "ses_message_id": message_id,
    }
    if event_type == "Click":
        fields["link"] = link
    if event_type == "Bounce":
        bounce_type = body.get("bounceType")
        fields["bounce_type"] = bounce_type if bounce_type in ("Permanent", "Transient") else "Undetermined"
    return model(**fields)


def record_ses_event(
    detail: Mapping[str, Any],
    suppressions: Suppressions,
    publisher: Publisher | None = None,
    event_time: str | None = None,
) -> SesEvent:
    """Add the suppressions an SES event calls for, then publish its engagement event (when it is about
    a tagged nurture email and a publisher is given). A failed publish raises after the suppressions
    are written, so the retry publishes the same event (same engagement id) and suppresses nothing twice."""
    event_type = str(detail.get("eventType") or detail.get("notificationType") or "Unknown")
    mail = detail.get("mail") or {}
    template = ses_tags.template_of(mail.get("tags") or {})
    added = 0
    for entry in from_ses_event(detail, now=clock.now()):
        added += suppressions.add(entry)
    seen = SesEvent(event_type, template, added, mail.get("messageId"))
    if publisher is None:
        return seen
    try:
        engagement = engagement_of(detail, event_time)
    except ses_tags.BadTag as exc:
        return SesEvent(event_type, template, added, seen.ses_message_id, skipped="bad_tags", problem=str(exc))
    if isinstance(engagement, str):
        return SesEvent(event_type, template, added, seen.ses_message_id, skipped=engagement)
    publisher.publish([engagement])
    return SesEvent(event_type, engagement.template, added, seen.ses_message_id, engagement=engagement)


def build(settings: SesEventsSettings | None = None, **clients: Any) -> tuple[SuppressionList, EventPublisher]:
    """The suppression list and the pqlflow bus's publisher, from the function's environment.
    `clients` (dynamodb, events) replace the boto3 clients."""
    settings = settings or from_environ(SesEventsSettings)
    return (
        SuppressionList(settings.TABLE_NAME, clients.get("dynamodb")),
        EventPublisher(settings.EVENT_BUS_NAME, clients.get("events")),
    )
