"""What goes wrong with a nurture email: it cannot be built from its action, or SES refused it."""

from __future__ import annotations


class MailError(Exception):
    """A message cannot be built from this action (bad template name, unknown offer, no recipient)."""


class NoRecipient(MailError):
    """The action names no user with a usable email address."""


class TemplateError(MailError):
    """A template failed to render; the message names the template file and line."""


class SendRejected(Exception):
    """SES answered and did not accept the message: it was certainly not sent, so a retry is safe."""
