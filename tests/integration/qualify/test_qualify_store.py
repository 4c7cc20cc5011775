"""Publishing definitions (`pqlflow definition publish`) and reading the active one with a cache, on moto."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from pqlflow.cli import main
from pqlflow.qualify.store import DefinitionStore, bundled_default

ROOT = Path(__file__).resolve().parents[3]
SLACK = ROOT / "examples" / "definitions" / "slack-messages.yaml"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_publish_stores_the_version_and_makes_it_active(
    table_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the slack example is published from the command line
    assert main(["definition", "publish", str(SLACK), "--table", table_name]) == 0

    # Then it says so, the version item and the ACTIVE pointer exist, and the function would load it
    assert "published slack-messages v1" in capsys.readouterr().out
    ddb = boto3.client("dynamodb")
    keys = {i["sk"]["S"]: i["kind"]["S"] for i in ddb.scan(TableName=table_name)["Items"]}
    assert keys == {"v#000001": "definition", "ACTIVE": "definition_active"}
    assert DefinitionStore(table_name).active().name == "slack-messages"


def test_a_new_version_replaces_the_active_one_and_old_ones_can_be_reactivated(
    table_name: str, tmp_path: Path
) -> None:
    store = DefinitionStore(table_name, cache_seconds=0)
    v1 = SLACK.read_text()
    v2 = v1.replace("version: 1", "version: 2").replace("gte: 2000", "gte: 1500")
    store.publish(v1)
    store.publish(v2)
    assert store.active().version == 2
    assert store.publish(v1).reactivated
    assert store.active().version == 1
    assert [(v["version"], v["active"]) for v in store.versions()] == [(1, True), (2, False)]


def test_changed_content_under_a_published_version_is_refused(
    table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["definition", "publish", str(SLACK), "--table", table_name]) == 0
    changed = tmp_path / "slack.yaml"
    changed.write_text(SLACK.read_text().replace("gte: 2000", "gte: 1000"))
    assert main(["definition", "publish", str(changed), "--table", table_name]) == 2
    assert "version: 1 is already published with different content" in capsys.readouterr().err


def test_an_invalid_file_never_reaches_the_table(
    table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\nqualify: {signal: nope, gte: 1}\n")
    assert main(["definition", "publish", str(bad), "--table", table_name]) == 2
    assert f"{bad}:3: qualify.signal: unknown signal 'nope'" in capsys.readouterr().err
    assert boto3.client("dynamodb").scan(TableName=table_name)["Items"] == []


def test_publish_without_a_table_says_how_to_name_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TABLE_NAME", raising=False)
    assert main(["definition", "publish", str(SLACK)]) == 2
    assert "--table" in capsys.readouterr().err


def test_the_active_definition_is_cached_for_the_configured_time(table_name: str) -> None:
    # Given a store with a 60-second cache on a simulated clock, and nothing published
    clock = Clock()
    store = DefinitionStore(table_name, cache_seconds=60, now=clock)
    assert store.active() == bundled_default()

    # When a definition is published elsewhere, the warm store keeps the old one until the cache expires
    DefinitionStore(table_name).publish(SLACK.read_text())
    clock.t += 59
    assert store.active().name == "pqlflow-default"
    clock.t += 2
    assert store.active().name == "slack-messages"
    assert store.reads == 2


def test_time_going_backwards_reloads_the_definition(table_name: str) -> None:
    # Given a warm store, then a replay that restarts simulated time earlier in the same process
    clock = Clock()
    store = DefinitionStore(table_name, cache_seconds=60, now=clock)
    store.active()
    DefinitionStore(table_name).publish(SLACK.read_text())
    clock.t -= 86_400
    # When the store is asked again, then it reads the definition instead of trusting a cache "from the future"
    assert store.active().name == "slack-messages"


def test_a_stored_definition_that_no_longer_validates_keeps_the_last_good_one(table_name: str) -> None:
    clock = Clock()
    store = DefinitionStore(table_name, cache_seconds=1, now=clock)
    DefinitionStore(table_name).publish(SLACK.read_text())
    assert store.active().name == "slack-messages"
    boto3.client("dynamodb").update_item(
        TableName=table_name,
        Key={"pk": {"S": "DEF"}, "sk": {"S": "ACTIVE"}},
        UpdateExpression="SET #t = :t",
        ExpressionAttributeNames={"#t": "text"},
        ExpressionAttributeValues={":t": {"S": "name: broken\n"}},
    )
    clock.t += 5
    assert store.active().name == "slack-messages"
    assert store.problem is not None and "published definition v1" in store.problem
