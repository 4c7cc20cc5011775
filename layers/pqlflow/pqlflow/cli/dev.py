"""`pqlflow dev`: the whole system as a live local stack on 127.0.0.1 — an AWS endpoint and the HTTP API.

A moto server (`moto.server.ThreadedMotoServer`) is the AWS endpoint a product team points its SDK at;
the template's functions run in this process (`pqlflow.local.runtime.LocalRuntime` driving that server)
and react as events arrive: the runtime is pumped a few times a second. The template's HTTP API routes
(offers, unsubscribe, and the Segment-compatible collection API `/v1/*` with the fixed dev write keys of
`pqlflow.collect.keys`) are served on a second port, with the local inbox page (`pqlflow.local.devpage`) at
`/_pqlflow/`. The terminal gets one readable line per thing that happened (`--raw-logs`: the functions'
EMF and log JSON too). Time is the wall clock. Ctrl-C (SIGINT) or SIGTERM stops everything with a closing line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from pqlflow.kernel.errors import UsageError

POLL_SECONDS = 0.2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run the whole system as a live local stack (AWS endpoint + HTTP API on 127.0.0.1)",
        description="Serve template.yaml's application locally: an AWS endpoint (moto server) your SDK "
        "puts usage events to, the functions reacting as they arrive, and the HTTP API (offers, "
        "unsubscribe, the Segment-compatible /v1/*) and a local inbox page at /_pqlflow/. Prints one line per "
        "thing that happened. Ctrl-C or SIGTERM stops it.",
    )
    parser.add_argument("--template", type=Path, default=Path("template.yaml"), metavar="FILE",
                        help="the SAM template to run (default ./template.yaml)")
    parser.add_argument("--port", type=int, default=4566, help="AWS endpoint port (default 4566; 0: any free)")
    parser.add_argument("--http-port", type=int, default=3000, help="HTTP API port (default 3000; 0: any free)")
    parser.add_argument("--definition", type=Path, metavar="FILE", help="PQL definition to publish at start")
    parser.add_argument("--policy", type=Path, metavar="FILE", help="nurture policy for the route function")
    parser.add_argument("--raw-logs", action="store_true",
                        help="also print the functions' raw output (Embedded Metric Format and log JSON)")
    parser.add_argument("--exit-after", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    if args.exit_after is not None:
        timer = threading.Timer(args.exit_after, stop.set)
        timer.daemon = True
        timer.start()

    def stopping(_signal: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C while stopping: stop now
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve(
            args.template, port=args.port, http_port=args.http_port, definition=args.definition,
            policy=args.policy, stop=stop, raw_logs=args.raw_logs,
        )
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


class DevStack:
    """The running pieces: moto server, runtime on it, HTTP API server. `close()` stops them all."""

    def __init__(self, template: Path, *, port: int = 0, http_port: int = 0, definition: Path | None = None,
                 policy: Path | None = None, out: TextIO | None = None, raw_logs: bool = False) -> None:
        from moto.server import ThreadedMotoServer

        from pqlflow.local.cfn_yaml import load_yaml
        from pqlflow.local.devview import DevFeed, dev_runtime_class, logs_follow_stdout
        from pqlflow.local.emulator import create_extra_resources
        from pqlflow.local.replay import _runtime_class, _table_name
        from pqlflow.qualify.store import DefinitionStore

        if not template.is_file():
            raise UsageError(f"{template}: no such template (run from the repository root, or pass --template)")
        self.out = out or sys.stdout
        self.feed = DevFeed(self.out, raw=raw_logs)
        self._logs = contextlib.ExitStack()
        environment: dict[str, str] = {}
        if policy is not None:
            if not policy.is_file():
                raise UsageError(f"{policy}: no such policy file")
            environment["POLICY_FILE"] = str(policy.resolve())
        text = None
        if definition is not None:
            try:
                text = definition.read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{definition}: cannot read ({exc.strerror or exc})") from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per SDK call otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        host, bound = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{bound}"
        self.http: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()
        try:
            level = "INFO" if raw_logs else "WARNING"  # the readable lines come from events, results and metrics
            parameters = {"LogLevel": level} if "LogLevel" in (load_yaml(template).get("Parameters") or {}) else {}
            self.runtime = dev_runtime_class(_runtime_class(), self.feed)(
                template, parameter_overrides=parameters, endpoint_url=self.endpoint, environment=environment)
            self.runtime.handler_seconds = defaultdict(float)
            self.runtime.observed = self.feed
            self._logs.enter_context(logs_follow_stdout())
            self.runtime.start()
            create_extra_resources(self.runtime)
            self.write_keys = _dev_write_keys(self.runtime)
            self.feed.task_providers = _task_providers(self.runtime, _table_name(self.runtime))
            if text is not None:
                DefinitionStore(_table_name(self.runtime), client=self.runtime.client("dynamodb")).publish(
                    text, str(definition)
                )
            self.http = ThreadingHTTPServer(("127.0.0.1", http_port), _handler_class(self))
            self.http_url = f"http://127.0.0.1:{self.http.server_address[1]}"
            threading.Thread(target=self.http.serve_forever, name="pqlflow-dev-http", daemon=True).start()
        except BaseException:
            self.close()
            raise
        self.usage_bus = self.runtime.bus_for({"Source": "pqlflow.emitter", "DetailType": "track", "Detail": {}})

    def pump(self) -> int:
        with self.lock:
            return self.runtime.run_until_idle(max_rounds=10_000)

    def page(self, method: str, path: str) -> tuple[int, str, bytes] | None:
        """The inbox page's answer for a GET under /_pqlflow/ (or / when no template route takes it)."""
        from pqlflow.local.devpage import serve_page
        from pqlflow.local.http import match_route

        if method != "GET" or (path == "/" and match_route(self.runtime.wiring.http_routes, method, path) is not None):
            return None
        return serve_page(self.feed, path)  # None for a path not its own

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            with contextlib.suppress(Exception):
                runtime.close()
        self.server.stop()
        self._logs.close()

    def banner(self) -> str:
        example = json.dumps([{
            "Source": "pqlflow.emitter", "DetailType": "track", "EventBusName": self.usage_bus,
            "Detail": json.dumps({"type": "track", "event": "Signed In", "userId": "u1",
                                  "messageId": "m-1", "timestamp": "<now, ISO 8601>",
                                  "context": {"groupId": "acme"}}),
        }])
        return (
            f"pqlflow dev: {len(self.runtime.wiring.functions)} functions of {self.runtime.wiring.template_path} "
            f"running locally\n"
            f"  AWS endpoint   {self.endpoint}   (region us-east-1, any credentials)\n"
            f"  usage bus      {self.usage_bus}\n"
            f"  inbox          {self.http_url}/_pqlflow/   (transitions, actions, emails as sent, offers, tasks)\n"
            f"  HTTP API       {self.http_url}   (GET /offers, POST /offers/{{id}}/accept, GET|POST /unsubscribe)\n"
            + (f"  Segment API    {self.http_url}/v1/batch, /v1/track, ...   write key {self.write_keys[0]} "
               f"(browser: {self.write_keys[1]}); point an SDK's host or dataPlaneUrl at {self.http_url}\n"
               if self.write_keys else "") +
            f"Send usage events with your SDK pointed at the endpoint, e.g.:\n"
            f"  AWS_ENDPOINT_URL={self.endpoint} AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x "
            f"AWS_DEFAULT_REGION=us-east-1 \\\n    aws events put-events --entries '{example}'\n"
            f"  (Python: boto3.client('events', endpoint_url='{self.endpoint}', region_name='us-east-1'))\n"
            f"Ctrl-C (or SIGTERM) stops. What happens is printed below, one line each"
            + (" (with the functions' raw output)" if self.feed.raw else " (--raw-logs: the functions' JSON too)")
            + ".\n"
        )


