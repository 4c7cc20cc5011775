"""Deliver rep tasks to where reps work through one `Connector` interface: each provider (HubSpot, Slack,
a signed webhook) is a module beside this one, registered in `PROVIDERS`, configured from the connector
secret. Every call carries the task's idempotency key; `http` retries transient failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from pqlflow.channels.rep_tasks import hubspot, slack, webhook
from pqlflow.channels.rep_tasks.http import Http
from pqlflow.channels.rep_tasks.task import RepTask
from pqlflow.kernel.errors import UsageError

C = TypeVar("C", bound=BaseModel)


class Connector(Protocol):
    name: str

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        """Deliver the task once (idempotent on task.idempotency_key); returns (reference, attempts)."""
        ...


@dataclass(frozen=True)
class Provider(Generic[C]):
    """A provider module's configuration model (its object in the secret) and how it makes its connector."""

    config: type[C]
    connect: Callable[[C, Http], Connector]


# A new provider is a module with its connector, config model and `connect`, and one line here.
PROVIDERS: dict[str, Provider[Any]] = {
    "hubspot": Provider(hubspot.HubSpotConfig, hubspot.connect),
    "slack": Provider(slack.SlackConfig, slack.connect),
    "webhook": Provider(webhook.WebhookConfig, webhook.connect),
}


def build_connectors(names: list[str], secret: Mapping[str, Any], http: Http | None = None) -> list[Connector]:
    """Connectors named in `names`, configured from the secret document
    `{"hubspot": {"token": ...}, "slack": {"webhook_url": ...}, "webhook": {"url": ..., "secret": ...}}`.
    Errors name the connector and field, never the value."""
    http = http or Http()
    out: list[Connector] = []
    for name in names:
        if name not in PROVIDERS:
            raise UsageError(f"CONNECTORS: unknown connector {name!r} (known: {', '.join(sorted(PROVIDERS))})")
        raw = secret.get(name)
        if not isinstance(raw, Mapping):
            raise UsageError(f"connector secret: missing object {name!r}")
        provider = PROVIDERS[name]
        try:
            cfg = provider.config.model_validate(dict(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"connector secret: field {name}.{where}: {first['msg']}") from None
        out.append(provider.connect(cfg, http))
    return out


def parse_names(value: str) -> list[str]:
    """`"hubspot, slack"` → `["hubspot", "slack"]` (order kept, duplicates dropped)."""
    names: list[str] = []
    for part in value.split(","):
        name = part.strip().lower()
        if name and name not in names:
            names.append(name)
    return names
