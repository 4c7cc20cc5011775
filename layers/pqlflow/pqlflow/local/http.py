"""HTTP API emulation: find the function route for a request and build the API Gateway v2 event for it.

Routes come from functions' `HttpApi` events (`GET /offers/{account_id}`, `ANY /{proxy+}`, `$default`).
Matching follows API Gateway: the most specific route wins (exact paths, then `{param}` paths, then
greedy `{proxy+}`, then `$default`); method `ANY` matches every method.

JWT authorizers are emulated without the signature check (the issuer's keys are not reachable
offline): the bearer token's payload must name the authorizer's issuer and one of its audiences, and
be within `exp` / `nbf` on pqlflow's clock; its claims then reach the function as API Gateway passes
them. Anything else is a 401. Pure: no I/O.
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

from pqlflow.kernel import clock
from pqlflow.local.model import ACCOUNT, HttpRoute, JwtAuthorizer


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


class Unauthorized(Exception):
    """The request has no acceptable token for the route's JWT authorizer."""


def jwt_claims(authorizer: JwtAuthorizer, headers: Mapping[str, str]) -> dict[str, Any]:
    """The token's claims if the authorizer would accept it (signature not checked locally)."""
    header = authorizer.identity_source.rsplit(".", 1)[-1].lower()
    token = {k.lower(): v for k, v in headers.items()}.get(header, "")
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("no JWT in " + header)
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError) as exc:
        raise Unauthorized("malformed JWT") from exc
    if not isinstance(claims, dict):
        raise Unauthorized("malformed JWT")
    if authorizer.issuer and claims.get("iss") != authorizer.issuer:
        raise Unauthorized("wrong issuer")
    audiences = claims.get("aud", claims.get("client_id"))
    audiences = audiences if isinstance(audiences, list) else [audiences]
    if authorizer.audience and not set(audiences) & set(authorizer.audience):
        raise Unauthorized("wrong audience")
    now = clock.now()
    if isinstance(claims.get("exp"), int | float) and claims["exp"] <= now:
        raise Unauthorized("expired")
    if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now:
        raise Unauthorized("not yet valid")
    return claims


def _claim_text(value: Any) -> str:
    """API Gateway hands claims over as strings; arrays as `[a b]`."""
    if isinstance(value, list):
        return "[" + " ".join(_claim_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def http_event(
    match: RouteMatch,
    method: str,
    path: str,
    *,
    query: str | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | bytes | None = None,
    source_ip: str = "127.0.0.1",
    claims: Mapping[str, Any] | None = None,
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
    if claims is not None:
        scopes = str(claims.get("scope", "")).split()
        event["requestContext"]["authorizer"] = {
            "jwt": {"claims": {k: _claim_text(v) for k, v in claims.items()}, "scopes": scopes or None}
        }
    if params:
        event["queryStringParameters"] = params
    if match.path_parameters:
        event["pathParameters"] = match.path_parameters
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if isinstance(body, bytes) else body
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
