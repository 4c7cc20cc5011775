"""Signed, expiring one-click unsubscribe tokens (RFC 8058 links), and the signing secret they need.

A token is ``v1.<payload>.<signature>``: the payload is base64url JSON holding the sha256 of the
recipient's address, the account id, the user id and the expiry (epoch seconds); the signature is
HMAC-SHA256 over ``v1.<payload>`` with a key derived from the secret. The payload is readable by whoever
holds the link, so it carries no personal data: the address only as its hash, and a user id that is
itself an email address is left out.

Pure: `issue`, `verify`. Adapter: `SigningKeys` reads the secret from Secrets Manager once per cold
start (current version to sign; current and previous to verify, so rotating the secret does not break
links already sent).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pqlflow.kernel import clock
from pqlflow.kernel.aws import AwsClient

VERSION = "v1"
DEFAULT_TTL_DAYS = 90  # CAN-SPAM wants the mechanism to work for 30 days after sending; links live longer.
MIN_SECRET_CHARS = 32
MAX_TOKEN_CHARS = 2048
_PURPOSE = b"pqlflow/unsubscribe/v1"
# v1.<base64url payload>.<base64url HMAC-SHA256: 32 bytes, 43 characters unpadded>
_TOKEN = re.compile(r"v1\.(?P<body>[A-Za-z0-9_-]+)\.(?P<signature>[A-Za-z0-9_-]{43})")


class InvalidToken(Exception):
    """The token is malformed or its signature does not match: it was not issued by pqlflow."""


class ExpiredToken(InvalidToken):
    """The token was issued by pqlflow but is past its expiry."""


@dataclass(frozen=True)
class Subscriber:
    """Who a valid token unsubscribes."""

    address_hash: str
    account_id: str | None
    user_id: str | None
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


def _sign(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(_key(secret), signed.encode("ascii"), hashlib.sha256).digest())


def issue(
    secret: bytes,
    *,
    address_hash: str,
    account_id: str | None,
    user_id: str | None,
    ttl_seconds: int = DEFAULT_TTL_DAYS * 86400,
    now: float | None = None,
) -> str:
    """A token that unsubscribes the address with this hash until `now + ttl_seconds`."""
    expires_at = int((clock.now() if now is None else now) + ttl_seconds)
    payload: dict[str, Any] = {"h": address_hash, "x": expires_at}
    if account_id:
        payload["a"] = account_id
    if user_id and "@" not in user_id:
        payload["u"] = user_id
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed = f"{VERSION}.{body}"
    return f"{signed}.{_sign(secret, signed)}"


def verify(secrets: Sequence[bytes], token: str, now: float | None = None) -> Subscriber:
    """The subscriber a token names; raises `InvalidToken` (forged, malformed) or `ExpiredToken`.

    Anything outside the token's own alphabet (base64url and the two dots: a non-ASCII letter, a lone
    surrogate, NUL, padding) makes it malformed before any decoding or signing, so an altered link is
    always `InvalidToken`, never another error. Surrounding whitespace is trimmed (copied links carry it).
    """
    if not secrets:
        raise InvalidToken("no signing secret to verify with")
    text = token.strip() if isinstance(token, str) else ""
    match = _TOKEN.fullmatch(text) if len(text) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise InvalidToken("malformed token")
    body, signature = match.group("body"), match.group("signature").encode("ascii")
    signed = f"{VERSION}.{body}"
    if not any(hmac.compare_digest(_sign(secret, signed).encode("ascii"), signature) for secret in secrets):
        raise InvalidToken("signature does not match")
    try:
        payload = json.loads(_unb64(body))
        hashed, expires_at = payload["h"], payload["x"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken("malformed payload") from exc
    if not isinstance(hashed, str) or len(hashed) != 64 or not isinstance(expires_at, int):
        raise InvalidToken("malformed payload")
    if expires_at < (clock.now() if now is None else now):
        raise ExpiredToken("token expired")
    return Subscriber(
        address_hash=hashed, account_id=payload.get("a"), user_id=payload.get("u"), expires_at=expires_at
    )


def secret_from_string(value: str, where: str = "secret") -> bytes:
    """The signing secret from a SecretString: the raw string, or the `secret` field of a JSON object."""
    text = value
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{where}: looks like JSON but does not parse") from exc
        field = data.get("secret") if isinstance(data, dict) else None
        if not isinstance(field, str):
            raise ValueError(f"{where}: JSON secret needs a string field 'secret'")
        text = field
    if len(text) < MIN_SECRET_CHARS:
        raise ValueError(f"{where}: signing secret must be at least {MIN_SECRET_CHARS} characters")
    return text.encode("utf-8")


_cache: dict[tuple[str, str], bytes | None] = {}


class SigningKeys:
    """The unsubscribe signing secret in Secrets Manager, fetched once per cold start, version and ARN."""

    client = AwsClient("secretsmanager")

    def __init__(self, secret_arn: str, client: Any = None) -> None:
        self.secret_arn = secret_arn
        self.client = client

    def _version(self, stage: str) -> bytes | None:
        key = (self.secret_arn, stage)
        if key not in _cache:
            try:
                value = self.client.get_secret_value(SecretId=self.secret_arn, VersionStage=stage)[
                    "SecretString"
                ]
            except self.client.exceptions.ResourceNotFoundException:
                if stage == "AWSCURRENT":
                    raise
                value = None  # never rotated: there is no previous version
            try:
                _cache[key] = None if value is None else secret_from_string(value, self.secret_arn)
            except ValueError:
                if stage == "AWSCURRENT":
                    raise
                _cache[key] = None  # a previous version that is not a usable secret just isn't accepted
        return _cache[key]

    def current(self) -> bytes:
        """The secret new tokens are signed with."""
        current = self._version("AWSCURRENT")
        if current is None:  # unreachable: a missing or unusable current version raises above
            raise ValueError(f"{self.secret_arn}: no current signing secret")
        return current

    def all(self) -> tuple[bytes, ...]:
        """Current secret first, then the previous version if there is one (accepted for verification)."""
        previous = self._version("AWSPREVIOUS")
        return (self.current(),) + ((previous,) if previous else ())


def clear_cache() -> None:
    """Forget fetched secrets (tests; a rotation is otherwise picked up by the next cold start)."""
    _cache.clear()
