"""`pqlflow dev`: a live local stack on 127.0.0.1 — SDK calls to its endpoint run the functions; HTTP API served."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import boto3
from pqlflow.cli.dev import serve

from tests.e2e.conftest import TEMPLATE


def wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def http_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_dev_stack_reacts_to_sdk_events_and_serves_the_http_api():
    # Given the dev stack running on free ports of 127.0.0.1 in a thread
    stop = threading.Event()
    started: list = []
    printed: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            printed.append(text)

        def flush(self) -> None:
            pass

    thread = threading.Thread(
        target=serve, args=(TEMPLATE,),
        kwargs={"port": 0, "http_port": 0, "stop": stop, "out": Out(), "ready": started.append}, daemon=True,
    )
    thread.start()
    try:
        assert wait_for(lambda: bool(started)), "the dev stack did not start"
        stack = started[0]
        assert stack.endpoint.startswith("http://127.0.0.1:")
        banner = "".join(printed)
        assert stack.endpoint in banner and stack.usage_bus in banner and "put-events" in banner
        # When a product team's SDK puts a usage event on the printed bus
        events = boto3.client("events", endpoint_url=stack.endpoint, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x")
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = {"type": "track", "event": "Signed In", "userId": "u1", "messageId": "dev-1",
                   "timestamp": now, "context": {"groupId": "acme"}}
        response = events.put_events(Entries=[{
            "Source": "pqlflow.emitter", "DetailType": "track", "EventBusName": stack.usage_bus,
            "Detail": json.dumps(message),
        }])
        assert response["FailedEntryCount"] == 0
        # Then ingest runs on its own, and the usage state is in the table
        assert wait_for(lambda: stack.runtime.counters()["invocations"].get("IngestFunction", 0) >= 1)
        # And the HTTP API answers: offers need a token, the unsubscribe page exists
        assert http_status(f"{stack.http_url}/offers") == 401
        assert http_status(f"{stack.http_url}/unsubscribe?token=bad") in (200, 400, 403)
        assert http_status(f"{stack.http_url}/nowhere") == 404
    finally:
        # When stopped, it stops cleanly and promptly
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert "stopped" in "".join(printed)
