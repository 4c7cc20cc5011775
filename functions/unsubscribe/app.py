"""The unsubscribe endpoint behind every nurture email's `List-Unsubscribe` link (HTTP API, payload v2).

- `GET ?token=…` shows a confirmation page and changes nothing: mail scanners and link previews fetch
  links, and a GET must not unsubscribe anyone.
- `POST ?token=…` unsubscribes. Mail clients send it themselves for RFC 8058 one-click unsubscribe
  (body `List-Unsubscribe=One-Click`); the confirmation page's button posts the same way.

The token (pqlflow.channels.email.unsubscribe) is checked against the signing secret's current and previous versions;
a forged token gets 400, an expired one 410, and neither changes anything. A valid one records the
address's suppression (`SUP#<sha256>`; the first reason recorded wins) so send_email never mails it
again. Repeating the POST is harmless.

Environment: TABLE_NAME, UNSUBSCRIBE_SECRET_ARN; optional TEMPLATES_DIR, POSTAL_ADDRESS.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from aws_lambda_powertools.metrics import MetricUnit
from pqlflow.channels.email.mail import Brand, EmailTemplates, find_templates_dir, load_brand
from pqlflow.channels.email.unsubscribe import ExpiredToken, InvalidToken, SigningKeys, verify
from pqlflow.kernel import clock
from pqlflow.kernel.observability import logger, metrics, tracer
from pqlflow.kernel.settings import from_environ
from pqlflow.nurture.suppression import Suppression, SuppressionList
from pydantic import BaseModel, ConfigDict, Field

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
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    UNSUBSCRIBE_SECRET_ARN: str = Field(min_length=1)
    TEMPLATES_DIR: str | None = None
    POSTAL_ADDRESS: str | None = None


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
        if method == "GET":
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


def _form(event: dict[str, Any]) -> dict[str, list[str]]:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    return parse_qs(body[:MAX_BODY_BYTES], keep_blank_values=True)


_service: UnsubscribeService | None = None


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


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: Any, *, service: UnsubscribeService | None = None
) -> dict[str, Any]:
    global _service
    if service is None:
        _service = _service or build()
        service = _service
    method = (event.get("requestContext", {}).get("http", {}).get("method") or "GET").upper()
    form = _form(event) if method == "POST" else {}
    query = event.get("queryStringParameters") or {}
    token = query.get("token") or (form.get("token") or [""])[0]
    result = service.decide(method, token, form)
    action = f"{event.get('rawPath') or '/'}?token={quote(token, safe='')}"
    logger.info(
        "unsubscribe",
        extra={
            "method": method,
            "status": result.status,
            "state": result.state,
            "recorded": result.unsubscribed,
        },
    )
    metrics.add_metric(name=f"Unsubscribe_{result.state}", unit=MetricUnit.Count, value=1)
    headers = dict(HEADERS)
    if result.status == 405:
        headers["Allow"] = "GET, POST"
    return {"statusCode": result.status, "headers": headers, "body": service.page(result.state, action)}
