"""The MIME message a nurture email becomes, with the RFC 8058 one-click unsubscribe headers.

`compose(action, ...)` is the whole way from a `Nurture Action` to that message: recipient, signed
unsubscribe link, template context, render, then `build_message` (RFC 5322 multipart/alternative).
`message_bytes` gives the exact bytes handed to SES (`Content.Raw`). Pure: no AWS, no environment reads.

The recipient's display name and the subject come from traits anyone can set, so both go through
`context.display_text`: no control or invisible characters (a NUL would reach the To header) and no
RFC 2047 encoded-word syntax (a name "=?utf-8?b?...?=" would read "Bcc: ..." in mail clients). SES's
destination is the recipient's address alone, whatever the headers say.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pqlflow.channels.email import unsubscribe
from pqlflow.channels.email.brand import Brand
from pqlflow.channels.email.context import (
    Recipient,
    build_context,
    choose_template,
    display_text,
    qualification_of,
    resolve_recipient,
)
from pqlflow.channels.email.errors import NoRecipient
from pqlflow.channels.email.render import EmailTemplates, RenderedEmail
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel import clock
from pqlflow.nurture import suppression

ONE_CLICK = "List-Unsubscribe=One-Click"


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    recipient: Recipient,
    unsubscribe_url: str,
    message_key: str,
    sent_at: float,
) -> EmailMessage:
    """An RFC 5322 multipart/alternative message (text first, then HTML) with RFC 8058 one-click headers.

    `message_key` (the action id) makes the Message-ID deterministic, so a resend of the same action
    would carry the same id and mail systems can tell it is the same message.
    """
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    # Names come from traits anyone can set: no control characters, no encoded-words (`display_text`).
    display = display_text(recipient.name, limit=78) or ""
    try:
        msg["To"] = Address(display_name=display, addr_spec=recipient.email)
    except (ValueError, IndexError) as exc:
        raise NoRecipient(
            f"recipient {recipient.user_id!r}: address is not valid for an email header"
        ) from exc
    msg["Subject"] = display_text(rendered.subject) or rendered.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(sent_at, UTC))
    domain = sender.rsplit("@", 1)[-1].strip(" >") or "pqlflow.invalid"
    msg["Message-ID"] = f"<{hashlib.sha256(message_key.encode()).hexdigest()[:32]}@{domain}>"
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    msg["X-Pqlflow-Template"] = rendered.template
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return msg


def message_bytes(msg: EmailMessage) -> bytes:
    """The exact bytes to send (CRLF line endings, as SMTP and SES `Content.Raw` expect)."""
    return msg.as_bytes(policy=policy.SMTP)


def unsubscribe_link(base_url: str, token: str) -> str:
    """`base_url` with `token=<token>` added to its query."""
    parts = urlsplit(base_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class Composed:
    """One action's email, ready to send."""

    recipient: Recipient
    rendered: RenderedEmail
    message: EmailMessage


def compose(
    action: NurtureAction,
    *,
    templates: EmailTemplates,
    brand: Brand,
    sender: str,
    unsubscribe_url: str,
    signing_key: bytes,
    token_ttl_seconds: int = unsubscribe.DEFAULT_TTL_DAYS * 86400,
    template: str | None = None,
) -> Composed:
    """Everything between a Nurture Action and the MIME message: recipient, token, context, render.

    `template` overrides the action's (previews). Raises `NoRecipient`, `MailError` or `TemplateError`.
    """
    qualification = qualification_of(action)
    recipient = resolve_recipient(action, qualification)
    name = templates.check_name(template or choose_template(action))
    now = clock.now()
    token = unsubscribe.issue(
        signing_key,
        address_hash=suppression.address_hash(recipient.email),
        account_id=action.account_id,
        user_id=recipient.user_id,
        ttl_seconds=token_ttl_seconds,
        now=now,
    )
    link = unsubscribe_link(unsubscribe_url, token)
    context = build_context(
        action,
        template=name,
        recipient=recipient,
        brand=brand,
        unsubscribe_url=link,
        qualification=qualification,
    )
    rendered = templates.render(name, context)
    message = build_message(
        rendered,
        sender=sender,
        recipient=recipient,
        unsubscribe_url=link,
        message_key=action.action_id,
        sent_at=now,
    )
    return Composed(recipient, rendered, message)
