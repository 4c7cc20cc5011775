"""HTTP API emulation: find the function route for a request and build the API Gateway v2 event for it.

Routes come from functions' `HttpApi` events (`GET /offers/{account_id}`, `ANY /{proxy+}`, `$default`).
Matching follows API Gateway: the most specific route wins (exact paths, then `{param}` paths, then
greedy `{proxy+}`, then `$default`); method `ANY` matches every method. Authorizers are not evaluated
locally. Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pqlflow import clock
from pqlflow.local.model import ACCOUNT, HttpRoute


@dataclass(frozen=True)
class RouteMatch:
    route: HttpRoute
    path_parameters: dict[str, str]


def _route_regex(path: str) -> tuple[re.Pattern[str], tuple[int, int]]:
    parts, score_static, score_greedy = [], 0, 0
    for segment in path.strip("/").split("/"):
        greedy = re.fullmatch(r"\{(\w+)\+\}", segment)
        param = re.fullmatch(r"\{(\w+)\}", segment)
        if greedy:
            parts.append(f"(?P<{greedy.group(1)}>.+)")
            score_greedy += 1
        elif param:
            parts.append(f"(?P<{param.group(1)}>[^/]+)")
        else:
            parts.append(re.escape(segment))
            score_static += 1
    return re.compile("/" + "/".join(parts)), (-score_greedy, score_static)


def match_route(routes: Sequence[HttpRoute], method: str, path: str) -> RouteMatch | None:
    """The route API Gateway would pick for `method path`, or None (a 404)."""
    method = method.upper()
    candidates: list[tuple[tuple[int, int, int], RouteMatch]] = []
    for route in routes:
        if route.method not in ("ANY", method):
            continue
        if route.path == "$default":
            candidates.append(((-2, 0, 0), RouteMatch(route, {})))
            continue
        regex, (greedy, static) = _route_regex(route.path)
        found = regex.fullmatch("/" + path.strip("/") if path.strip("/") else "/")
        if found:
            exact_method = 1 if route.method == method else 0
            candidates.append(((greedy, static, exact_method), RouteMatch(route, found.groupdict())))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def http_event(
    match: RouteMatch,
    method: str,
    path: str,
    *,
    query: str | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | bytes | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The payload format 2.0 event API Gateway sends to the function."""
    raw_query = query if isinstance(query, str) else urlencode(query or {})
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    route = match.route
    route_key = "$default" if route.path == "$default" else f"{route.method} {route.path}"
    now_ms = clock.now_ms()
    is_binary = isinstance(body, bytes)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": lowered,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": route.api,
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": "",
            "timeEpoch": now_ms,
        },
        "isBase64Encoded": is_binary,
    }
    if params:
        event["queryStringParameters"] = params
    if match.path_parameters:
        event["pathParameters"] = match.path_parameters
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if is_binary else body
    return event


def http_response(result: Any) -> dict[str, Any]:
    """A handler's return value as API Gateway (payload 2.0) turns it into an HTTP response."""
    if isinstance(result, Mapping) and "statusCode" in result:
        response = {
            "statusCode": int(result["statusCode"]),
            "headers": dict(result.get("headers") or {}),
            "body": result.get("body", ""),
        }
        if result.get("isBase64Encoded"):
            response["body"] = base64.b64decode(response["body"] or "")
        if result.get("cookies"):
            response["cookies"] = list(result["cookies"])
        return response
    body = result if isinstance(result, str) else json.dumps(result)
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": body}
