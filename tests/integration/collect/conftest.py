"""The collection API of template.yaml over real HTTP: the local runtime (moto in-process) runs the collect
function behind a ThreadingHTTPServer on 127.0.0.1, as `pqlflow dev` serves it, and ingest behind the bus."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pqlflow.collect.keys import dev_keys_document
from pqlflow.ingest.quarantine import list_quarantine
from pqlflow.ingest.store import read_usage
from pqlflow.ingest.usage import AccountUsage
from pqlflow.local.emulator import create_extra_resources
from pqlflow.local.replay import _table_name
from pqlflow.local.runtime import LocalRuntime

TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"
SERVER_KEY = "wk_test_server_0123456789"
WEB_KEY = "wk_test_browser_0123456789"
WEB_ORIGIN = "https://app.acme.test"
UNLISTED_SOURCE_KEY = "wk_test_unlisted_source_01"


def keys_document(**extra: Any) -> dict[str, Any]:
    """Test keys: a server key, a browser key for WEB_ORIGIN, one whose source no rule accepts; the dev keys."""
    return {"keys": [
        {"key": SERVER_KEY, "source": "pqlflow.collect", "name": "server"},
        {"key": WEB_KEY, "source": "pqlflow.collect", "name": "web", "browser": True, "origins": [WEB_ORIGIN]},
        {"key": UNLISTED_SOURCE_KEY, "source": "com.acme.unlisted", "name": "unlisted"},
        *dev_keys_document()["keys"],
    ], **extra}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class CollectStack:
    runtime: LocalRuntime
    url: str
    lock: threading.Lock
    events: list[dict[str, Any]]  # every event put on a bus, as routed

    def usage_events(self, account: str) -> list[dict[str, Any]]:
        """The usage events of `account` the collection API put on the bus (routed by then)."""
        self.settle()
        return [e for e in self.events if e.get("source") != "pqlflow"
                and ((e.get("detail") or {}).get("context") or {}).get("groupId") == account]

    def post(self, call: str, body: Any, *, key: str | None = SERVER_KEY, headers: dict[str, str] | None = None,
             gzipped: bool = False, raw: bytes | None = None, method: str = "POST") -> Reply:
        data = raw if raw is not None else json.dumps(body).encode()
        sent = {"content-type": "application/json", **(headers or {})}
        if key is not None:
            sent["authorization"] = basic(key)
        if gzipped:
            data = gzip.compress(data)
            sent["content-encoding"] = "gzip"
        request = urllib.request.Request(f"{self.url}/v1/{call}", data=data if method == "POST" else None,
                                         headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - 127.0.0.1
                return Reply(response.status, dict(response.headers.items()), _json(response.read()))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers.items()), _json(exc.read()))

    def settle(self) -> None:
        with self.lock:
            self.runtime.run_until_idle()

    def usage(self, account: str) -> AccountUsage | None:
        self.settle()
        return read_usage(self.runtime.client("dynamodb"), _table_name(self.runtime), account)

    def quarantined(self) -> list[Any]:
        return list(list_quarantine(self.runtime.client("dynamodb"), _table_name(self.runtime), days=2))

    def put_keys(self, document: dict[str, Any]) -> None:
        self.runtime.client("secretsmanager").put_secret_value(
            SecretId=self.runtime.wiring.functions["CollectFunction"].environment["WRITE_KEYS_SECRET_ARN"],
            SecretString=json.dumps(document))


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode(errors="replace")


def _handler(runtime: LocalRuntime, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            with lock:
                response = runtime.invoke_http(self.command, parts.path, query=parts.query,
                                               headers=dict(self.headers.items()), body=body)
            payload = response.get("body") or ""
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
            self.send_response(int(response["statusCode"]))
            for name, value in (response.get("headers") or {}).items():
                self.send_header(name, str(value))
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_OPTIONS = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return Handler


@pytest.fixture(scope="module")
def stack() -> Iterator[CollectStack]:
    # The write keys are read on every request (cache 0 s), so a test's rotation takes effect at once.
    events: list[dict[str, Any]] = []
    with LocalRuntime(TEMPLATE, parameter_overrides={"LogLevel": "WARNING", "CollectWriteKeysCacheSeconds": 0},
                      on_event=lambda bus, event: events.append(event)) as runtime:
        create_extra_resources(runtime)
        lock = threading.Lock()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(runtime, lock))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        collect = CollectStack(runtime, f"http://127.0.0.1:{server.server_address[1]}", lock, events)
        collect.put_keys(keys_document())
        try:
            yield collect
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture
def account() -> str:
    """An account no other test writes to."""
    return f"acct-{uuid.uuid4().hex[:10]}"
