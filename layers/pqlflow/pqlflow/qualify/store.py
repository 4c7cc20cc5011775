"""Published PQL definitions in the table: versions, the ACTIVE pointer, and a cached read of it.

Items (pk `DEF`): `v#000001`, `v#000002`, ... hold each published version's YAML text (kind
`definition`); `ACTIVE` (kind `definition_active`) names the version in force and carries its text,
so a cold qualify function loads the definition with one GetItem. A warm one keeps it for
`cache_seconds` (DEFINITION_CACHE_SECONDS). Until something is published, the bundled default
(`pqlflow/defaults/definition.yaml`) applies.

Publishing a version number that already exists with the same text re-activates it (a rollback);
with different text it is refused: bump `version` in the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient
from pqlflow.kernel.errors import UsageError
from pqlflow.qualify.definition import parse_definition
from pqlflow.qualify.language import Definition, DefinitionError

PK = "DEF"
ACTIVE_SK = "ACTIVE"
DEFAULT_PATH = Path(__file__).parent / "defaults" / "definition.yaml"


def version_sk(version: int) -> str:
    return f"v#{version:06d}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def bundled_default() -> Definition:
    """The definition in force until one is published."""
    return parse_definition(DEFAULT_PATH.read_text(encoding="utf-8"), "pqlflow/defaults/definition.yaml")


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    reactivated: bool  # the same text was already stored under this version


class DefinitionStore:
    """Reads the active definition (cached) and publishes new versions. Adapter: the only boto3 here."""

    client = AwsClient("dynamodb")

    def __init__(
        self,
        table: str,
        client: Any = None,
        cache_seconds: float = 60.0,
        now: Callable[[], float] = clock.now,
    ):
        self.table = table
        self.cache_seconds = cache_seconds
        self.client = client
        self._now = now
        self._cached: Definition | None = None
        self._loaded_at: float | None = None
        self.reads = 0  # GetItem calls made (the benchmark and tests check the cache)
        self.problem: str | None = None  # why the stored definition was not used, if it was not

    # ---- reading ----------------------------------------------------------------------------------

    def active(self) -> Definition:
        """The definition in force: from the cache while fresh, else one GetItem of the ACTIVE item."""
        now = self._now()
        if (
            self._cached is not None
            and self._loaded_at is not None
            and 0 <= now - self._loaded_at < self.cache_seconds  # time going backwards (replay) is stale
        ):
            return self._cached
        self.reads += 1
        item = self.client.get_item(TableName=self.table, Key=_key(ACTIVE_SK)).get("Item")
        if item is None:
            defn = bundled_default()
            self.problem = None
        else:
            text = item["text"]["S"]
            source = f"published definition v{item['version']['N']}"
            try:
                defn = parse_definition(text, source)
                self.problem = None
            except DefinitionError as exc:
                # Keep evaluating with what worked last rather than failing every record.
                self.problem = str(exc)
                defn = self._cached or bundled_default()
        self._cached = defn
        self._loaded_at = now
        return defn

    def invalidate(self) -> None:
        self._cached = None
        self._loaded_at = None

    def versions(self) -> list[dict[str, Any]]:
        """Every published version (name, version, published_at, sha256, active), oldest first."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": PK}},
        }
        while True:
            page = self.client.query(**kwargs)
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        active = next((int(i["version"]["N"]) for i in items if i["sk"]["S"] == ACTIVE_SK), None)
        return [
            {
                "name": i["name"]["S"],
                "version": int(i["version"]["N"]),
                "published_at": i["published_at"]["S"],
                "sha256": i["sha256"]["S"],
                "active": int(i["version"]["N"]) == active,
            }
            for i in items
            if i["sk"]["S"].startswith("v#")
        ]

    # ---- publishing -------------------------------------------------------------------------------

    def publish(self, text: str, source: str = "<definition>") -> Published:
        """Validate and store `text` as its `version`, and make it the active one."""
        defn = parse_definition(text, source)
        sha = digest(text)
        published_at = (
            datetime.fromtimestamp(clock.now(), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        item = {
            **_key(version_sk(defn.version)),
            "kind": {"S": "definition"},
            "name": {"S": defn.name},
            "version": {"N": str(defn.version)},
            "text": {"S": text},
            "sha256": {"S": sha},
            "published_at": {"S": published_at},
        }
        reactivated = False
        errors = self.client.exceptions
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except errors.ConditionalCheckFailedException:
            existing = self.client.get_item(TableName=self.table, Key=_key(version_sk(defn.version)))["Item"]
            if existing["sha256"]["S"] != sha:
                raise UsageError(
                    f"{source}: version: {defn.version} is already published with different content "
                    f"(published {existing['published_at']['S']}); give the changed definition a new version"
                ) from None
            reactivated = True
            item = existing
        self.client.put_item(
            TableName=self.table, Item={**item, **_key(ACTIVE_SK), "kind": {"S": "definition_active"}}
        )
        self.invalidate()
        return Published(defn.name, defn.version, reactivated)


def _key(sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": PK}, "sk": {"S": sk}}
