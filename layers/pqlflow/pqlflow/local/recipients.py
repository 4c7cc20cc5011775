"""Simulated recipients for a replay: what people do with the nurture they get, so the demo shows engagement.

`pqlflow replay --simulate-recipients` (and `make demo`) adds them. Every nurture email SES accepted is
delivered, and some recipients open it, click it, or unsubscribe with the email's own one-click
List-Unsubscribe link; every in-app offer is fetched by the app, and some users view it, then accept
or dismiss it. What each one does is decided by a hash of the action id, so a replay is reproducible.

Everything goes in through the deployed paths: SES events as the configuration set's EventBridge
destination puts them on the default bus (source `aws.ses`, the tags the send carried) for the
ses_events function; the unsubscribe and offers HTTP API routes of the template. Nothing is written
to the table directly.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from pqlflow.kernel import clock

_LINK = re.compile(r'href="(https://[^"]+)"')


@dataclass(frozen=True)
class Rates:
    """Shares of recipients who do each thing (of emails delivered; of offers shown)."""

    email_open: float = 0.45
    email_click: float = 0.15  # clickers open too
    email_unsubscribe: float = 0.04
    offer_view: float = 0.7
    offer_accept: float = 0.2  # of all offers: those who accept viewed it first
    offer_dismiss: float = 0.25


def _roll(key: str, what: str) -> float:
    """Where `key` falls in [0, 1) for `what`: stable, independent between kinds of behaviour."""
    return int.from_bytes(hashlib.sha256(f"{what}:{key}".encode()).digest()[:8], "big") / 2**64


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Recipients:
    """Reacts to what the runtime sent since the last call; the runtime must tap `sesv2.SendEmail`."""

    runtime: Any
    rates: Rates = field(default_factory=Rates)
    seen_calls: int = 0
    seen_events: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def react(self) -> int:
        """Reply to every email sent and offer made since the last call; returns how many reactions."""
        done = 0
        tapped = self.runtime.requests.tapped
        for call in tapped[self.seen_calls:]:
            if call.operation == "SendEmail":
                done += self._email(call.params)
        self.seen_calls = len(tapped)
        observed = self.runtime.observed
        for event in observed[self.seen_events:]:
            detail = event.get("detail") or {}
            if (event.get("detail-type") == "Nurture Action" and detail.get("channel") == "offer"
                    and detail.get("outcome") == "send" and detail.get("recipient_user_id")):
                done += self._offer(detail)
        self.seen_events = len(observed)
        if done:
            self.runtime.run_until_idle()
        return done

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # --- email -------------------------------------------------------------------------------------

    def _email(self, params: dict[str, Any]) -> int:
        tags = {t["Name"]: [t["Value"]] for t in params.get("EmailTags") or []}
        if "pqlflow_action" not in tags:
            return 0
        key = tags["pqlflow_action"][0]
        raw: bytes = params.get("Content", {}).get("Raw", {}).get("Data") or b""
        if isinstance(raw, str):
            raw = raw.encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        html = message.get_body(preferencelist=("html",)) if isinstance(message, EmailMessage) else None
        links = [u for u in _LINK.findall(html.get_content()) if "unsubscribe" not in u] if html is not None else []
        now = clock.now()
        mail = {
            "timestamp": _iso(now), "messageId": "sim-" + hashlib.sha256(key.encode()).hexdigest()[:40],
            "destination": list((params.get("Destination") or {}).get("ToAddresses") or []),
            "tags": {"ses:configuration-set": [params.get("ConfigurationSetName", "")]} | tags,
        }
        events = [("Email Delivered", {"eventType": "Delivery", "mail": mail, "delivery": {"timestamp": _iso(now)}})]
        clicks = _roll(key, "click") < self.rates.email_click
        if clicks or _roll(key, "open") < self.rates.email_open:
            events.append(("Email Opened", {"eventType": "Open", "mail": mail, "open": {"timestamp": _iso(now + 60)}}))
        if clicks and links:
            events.append(("Email Clicked", {"eventType": "Click", "mail": mail,
                                             "click": {"timestamp": _iso(now + 90), "link": links[0]}}))
        self.runtime.put_events([{"Source": "aws.ses", "DetailType": name, "Detail": detail, "EventBusName": "default"}
                                 for name, detail in events])
        for name, _ in events:
            self._count(name)
        if _roll(key, "unsubscribe") < self.rates.email_unsubscribe:
            self._unsubscribe(message)
        return len(events)

    def _unsubscribe(self, message: Any) -> None:
        header = str(message.get("List-Unsubscribe") or "").strip("<> ")
        if not header.startswith("http"):
            return
        url = urlsplit(header)
        answer = self.runtime.invoke_http("POST", url.path, query=url.query, body="List-Unsubscribe=One-Click",
                                          headers={"content-type": "application/x-www-form-urlencoded"})
        if answer.get("statusCode") == 200:
            self._count("unsubscribed")

    # --- offers ------------------------------------------------------------------------------------

    def _offer(self, action: dict[str, Any]) -> int:
        self.runtime.run_until_idle()  # the offers function stores the offer the action asks for
        claims = {"sub": action["recipient_user_id"]}
        answer = self.runtime.invoke_http("GET", "/offers", claims=claims)
        if answer.get("statusCode") != 200:
            return 0
        offers = [o for o in json.loads(answer.get("body") or "{}").get("offers", [])
                  if o.get("offer") == action.get("offer")]
        done = 0
        key = str(action["action_id"])
        for offer in offers[:1]:
            accept, dismiss = _roll(key, "accept"), _roll(key, "dismiss")
            if _roll(key, "view") >= self.rates.offer_view and accept >= self.rates.offer_accept:
                continue
            self.runtime.invoke_http("POST", f"/offers/{offer['id']}/view", claims=claims)
            self._count("offer viewed")
            done += 1
            if accept < self.rates.offer_accept:
                if self.runtime.invoke_http("POST", f"/offers/{offer['id']}/accept", claims=claims).get(
                        "statusCode") == 200:
                    self._count("offer accepted")
            elif dismiss < self.rates.offer_dismiss:
                self.runtime.invoke_http("POST", f"/offers/{offer['id']}/dismiss", claims=claims)
                self._count("offer dismissed")
        return done
