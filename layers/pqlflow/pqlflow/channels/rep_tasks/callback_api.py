"""The rep-task callbacks HTTP API (public routes of the HTTP API; each request is verified by its
signature) as a Powertools resolver: `POST /rep-tasks/webhook`, `/rep-tasks/slack`, `/rep-tasks/hubspot`.

A verified report of a closed task records it on the task item and publishes `Rep Task Closed` once per
task, whichever connector reports first and however often: the request that records the closure
claims publishing it (as the offers API does for its events), a failed publish releases the claim and
answers 500 so the connector's retry publishes, and later reports answer 200 with nothing published.
Answers: 401 with the reason for a bad, missing or stale signature; 400 naming the field for a signed
body pqlflow cannot read; 404 for a task pqlflow does not know (logged without any id from the request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import BadRequestError, NotFoundError, UnauthorizedError
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pqlflow.channels.rep_tasks import callbacks
from pqlflow.channels.rep_tasks.callbacks import CallbackSecrets, Closure
from pqlflow.channels.rep_tasks.service import connector_secret
from pqlflow.channels.rep_tasks.store import RepTaskStore
from pqlflow.contracts.emitted import RepTaskClosed, _Detail
from pqlflow.kernel import clock
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.observability import logger, metrics

_TASK_ID = re.compile(r"^rt_[0-9a-f]{24}$")
Result = Literal["closed", "duplicate", "unknown"]


class Publisher(Protocol):
    def publish(self, details: Sequence[_Detail]) -> int: ...


def engagement_id_for(task_id: str) -> str:
    """Deterministic: one `Rep Task Closed` per task, whichever connector reports it."""
    return "en_" + hashlib.sha256(f"{task_id}\nclosed".encode()).hexdigest()[:24]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def close(closure: Closure, store: RepTaskStore, publisher: Publisher) -> Result:
    """Record one reported closure and publish `Rep Task Closed` if this request is the one to."""
    if closure.task_id is not None and not _TASK_ID.match(closure.task_id):
        return "unknown"
    task = store.find(closure.task_id, hubspot_id=closure.hubspot_id)
    if task is None:
        return "unknown"
    now = clock.now()
    at = closure.occurred_at
    if at is None or not math.isfinite(at) or not 0 < at <= now + callbacks.REPLAY_WINDOW:
        at = now  # a connector's time pqlflow cannot use (none, in the future, absurd): when it heard of it
    claimed = store.claim_close(task, closed_at=_iso(at), outcome=closure.outcome, via=closure.via, now=now)
    if claimed is None:
        return "duplicate"
    assert claimed.closed_at and claimed.close_outcome and claimed.closed_via
    event = RepTaskClosed(
        engagement_id=engagement_id_for(claimed.task_id),
        action_id=claimed.action_id,
        transition_id=claimed.transition_id,
        account_id=claimed.account_id,
        step=claimed.step,
        occurred_at=claimed.closed_at,
        task_id=claimed.task_id,
        outcome=claimed.close_outcome,
        via=claimed.closed_via,
    )
    try:
        publisher.publish([event])
    except Exception:
        store.release_close(claimed)  # the connector's retry publishes it
        raise
    store.mark_close_published(claimed)
    metrics.add_metric(name="RepTasksClosed", unit=MetricUnit.Count, value=1)
    logger.info("rep task closed", extra={"task_id": claimed.task_id, "via": claimed.closed_via})
    return "closed"


class RepTaskEventsSettings(BaseModel):
    """The rep_task_events function's environment (validated once per cold start)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    CALLBACK_SECRET_ARN: str = Field(min_length=1)


def load_secrets(arn: str, client: Any = None) -> CallbackSecrets:
    """The callback secret, fetched once per cold start; errors name the field, never the value."""
    doc = connector_secret(arn, client)
    try:
        return CallbackSecrets.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"callback secret: field {where}: {first['msg']}") from None


def build_app(
    store: RepTaskStore, publisher: Publisher, secrets: Callable[[], CallbackSecrets]
) -> APIGatewayHttpResolver:
    """The callback routes over one store and publisher; `secrets` gives the callback secret (read once
    per cold start by the caller)."""
    app = APIGatewayHttpResolver()

    def body() -> bytes:
        """The exact bytes the sender signed: a base64 body decoded here, not as UTF-8 text (a body that is
        not UTF-8 is then a signature mismatch or a 400, never a crash)."""
        event = app.current_event
        raw = event.body or ""
        if event.is_base64_encoded:
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequestError("body: not valid base64") from None
        return raw.encode("utf-8", "surrogateescape")

    def headers() -> dict[str, str]:
        return dict(app.current_event.headers or {})

    def verified(via: str, check: Callable[[], None]) -> None:
        try:
            check()
        except callbacks.Unverified as exc:
            metrics.add_metric(name="RepTaskCallbacksRefused", unit=MetricUnit.Count, value=1)
            logger.warning("rep task callback refused", extra={"via": via, "reason": str(exc)})
            raise UnauthorizedError(f"{via} callback refused: {exc}") from None

    def not_configured(via: str) -> callbacks.Unverified:
        return callbacks.Unverified(f"no {via} key in the callback secret: this endpoint is not set up")

    def answer(results: list[Result]) -> dict[str, Any]:
        counts = {r: results.count(r) for r in ("closed", "duplicate", "unknown")}
        if results and counts["unknown"] == len(results):
            metrics.add_metric(name="RepTaskCallbacksUnknown", unit=MetricUnit.Count, value=len(results))
            logger.info("rep task callback for an unknown task")  # no id: it came from the request
            raise NotFoundError("task not found")
        return counts

    def read(reader: Callable[[bytes], Any]) -> Any:
        try:
            return reader(body())
        except callbacks.BadCallback as exc:
            raise BadRequestError(str(exc)) from None

    @app.post("/rep-tasks/webhook")
    def from_webhook() -> dict[str, Any]:
        cfg = secrets().webhook

        def check() -> None:
            if cfg is None:
                raise not_configured("webhook")
            callbacks.verify_webhook(cfg.secret, headers(), body(), clock.now())

        verified("webhook", check)
        return answer([close(read(callbacks.read_webhook), store, publisher)])

    @app.post("/rep-tasks/slack")
    def from_slack() -> Response[str]:
        cfg = secrets().slack

        def check() -> None:
            if cfg is None:
                raise not_configured("slack")
            callbacks.verify_slack(cfg.signing_secret, headers(), body(), clock.now())

        verified("slack", check)
        closure = read(callbacks.read_slack)
        if closure is not None:
            answer([close(closure, store, publisher)])
        # Slack wants a 200 within 3 seconds; the body is not shown to anyone.
        return Response(status_code=200, content_type="text/plain", body="")

    @app.post("/rep-tasks/hubspot")
    def from_hubspot() -> dict[str, Any]:
        cfg = secrets().hubspot
        event = app.current_event

        def check() -> None:
            if cfg is None:
                raise not_configured("hubspot")
            query = f"?{event.raw_query_string}" if event.raw_query_string else ""
            uri = cfg.webhook_url or f"https://{event.request_context.domain_name}{event.raw_path}{query}"
            callbacks.verify_hubspot(cfg.client_secret, headers(), "POST", uri, body(), clock.now())

        verified("hubspot", check)
        closures = read(callbacks.read_hubspot)
        if not closures:
            return {"closed": 0, "duplicate": 0, "unknown": 0}
        return answer([close(c, store, publisher) for c in closures])

    return app
