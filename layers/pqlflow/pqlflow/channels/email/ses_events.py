"""SES's own events about the mail it sent: what each one is, and the suppressions it adds.

The configuration set's EventBridge event destination publishes them (`Email Bounced`, `Email Complaint
Received`, `Email Delivered`, `Email Opened`…). A permanent bounce or a complaint suppresses the
address for good (`pqlflow.nurture.suppression.from_ses_event`); a redelivered event is harmless since
the first suppression wins. The rest suppress nothing and are only counted, per template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.kernel import clock
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import SuppressionList, from_ses_event


class SesEventsSettings(BaseModel):
    """The ses_events function's environment (validated once per cold start)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)


@dataclass(frozen=True)
class SesEvent:
    """One SES event as pqlflow counts it (no personal data: safe to log)."""

    event_type: str
    template: str  # the `pqlflow_template` tag send_email put on the message
    suppressed: int  # addresses this event added to the suppression list
    ses_message_id: str | None


def record_ses_event(detail: Mapping[str, Any], suppressions: SuppressionList) -> SesEvent:
    """Read the EventBridge `detail` of an SES event and add the suppressions it calls for."""
    event_type = str(detail.get("eventType") or detail.get("notificationType") or "Unknown")
    tags = (detail.get("mail") or {}).get("tags") or {}
    template = (tags.get("pqlflow_template") or ["unknown"])[0]
    added = 0
    for entry in from_ses_event(detail, now=clock.now()):
        added += suppressions.add(entry)
    return SesEvent(
        event_type=event_type,
        template=template,
        suppressed=added,
        ses_message_id=(detail.get("mail") or {}).get("messageId"),
    )


def build(settings: SesEventsSettings | None = None, client: Any = None) -> SuppressionList:
    settings = settings or from_environ(SesEventsSettings)
    return SuppressionList(settings.TABLE_NAME, client)
