"""The unsubscribe endpoint behind every nurture email's `List-Unsubscribe` link (HTTP API, payload v2).

`read_request` takes what matters from the request (method, token, form); `UnsubscribeService.decide`
checks the token (`pqlflow.channels.email.unsubscribe`) and records the suppression; `respond` renders
the page for the outcome with headers that keep it out of caches, referrers, frames and search engines.
`build` wires the service from the unsubscribe function's environment, `UnsubscribeSettings`.

What each request gets (the token is checked first; a malformed one is as invalid as a forged one):

- a forged, altered or malformed token: 400 and the "isn't valid" page; an expired one: 410. Never a 500.
- `GET`: the confirmation page; nothing changes (mail scanners and link previews fetch links).
- `POST` with RFC 8058's one-click body, `List-Unsubscribe=One-Click` (form-urlencoded or
  multipart/form-data, as RFC 8058 section 3.2 allows; the page's button sends it too): unsubscribes.
- `POST` without that body: the confirmation page, and nothing changes. RFC 8058 makes the body the
  sign of a deliberate one-click unsubscribe; a POST without it is something else (a proxy or scanner
  replaying the URL, a form on another site) and must not unsubscribe anyone. The person still gets the
  page, whose button completes it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs, quote

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.email.brand import Brand, load_brand
from pqlflow.channels.email.render import EmailTemplates, find_templates_dir
from pqlflow.channels.email.unsubscribe import ExpiredToken, InvalidToken, SigningKeys, verify
from pqlflow.kernel import clock
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import Suppression, SuppressionList

PAGE = "web/unsubscribe.html"
MAX_BODY_BYTES = 4096
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class UnsubscribeSettings(BaseModel):
    """The unsubscribe function's environment (validated once per cold start)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    UNSUBSCRIBE_SECRET_ARN: str = Field(min_length=1)
    TEMPLATES_DIR: str | None = None
    POSTAL_ADDRESS: str | None = None


@dataclass(frozen=True)
class UnsubscribeRequest:
    """What the endpoint reads from an HTTP API (payload v2) request."""

    method: str
    token: str
    form: dict[str, list[str]]
    action: str  # where the page's button posts: this path, with the token


@dataclass(frozen=True)
class Response:
    status: int
    state: str
    unsubscribed: bool = False


@dataclass
class UnsubscribeService:
    """Checks tokens and records suppressions; renders the page for each outcome."""

    secrets: Callable[[], Sequence[bytes]]
    suppressions: SuppressionList
    pages: EmailTemplates
    brand: Brand

    def decide(self, method: str, token: str, form: dict[str, list[str]]) -> Response:
        if method not in ("GET", "POST"):
            return Response(405, "invalid")
        try:
            subscriber = verify(self.secrets(), token, now=clock.now())
        except ExpiredToken:
            return Response(410, "expired")
        except InvalidToken:
            return Response(400, "invalid")
        if method == "GET" or not is_one_click(form):
            already = self.suppressions.is_suppressed(subscriber.address_hash)
            return Response(200, "done" if already else "confirm")
        source = "page" if form.get("source") == ["page"] else "one-click"
        added = self.suppressions.add(
            Suppression(
                address_hash=subscriber.address_hash,
                reason="unsubscribed",
                source=f"unsubscribe:{source}",
                at=clock.now(),
                account_id=subscriber.account_id,
                user_id=subscriber.user_id,
            )
        )
        return Response(200, "done", unsubscribed=added)

    def page(self, state: str, action: str) -> str:
        return self.pages.render_page(
            PAGE, {"state": state, "action": action, "brand": self.brand.model_dump()}
        )

    def respond(self, result: Response, action: str) -> dict[str, Any]:
        """The HTTP API response: the page for `result.state`, its status and headers."""
        headers = dict(HEADERS)
        if result.status == 405:
            headers["Allow"] = "GET, POST"
        return {"statusCode": result.status, "headers": headers, "body": self.page(result.state, action)}


def is_one_click(form: Mapping[str, list[str]]) -> bool:
    """Whether a POST's form carries RFC 8058's `List-Unsubscribe=One-Click` (name and value in any case)."""
    return any(
        name.strip().lower() == "list-unsubscribe" and any(v.strip().lower() == "one-click" for v in values)
        for name, values in form.items()
    )


def read_request(event: Mapping[str, Any]) -> UnsubscribeRequest:
    """The method, the token (query string, else form field) and the form of a payload v2 event."""
    method = (event.get("requestContext", {}).get("http", {}).get("method") or "GET").upper()
    form = _form(event) if method == "POST" else {}
    query = event.get("queryStringParameters") or {}
    token = query.get("token") or (form.get("token") or [""])[0]
    # errors="replace": a token that is not even valid Unicode (a lone surrogate) is invalid, not a crash.
    action = f"{event.get('rawPath') or '/'}?token={quote(token, safe='', errors='replace')}"
    return UnsubscribeRequest(method=method, token=token, form=form, action=action)


def _form(event: Mapping[str, Any]) -> dict[str, list[str]]:
    """The POST body's fields: form-urlencoded, or multipart/form-data (RFC 8058 prefers it). A body
    that does not decode has no fields."""
    raw = event.get("body") or ""
    try:
        data = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        return {}
    data = data[:MAX_BODY_BYTES]
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        return _multipart(content_type, data)
    return parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True)


def _multipart(content_type: str, data: bytes) -> dict[str, list[str]]:
    # The stdlib's MIME parser reads form-data parts (the way the cgi module did before it was removed).
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + data
    )
    fields: dict[str, list[str]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, []).append(payload.decode("utf-8", "replace").strip())
    return fields


def build(settings: UnsubscribeSettings | None = None, **clients: Any) -> UnsubscribeService:
    """The service with real adapters; built once per cold start (the secret is fetched on first use)."""
    settings = settings or from_environ(UnsubscribeSettings)
    root = find_templates_dir(settings.TEMPLATES_DIR)
    keys = SigningKeys(settings.UNSUBSCRIBE_SECRET_ARN, clients.get("secretsmanager"))
    return UnsubscribeService(
        secrets=keys.all,
        suppressions=SuppressionList(settings.TABLE_NAME, clients.get("dynamodb")),
        pages=EmailTemplates(root),
        brand=load_brand(root, {"postal_address": settings.POSTAL_ADDRESS}),
    )