def _dev_write_keys(runtime: Any) -> tuple[str, str] | None:
    """Put the fixed dev write keys in the collection API's secret (local only); None without that API."""
    from pqlflow.collect.keys import DEV_BROWSER_KEY, DEV_WRITE_KEY, dev_keys_document

    for function in runtime.wiring.functions.values():
        secret = function.environment.get("WRITE_KEYS_SECRET_ARN")
        if secret:
            runtime.client("secretsmanager").put_secret_value(SecretId=secret,
                                                              SecretString=json.dumps(dev_keys_document()))
            return DEV_WRITE_KEY, DEV_BROWSER_KEY
    return None


def _task_providers(runtime: Any, table: str) -> Any:
    """Where a rep task went: the connectors its stored item records deliveries for (read from the table)."""
    dynamodb = runtime.client("dynamodb")  # one client, not one made per task

    def providers(detail: dict[str, Any]) -> list[str] | None:
        with contextlib.suppress(Exception):
            item = dynamodb.get_item(TableName=table, Key={
                "pk": {"S": f"A#{detail.get('account_id')}"}, "sk": {"S": f"TASK#{detail.get('transition_id')}"}})
            deliveries = ((item.get("Item") or {}).get("deliveries") or {}).get("M") or {}
            return sorted(deliveries)
        return None

    return providers


def _handler_class(stack: DevStack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            page = stack.page(self.command, parts.path)
            if page is not None:
                status, kind, data = page
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(data)
                return
            with stack.lock:
                response = stack.runtime.invoke_http(
                    self.command, parts.path, query=parts.query, headers=dict(self.headers.items()), body=body
                )
            payload = response.get("body") or ""
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
            self.send_response(int(response.get("statusCode", 200)))
            for name, value in (response.get("headers") or {}).items():
                self.send_header(name, str(value))
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_OPTIONS = _serve  # noqa: N815 - http.server's naming

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            return  # request lines may carry unsubscribe tokens: not printed

    return Handler


def serve(template: Path, *, port: int = 0, http_port: int = 0, definition: Path | None = None,
          policy: Path | None = None, stop: threading.Event | None = None, out: TextIO | None = None,
          ready: Any = None, raw_logs: bool = False) -> None:
    """Run the dev stack until `stop` is set (or Ctrl-C); `ready(stack)` is called once it serves."""
    stop = stop or threading.Event()
    stack = DevStack(template, port=port, http_port=http_port, definition=definition, policy=policy, out=out,
                     raw_logs=raw_logs)
    try:
        stack.out.write(stack.banner())
        stack.out.flush()
        if ready is not None:
            ready(stack)
        while not stop.is_set():
            stack.pump()
            stop.wait(POLL_SECONDS)
    finally:
        stack.close()
        stack.out.write(stack.feed.closing_line())
        stack.out.flush()
