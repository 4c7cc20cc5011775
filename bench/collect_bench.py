"""Collect bench: what the Segment-compatible collection API costs per million events, measured in one run.

Requests are the real ones: the server-side bodies are what Segment's analytics-python SDK posts (its own
batching: up to `upload_size` messages per request, gzip on; captured at its HTTP session, nothing sent),
and the browser bodies are what analytics.js posts (one message per request to /v1/t or /v1/p, text/plain,
the write key in the body, its page context). Each request goes through the REAL collect handler
(functions/collect/app.py: Powertools logger and metrics included, their output discarded) with its real
service; only its AWS clients are stand-ins that record the calls (PutEvents accepts every entry; the
write-keys secret is the dev keys document), so the measured CPU time is the handler's own.

Priced per request as AWS bills it (us-east-1 list prices, `pqlflow.local.cost.PRICES` where it has them):
- API Gateway HTTP API: $1.00 per million requests, each request counted per 512 KB of payload;
- Lambda: $0.20 per million invocations, and duration = the handler's measured CPU time × Lambda's CPU share
  at the template's MemorySize for the function (`--cpu-scale`), plus `--aws-latency-ms` per AWS call it
  made (PutEvents calls, secret reads), rounded up to 1 ms, in GB-s at that MemorySize (arm64);
- Secrets Manager: $0.05 per 10,000 GetSecretValue. With the template's cache (CollectWriteKeysCacheSeconds),
  each warm instance reads the secret once per cache period: instances = ceil(requests/s × mean billed
  duration), at `--rate` events per second; the uncached figure (a read per request) is printed beside it;
- EventBridge PutEvents: $1.00 per million entries, each billed per 64 KB: the ingestion every path pays
  (Segment's EventBridge destination and pqlflow's emitter too), printed apart as the reference.

Run: .venv/bin/python bench/collect_bench.py [--events N] [--browser-events N] [--rate EVENTS_PER_S]
     [--aws-latency-ms MS] [--cpu-scale X]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "pqlflow"), str(ROOT)]

from pqlflow.collect.api import CollectSettings, build  # noqa: E402
from pqlflow.collect.keys import DEV_BROWSER_KEY, DEV_ORIGINS, DEV_WRITE_KEY, dev_keys_document  # noqa: E402
from pqlflow.local.billing import chunks, lambda_billed_ms, put_events_entry_bytes  # noqa: E402
from pqlflow.local.cost import PRICES  # noqa: E402
from pqlflow.local.pricing import cpu_scale  # noqa: E402
from pqlflow.local.template import load_template  # noqa: E402

from functions.collect.app import handler  # noqa: E402
from tests.support.lambda_context import LambdaContext  # noqa: E402

HTTP_API_PER_MILLION = 1.00  # API Gateway HTTP API, first 300 million requests a month
HTTP_API_INCREMENT = 512 * 1024  # an HTTP API request is metered per 512 KB
SECRETS_PER_CALL = PRICES["secretsmanager_per_10k_calls"] / 10_000
EVENTS = ["Signed In", "Report Exported", "Dashboard Viewed", "Invite Sent", "Integration Connected"]


class RecordingBus:
    """PutEvents that accepts every entry and keeps what it was sent."""

    def __init__(self) -> None:
        self.calls = 0
        self.entries: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        self.entries.extend(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(self.calls)} for _ in Entries]}


class KeysSecret:
    """GetSecretValue of the write-keys secret (the dev keys), counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.document = json.dumps(dev_keys_document())

    def get_secret_value(self, SecretId: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        return {"Name": SecretId, "SecretString": self.document}


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    messages: int


@dataclass
class Shape:
    name: str
    requests: list[Request]
    billed_ms: list[int] = field(default_factory=list)
    aws_calls: int = 0
    entry_chunks: int = 0
    secret_reads: int = 0
    rejected: int = 0

    @property
    def events(self) -> int:
        return sum(r.messages for r in self.requests)


def sdk_requests(n: int, upload_size: int, rng: random.Random) -> list[Request]:
    """The requests analytics-python makes for `n` calls (its consumer thread batching them), captured."""
    from segment.analytics import Client, request

    captured: list[Request] = []

    class Sent:
        status_code = 200

    def capture(url: str, data: bytes, headers: dict[str, str], **kwargs: Any) -> Sent:
        count = len(json.loads(_inflate(data, headers))["batch"])
        captured.append(Request("/v1/batch", {k.lower(): v for k, v in headers.items()}, data, count))
        return Sent()

    with mock.patch.object(request._session, "post", side_effect=capture):
        client = Client(write_key=DEV_WRITE_KEY, host="https://collect.invalid", gzip=True, upload_size=upload_size,
                        max_queue_size=n + 1)
        for i in range(n):
            user, account = f"usr_{rng.randrange(5000)}", f"acct_{rng.randrange(800)}"
            context = {"groupId": account}
            kind = rng.random()
            if kind < 0.8:
                client.track(user, rng.choice(EVENTS), {"plan": "free", "seats": rng.randrange(1, 40),
                                                        "source": "web-app"}, context=context)
            elif kind < 0.9:
                client.page(user, name="Pricing", properties={"path": "/pricing"}, context=context)
            elif kind < 0.95:
                client.identify(user, {"role": "admin", "plan": "free", "timezone": "Europe/Paris"}, context=context)
            else:
                client.group(user, account, {"plan": "free", "employees": rng.randrange(5, 500)})
            if i % upload_size == upload_size - 1:
                client.flush()  # one request per full batch, as a busy backend's queue sends them
        client.flush()
        client.shutdown()
    return captured


def browser_requests(n: int, rng: random.Random) -> list[Request]:
    """What analytics.js posts: one message per request, the write key and its page context in the body."""
    requests = []
    for i in range(n):
        page = rng.random() < 0.3
        message = {
            "type": "page" if page else "track", "anonymousId": f"anon-{rng.randrange(10**9):09d}",
            "userId": f"usr_{rng.randrange(5000)}", "messageId": f"ajs-next-{i:012d}-{rng.randrange(10**8)}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "sentAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "integrations": {}, "writeKey": DEV_BROWSER_KEY,
            "context": {
                "groupId": f"acct_{rng.randrange(800)}", "locale": "en-US",
                "library": {"name": "analytics.js", "version": "next-1.70.0"},
                "page": {"path": "/app/reports", "referrer": "https://app.example.com/app", "search": "",
                         "title": "Reports - Example", "url": "https://app.example.com/app/reports"},
                "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
                             "Gecko) Chrome/129.0.0.0 Safari/537.36",
            },
        }
        if page:
            message |= {"name": "Reports", "properties": {"path": "/app/reports", "title": "Reports - Example"}}
        else:
            message |= {"event": rng.choice(EVENTS), "properties": {"format": "csv"}}
        requests.append(Request("/v1/p" if page else "/v1/t", {"content-type": "text/plain",
                                                                "origin": DEV_ORIGINS[0]},
                                json.dumps(message).encode(), 1))
    return requests


def _inflate(data: bytes, headers: dict[str, str]) -> bytes:
    import gzip

    return gzip.decompress(data) if headers.get("Content-Encoding") == "gzip" else data


def api_event(request: Request) -> dict[str, Any]:
    binary = request.headers.get("content-encoding") == "gzip"
    return {"version": "2.0", "rawPath": request.path, "headers": request.headers,
            "requestContext": {"http": {"method": "POST", "path": request.path}},
            "body": base64.b64encode(request.body).decode() if binary else request.body.decode(),
            "isBase64Encoded": binary}


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The handler's log lines and EMF metrics go to /dev/null (they are still written: their CPU counts)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def measure(shape: Shape, settings: CollectSettings, latency_ms: float, scale: float) -> None:
    bus, secret = RecordingBus(), KeysSecret()
    service = build(settings, secrets=secret, events=bus, sleep=lambda s: None)
    context = LambdaContext()
    with quiet_stdout():
        for request in shape.requests:
            calls_before, reads_before = bus.calls, secret.calls
            start = time.thread_time()
            response = handler(api_event(request), context, service=service)
            cpu = time.thread_time() - start
            if response["statusCode"] != 200:
                shape.rejected += request.messages
            aws = (bus.calls - calls_before) + (secret.calls - reads_before)
            shape.aws_calls += aws
            shape.billed_ms.append(lambda_billed_ms(cpu, aws, latency_ms, scale))
    shape.entry_chunks = sum(chunks(put_events_entry_bytes(e)) for e in bus.entries)
    shape.secret_reads = secret.calls


def price(shape: Shape, memory_mb: int, cache_seconds: int, rate: float) -> dict[str, float]:
    n, requests = shape.events, len(shape.requests)
    per_million = 1e6 / n
    api = sum(math.ceil(max(len(r.body), 1) / HTTP_API_INCREMENT) for r in shape.requests) * HTTP_API_PER_MILLION / 1e6
    invocations = requests * PRICES["lambda_per_million_requests"] / 1e6
    gb_seconds = sum(shape.billed_ms) / 1000 * memory_mb / 1024
    duration = gb_seconds * PRICES["lambda_per_gb_second_arm64"]
    mean_s = sum(shape.billed_ms) / 1000 / requests
    request_rate = rate * requests / n
    instances = max(1, math.ceil(request_rate * mean_s))
    cached_reads_per_event = instances / max(cache_seconds, 1) / rate
    secrets = cached_reads_per_event * n * SECRETS_PER_CALL
    return {
        "api": api * per_million, "lambda_requests": invocations * per_million,
        "lambda_duration": duration * per_million,
        "secrets": secrets * per_million, "secrets_uncached": requests * SECRETS_PER_CALL * per_million,
        "putevents": shape.entry_chunks * PRICES["eventbridge_per_million_events"] / 1e6 * per_million,
        "instances": instances, "mean_ms": mean_s * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="server-side events per SDK shape (20,000)")
    parser.add_argument("--browser-events", type=int, default=5_000, help="browser events, one per request (5,000)")
    parser.add_argument("--rate", type=float, default=1_000.0, help="events per second, for the secret cache (1,000)")
    parser.add_argument("--aws-latency-ms", type=float, default=5.0, help="modelled wait per AWS call (5 ms)")
    parser.add_argument("--cpu-scale", type=float, default=None, help="override Lambda's CPU share factor")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if min(args.events, args.browser_events) < 1 or args.rate <= 0 or args.aws_latency_ms < 0:
        parser.error("--events and --browser-events must be positive, --rate above 0, --aws-latency-ms not negative")

    wiring = load_template(ROOT / "template.yaml")
    function = wiring.functions["CollectFunction"]
    settings = CollectSettings.model_validate(function.environment)
    scale = cpu_scale(function.memory_size, args.cpu_scale)
    rng = random.Random(args.seed)
    shapes = [
        Shape("analytics-python, full batches (100 messages)", sdk_requests(args.events, 100, rng)),
        Shape("analytics-python, batches of 10 (a quiet backend's flush interval)", sdk_requests(args.events, 10, rng)),
        Shape("analytics.js, one message per request", browser_requests(args.browser_events, rng)),
    ]
    started = time.monotonic()
    for shape in shapes:
        measure(shape, settings, args.aws_latency_ms, scale)
    print(f"collect bench: the real collect handler at MemorySize {function.memory_size} MB (CPU x{scale:.2f}), "
          f"+{args.aws_latency_ms:g} ms per AWS call, secret cache {settings.WRITE_KEYS_CACHE_SECONDS} s at "
          f"{args.rate:,.0f} events/s; measured in {time.monotonic() - started:.1f} s\n")
    header = ("| traffic | events | requests | body p50 | Lambda ms p50 / mean | API GW | Lambda requests | "
              "Lambda duration | Secrets (cached) | **collection adds** | PutEvents (every path) | secrets uncached |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for shape in shapes:
        p = price(shape, function.memory_size, settings.WRITE_KEYS_CACHE_SECONDS, args.rate)
        adds = p["api"] + p["lambda_requests"] + p["lambda_duration"] + p["secrets"]
        sizes = sorted(len(r.body) for r in shape.requests)
        billed = sorted(shape.billed_ms)
        print(f"| {shape.name} | {shape.events:,} | {len(shape.requests):,} | {sizes[len(sizes) // 2]:,} B | "
              f"{billed[len(billed) // 2]} / {p['mean_ms']:.1f} | ${p['api']:.3f} | ${p['lambda_requests']:.3f} | "
              f"${p['lambda_duration']:.3f} | ${p['secrets']:.5f} ({p['instances']} warm) | **${adds:.3f}/M** | "
              f"${p['putevents']:.3f} | ${p['secrets_uncached']:.3f} |")
        if shape.rejected:
            print(f"  ! {shape.rejected} messages were not accepted: the figures above are not valid")
    print("\n$ per million events. 'collection adds' = API Gateway + Lambda + Secrets Manager with the cache, on top")
    print("of the PutEvents every path pays (the emitter and Segment's EventBridge destination too).")
    print(f"Secret reads in this run (one warm instance, within its cache period): "
          f"{', '.join(str(s.secret_reads) for s in shapes)}; AWS calls: {', '.join(str(s.aws_calls) for s in shapes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
