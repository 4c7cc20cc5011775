"""End-to-end helpers: crafted Segment histories, and replays of them through template.yaml's application."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pqlflow.local.replay import replay

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
DEFINITION = """\
name: e2e-sign-ins
version: 1
description: An account that signs in 5 times is a PQL (end-to-end tests).
signals:
  sign_ins: {count: Signed In, label: sign-ins}
qualify:
  signal: sign_ins
  gte: 5
  reason: "{value} sign-ins"
touch:
  high:
    any:
      - {trait: employees, gte: 200}
  default: low
"""
POLICY = """\
name: e2e
version: 1
description: No holdout; reps for high touch, email for everyone else, in office hours (UTC).
holdout: {share: 0.0, salt: e2e, touch: [low]}
caps: {account_days: 7, user_days: 14}
quiet_hours:
  default_timezone: UTC
  start: "09:00"
  end: "18:00"
  days: [mon, tue, wed, thu, fri]
consent: {email_suppressed: offer, fallback_offer: trial-extension-14}
rules:
  - name: rep-follow-up
    when: {touch: high}
    then: {channel: rep_task}
  - name: personalized-email
    then: {channel: email, template: upgrade_nudge}
"""
# Tuesday 2026-09-08, 10:00 UTC: inside office hours.
T0 = datetime(2026, 9, 8, 10, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class History:
    """A Segment history written line by line, with unique messageIds."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def _add(self, message: dict[str, Any], at: datetime) -> dict[str, Any]:
        message = {"messageId": f"m-{len(self.lines) + 1:05d}", "timestamp": iso(at), **message}
        self.lines.append(message)
        return message

    def identify(self, user: str, account: str, at: datetime, **traits: Any) -> None:
        self._add({"type": "identify", "userId": user, "traits": traits, "context": {"groupId": account}}, at)

    def group(self, user: str, account: str, at: datetime, **traits: Any) -> None:
        self._add({"type": "group", "userId": user, "groupId": account, "traits": traits}, at)

    def track(self, event: str, user: str, account: str, at: datetime, **properties: Any) -> None:
        self._add({"type": "track", "event": event, "userId": user, "properties": properties,
                   "context": {"groupId": account}}, at)

    def sign_ins(self, user: str, account: str, start: datetime, n: int) -> None:
        for i in range(n):
            self.track("Signed In", user, account, start + timedelta(minutes=i))

    def write(self, path: Path, lines: Iterable[dict[str, Any]] | None = None) -> Path:
        path.write_text("".join(json.dumps(m) + "\n" for m in (self.lines if lines is None else lines)))
        return path


def crafted() -> History:
    """Four accounts whose outcome is known in advance (see test_replay_crafted)."""
    h = History()
    # acme: low touch, 6 sign-ins on Tuesday morning → PQL at the 5th; email in office hours.
    h.identify("ann", "acme", T0 - timedelta(hours=1), email="ann@acme.example", name="Ann Lee", timezone="UTC")
    h.group("ann", "acme", T0 - timedelta(hours=1), name="Acme", employees=12, plan="free")
    h.sign_ins("ann", "acme", T0, 6)
    # bigco: 500 employees → high touch → a task for the rep.
    h.identify("bob", "bigco", T0 - timedelta(hours=1), email="bob@bigco.example", name="Bob Stone", timezone="UTC")
    h.group("bob", "bigco", T0 - timedelta(hours=1), name="BigCo", employees=500, plan="free")
    h.sign_ins("bob", "bigco", T0 + timedelta(minutes=30), 5)
    # tiny: 2 sign-ins → never a PQL.
    h.identify("cat", "tiny", T0, email="cat@tiny.example", timezone="UTC")
    h.sign_ins("cat", "tiny", T0 + timedelta(minutes=40), 2)
    # night: qualifies on Tuesday at 22:00 UTC → the email waits until Wednesday 09:00 UTC.
    h.identify("dan", "night", T0 + timedelta(hours=11), email="dan@night.example", name="Dan Moss", timezone="UTC")
    h.sign_ins("dan", "night", T0 + timedelta(hours=12), 5)
    # a malformed event (no userId or anonymousId): quarantined by ingest, the rest goes on.
    h._add({"type": "track", "event": "Signed In", "context": {"groupId": "acme"}}, T0 + timedelta(hours=2))
    return h


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def definition_file(tmp_path: Path) -> Path:
    path = tmp_path / "definition.yaml"
    path.write_text(DEFINITION)
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def run(history: Path | list[Path], out: Path, definition: Path | None, policy: Path | None,
        template: Path = TEMPLATE, **kwargs: Any) -> dict[str, Any]:
    paths = history if isinstance(history, list) else [history]
    return replay(paths, out=out, template=template, root=REPO, definition=definition, policy=policy, **kwargs)
