"""The real Segment (analytics-python) and RudderStack (rudder-sdk-python) SDKs pointed at `pqlflow dev`:
their batched identify, group, track and page calls reach usage state through the collection API, and an
account that signs in five times is a PQL."""

from __future__ import annotations

import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pqlflow.cli.dev import DevStack, serve
from pqlflow.collect.keys import DEV_WRITE_KEY
from pqlflow.ingest.store import read_usage
from pqlflow.local.replay import _table_name
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics import Client as SegmentClient

from tests.e2e.conftest import DEFINITION, TEMPLATE
from tests.e2e.test_dev import wait_for


class Printed:
    """What the dev stack prints (its `out`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, Printed]]:
    definition = Path(tmp_path_factory.mktemp("collect")) / "definition.yaml"
    definition.write_text(DEFINITION)  # five sign-ins make a PQL
    stop, started, printed = threading.Event(), [], Printed()
    thread = threading.Thread(target=serve, args=(TEMPLATE,), daemon=True, kwargs={
        "port": 0, "http_port": 0, "definition": definition, "stop": stop, "out": printed, "ready": started.append})
    thread.start()
    try:
        assert wait_for(lambda: bool(started)), "the dev stack did not start"
        yield started[0], printed
    finally:
        if started:  # moto's backends outlive its server in this process: leave none for the next dev stack
            reset = urllib.request.Request(f"{started[0].endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=30).close()  # noqa: S310 - the local moto server
        stop.set()
        thread.join(timeout=30)


def usage_count(stack: DevStack, account: str, event: str) -> int:
    with stack.lock:
        usage = read_usage(stack.runtime.client("dynamodb"), _table_name(stack.runtime), account)
    return usage.count(event) if usage is not None else 0


def send_a_trial(client: Any, account: str, user: str) -> None:
    """What a product's backend sends for a user who joins an account, looks at pricing and signs in 5 times."""
    context = {"groupId": account}
    client.identify(user, {"plan": "free", "role": "admin"}, context=context)
    client.group(user, account, {"name": "Acme", "employees": 12, "plan": "free"})
    client.page(user, name="Pricing", properties={"path": "/pricing"}, context=context)
    for _ in range(5):
        client.track(user, "Signed In", {"method": "password"}, context=context)
    client.flush()


def pql_printed(printed: Printed, account: str) -> bool:
    return any(f"PQL       {account} qualified" in line for line in "".join(list(printed.lines)).splitlines())


def a_trial_is_counted_and_qualifies(dev: tuple[DevStack, Printed], client: Any, errors: list[Any], account: str,
                                     user: str) -> None:
    """When a trial user's calls are sent through `client` and flushed, then the SDK saw no error, usage state
    counts every call, and the account qualifies."""
    stack, printed = dev
    send_a_trial(client, account, user)
    client.shutdown()
    assert errors == []
    assert wait_for(lambda: usage_count(stack, account, "Signed In") == 5), usage_count(stack, account, "Signed In")
    assert usage_count(stack, account, "Page Viewed") == 1
    assert wait_for(lambda: pql_printed(printed, account)), "no PQL Qualified for the account"


def test_the_dev_stack_prints_the_collection_api_and_its_write_key(dev: tuple[DevStack, Printed]) -> None:
    stack, printed = dev
    banner = "".join(printed.lines)
    assert f"{stack.http_url}/v1/batch" in banner and DEV_WRITE_KEY in banner


def test_segment_analytics_python_batches_reach_usage_state_and_make_a_pql(dev: tuple[DevStack, Printed]) -> None:
    errors: list[Any] = []
    # Given Segment's Python SDK with pqlflow dev as its host, gzip on, batches of up to 100
    client = SegmentClient(write_key=DEV_WRITE_KEY, host=dev[0].http_url, gzip=True, upload_size=100,
                           on_error=lambda error, batch: errors.append(error))
    # When a trial user's calls are sent and flushed, then they are counted and the account qualifies
    a_trial_is_counted_and_qualifies(dev, client, errors, f"seg-{uuid.uuid4().hex[:8]}", "ann")


def test_rudderstack_python_sdk_batches_reach_usage_state_and_make_a_pql(dev: tuple[DevStack, Printed]) -> None:
    errors: list[Any] = []
    # Given RudderStack's Python SDK with pqlflow dev as its data plane (it gzips by default)
    client = RudderClient(write_key=DEV_WRITE_KEY, host=dev[0].http_url, upload_size=100,
                          on_error=lambda error, batch: errors.append(error))
    # When the same calls are sent and flushed, then they are counted and the account qualifies too
    a_trial_is_counted_and_qualifies(dev, client, errors, f"rud-{uuid.uuid4().hex[:8]}", "bob")
