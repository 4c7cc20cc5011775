"""Write keys: who may send, the EventBridge source their events carry, and the browser origins they allow.

The keys live in one Secrets Manager secret (`CollectWriteKeys`), a JSON document:

    {"keys": [
      {"key": "wk_live_3f9…", "source": "pqlflow.collect"},
      {"key": "wk_web_8a1…", "source": "com.acme.web", "browser": true, "origins": ["https://app.acme.com"]}
    ]}

or, as the stack generates it at deploy time, one key at the top level: `{"writeKey": "…", "source": "…"}`
(both forms may be combined). Each key's `source` is the EventBridge `source` of its events, so it must be
one of the stack's AllowedSources: the usage rule drops any other. A key marked `browser` may be called
from the listed origins (CORS); any other key refuses requests that carry an `Origin` header, so a
server key pasted into a web page stops working instead of leaking quietly.

`WriteKeySource` reads the secret through Powertools Parameters with a short cache (`max_age`), so a
rotated or added key takes effect within that many seconds, with no redeploy. A key is never logged:
`WriteKey.label` (its `name`, or the first characters of its SHA-256) is what logs and metrics show.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEV_WRITE_KEY = "pqlflow-dev-write-key"  # pqlflow dev's server key (local only: the dev stack puts it in the secret)
DEV_BROWSER_KEY = "pqlflow-dev-browser-key"
DEV_ORIGINS = ("http://localhost:3000", "http://localhost:5173", "http://localhost:8080", "http://127.0.0.1:8080")
DEFAULT_SOURCE = "pqlflow.collect"
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256
_SOURCE = re.compile(r"^[A-Za-z0-9._/-]{1,256}$")  # what PutEvents takes as Source (and pqlflow's rule names)
_ORIGIN = re.compile(r"^(\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)$")


class WriteKeysError(ValueError):
    """The write-keys document cannot be used; the message names the entry and field, never a key."""


@dataclass(frozen=True)
class WriteKey:
    """One write key's settings (not the key itself). `problem`: why its events cannot be accepted (a
    source the usage rule would drop, a malformed origin): requests with it get a 5xx, so SDKs keep them."""

    label: str
    source: str
    browser: bool = False
    origins: tuple[str, ...] = ()
    problem: str | None = None

    def allows(self, origin: str) -> bool:
        return self.browser and ("*" in self.origins or origin in self.origins)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The keys in force, found by the SHA-256 of the key (the key itself is not kept)."""

    keys: Mapping[bytes, WriteKey] = field(default_factory=dict)

    def find(self, key: str) -> WriteKey | None:
        return self.keys.get(digest(key))

    def origin_allowed(self, origin: str) -> bool:
        """A preflight carries no key: an origin is allowed when some browser key allows it."""
        return any(k.allows(origin) for k in self.keys.values() if k.problem is None)


def parse_keys(document: Any, allowed_sources: Iterable[str]) -> KeyRing:
    """The key ring of a write-keys document (see the module docstring)."""
    allowed = frozenset(allowed_sources)
    if not isinstance(document, dict):
        raise WriteKeysError("write keys: the secret must hold a JSON object")
    entries: list[tuple[str, Any]] = []
    if "writeKey" in document:
        entries.append(("writeKey", {"key": document["writeKey"], "source": document.get("source", DEFAULT_SOURCE),
                                     "name": document.get("name", "default")}))
    listed = document.get("keys", [])
    if not isinstance(listed, list):
        raise WriteKeysError("write keys: keys must be a list of {key, source, browser, origins}")
    entries.extend((f"keys[{i}]", entry) for i, entry in enumerate(listed))
    ring: dict[bytes, WriteKey] = {}
    for where, entry in entries:
        if not isinstance(entry, dict):
            raise WriteKeysError(f"write keys: {where} must be an object")
        key = entry.get("key")
        if not isinstance(key, str) or not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
            raise WriteKeysError(f"write keys: {where}.key must be a string of {MIN_KEY_CHARS} to "
                                 f"{MAX_KEY_CHARS} characters")
        hashed = digest(key)
        if hashed in ring:
            raise WriteKeysError(f"write keys: {where}.key appears twice")
        ring[hashed] = _write_key(where, entry, hashed, allowed)
    return KeyRing(ring)


def _write_key(where: str, entry: dict[str, Any], hashed: bytes, allowed: frozenset[str]) -> WriteKey:
    name = entry.get("name")
    label = name if isinstance(name, str) and name.isprintable() and name else hashed.hex()[:8]
    source = entry.get("source", DEFAULT_SOURCE)
    browser = entry.get("browser", False)
    origins = entry.get("origins", [])
    problem = None
    if not isinstance(source, str) or not _SOURCE.match(source):
        source, problem = str(source)[:64], f"{where}.source must be an EventBridge source name"
    elif source not in allowed:
        problem = (f"{where}.source '{source}' is not one of the stack's AllowedSources "
                   f"({', '.join(sorted(allowed))}): the usage rule would drop its events")
    if not isinstance(browser, bool):
        browser, problem = False, problem or f"{where}.browser must be true or false"
    if not isinstance(origins, list) or not all(isinstance(o, str) and _ORIGIN.match(o) for o in origins):
        origins, problem = [], problem or (f"{where}.origins must be a list of origins "
                                           "('https://app.example.com', or '*')")
    if browser and not origins:
        problem = problem or f"{where}: a browser key needs its origins"
    return WriteKey(label, source, browser, tuple(origins), problem)


def basic_auth_user(headers: Mapping[str, str]) -> str | None:
    """The user name of an `Authorization: Basic` header (Segment's write key; the password is empty)."""
    value = headers.get("authorization", "")
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0]
    return user or None


def dev_keys_document(source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """The write keys `pqlflow dev` serves with: a server key and a browser key for local origins."""
    return {"keys": [
        {"key": DEV_WRITE_KEY, "source": source, "name": "dev"},
        {"key": DEV_BROWSER_KEY, "source": source, "name": "dev-browser", "browser": True,
         "origins": list(DEV_ORIGINS)},
    ]}


class WriteKeySource:
    """The key ring in force: the secret read through Powertools Parameters, cached `max_age` seconds
    (one GetSecretValue per warm instance per `max_age`), parsed once per secret value."""

    def __init__(self, secret_id: str, allowed_sources: Iterable[str], max_age: int = 60, client: Any = None):
        self.secret_id = secret_id
        self.allowed_sources = frozenset(allowed_sources)
        self.max_age = max_age
        self._client = client
        self._provider: Any = None
        self._parsed: tuple[str, KeyRing] | None = None

    def ring(self) -> KeyRing:
        if self._provider is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            self._provider = SecretsProvider(boto3_client=self._client)
        raw = self._provider.get(self.secret_id, max_age=self.max_age)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if self._parsed is not None and self._parsed[0] == text:
            return self._parsed[1]
        try:
            document = json.loads(text)
        except ValueError:
            raise WriteKeysError("write keys: the secret is not JSON") from None
        ring = parse_keys(document, self.allowed_sources)
        self._parsed = (text, ring)
        return ring
