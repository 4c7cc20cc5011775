"""Local HTTP fakes of the rep-task connectors' services (HubSpot, a Slack webhook) on 127.0.0.1,
each checking requests the way the real service would, and a sleep that records instead of waiting."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "pat-test-token"  # noqa: S105 - a test credential for the local fake


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class LocalServer:
    """A tiny HTTP server on 127.0.0.1; `answer(seen)` decides each reply."""

    answer: Callable[[Seen], Reply]
    seen: list[Seen] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LocalServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                server.seen.append(request)
                status, payload, *extra = server.answer(request)
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_PATCH = do_GET = do_POST  # noqa: N815 - the same recording and answering for every method

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeHubSpot:
    """Answers like HubSpot's CRM v3 tasks API and rejects what HubSpot would reject."""

    REQUIRED = {"hs_timestamp", "hs_task_subject", "hs_task_body", "hs_task_status", "hs_task_priority"}

    def __init__(self, token: str = TOKEN, fail_first: int = 0, fail_status: int = 503) -> None:
        self.token = token
        self.tasks: dict[str, dict[str, Any]] = {}
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.problems: list[str] = []

    def __call__(self, req: Seen) -> Reply:
        if self.fail_first > 0:
            self.fail_first -= 1
            return self.fail_status, {"status": "error", "message": "try again"}
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"status": "error", "category": "INVALID_AUTHENTICATION"}
        if req.headers.get("content-type") != "application/json":
            return 415, {"status": "error"}
        body = req.json()
        if req.path == "/crm/v3/objects/tasks/search":
            (flt,) = body["filterGroups"][0]["filters"]
            assert flt["operator"] == "EQ"
            hits = [
                {"id": tid, "properties": t["properties"]}
                for tid, t in self.tasks.items()
                if t["properties"].get(flt["propertyName"]) == flt["value"]
            ]
            return 200, {"total": len(hits), "results": hits[: body.get("limit", 10)]}
        if req.path != "/crm/v3/objects/tasks":
            return 404, {"status": "error"}
        props = body.get("properties", {})
        missing = self.REQUIRED - props.keys()
        if missing:
            self.problems.append(f"missing {sorted(missing)}")
            return 400, {"status": "error", "category": "VALIDATION_ERROR"}
        if props["hs_task_status"] not in {"NOT_STARTED", "COMPLETED"} or props["hs_task_priority"] not in {
            "LOW",
            "MEDIUM",
            "HIGH",
        }:
            return 400, {"status": "error", "category": "VALIDATION_ERROR"}
        for assoc in body.get("associations", []):
            if assoc["types"] != [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 192}]:
                return 400, {"status": "error", "message": "bad association type"}
        task_id = str(1000 + len(self.tasks))
        self.tasks[task_id] = body
        return 201, {"id": task_id, "properties": props}


class FakeSlack:
    """Answers like a Slack incoming webhook: plain-text `ok`, or 400 `invalid_blocks`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_first = fail_first

    def __call__(self, req: Seen) -> Reply:
        if self.fail_first > 0:
            self.fail_first -= 1
            return 500, b"internal_error"
        if req.path != "/services/T000/B000/XXXX" or req.headers.get("content-type") != "application/json":
            return 404, b"no_service"
        body = req.json()
        blocks = body.get("blocks")
        if not isinstance(body.get("text"), str) or not isinstance(blocks, list) or not blocks:
            return 400, b"invalid_payload"
        if any(b.get("type") not in {"header", "section", "context", "divider", "actions"} for b in blocks):
            return 400, b"invalid_blocks"
        self.messages.append(body)
        return 200, b"ok"


class SleepLog:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
