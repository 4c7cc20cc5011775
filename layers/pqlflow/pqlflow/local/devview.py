"""What `pqlflow dev` shows of what the system did: one readable line per happening, and the local inbox page.

Everything is derived from what actually ran, never recomputed beside it:

- pqlflow's events as the runtime routed them on its buses (`PQL Qualified`, `PQL Disqualified`,
  `Account Converted`, `Nurture Action`, `Rep Task Created`);
- each function's invocation: its event, its result and what it printed (Powertools' Embedded Metric
  Format and log JSON, captured per invocation): a collection API request is the invocation whose metrics
  say `MessagesCollected` (its answer names a bad field), an ingest batch the one whose metrics say
  `EventsIngested` (its event names and accounts: its SQS bodies read by the contract's own `parse_body`);
  an offer is an invocation that answered `created` with an `offer_id`;
- the rep task's stored item, for where it was delivered (its connectors);
- the emails moto's SES backend accepted (the raw MIME, as sent).

Terminal lines carry ids, counts and event names; an email address is masked (`c***@example.com`), and an email's
subject (templates personalize it with a first name) is only on the inbox page.
The feed also keeps the last `KEEP` of each kind for the inbox page (`pqlflow.local.devpage`).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import io
import json
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any, TextIO

from pqlflow.contracts.usage_events import Rejection, parse_body

KEEP = 200  # of each kind, for the page (the terminal shows them all as they happen)
_EMAIL = re.compile(r"([^\s@<>\"',;:]+)@([^\s@<>\"',;:]+)")


def mask(text: str) -> str:
    """Every email address in `text` as its first character, `***` and its domain: c***@example.com."""
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)


def _clip(text: Any, limit: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class SentEmail:
    """One email as SES accepted it."""

    number: int
    at: float
    raw: bytes
    message: EmailMessage = field(repr=False)

    @classmethod
    def parse(cls, number: int, at: float, raw: bytes) -> SentEmail:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return cls(number, at, raw, message)

    def header(self, name: str) -> str:
        return str(self.message.get(name) or "")

    def recipients(self) -> str:
        """The To addresses without their display names (a person's name): masked when printed."""
        return ", ".join(address for _name, address in getaddresses([self.header("To")]) if address)

    def part(self, kind: str) -> str:
        body = self.message.get_body(preferencelist=(kind,))
        if body is None or body.get_content_type() != f"text/{kind}":
            return ""
        content = body.get_content()
        return content if isinstance(content, str) else ""


@dataclass
class Row:
    """One happening as the page lists it."""

    at: float
    cells: dict[str, Any]


class DevFeed:
    """Turns what the runtime saw into terminal lines (written to `out`) and the inbox page's rows."""

    def __init__(self, out: TextIO, *, raw: bool = False, now: Callable[[], float] = time.time) -> None:
        self.out = out
        self.raw = raw
        self.now = now
        self.started = now()
        self.lock = threading.Lock()
        self.transitions: deque[Row] = deque(maxlen=KEEP)
        self.actions: deque[Row] = deque(maxlen=KEEP)
        self.emails: deque[SentEmail] = deque(maxlen=KEEP)
        self.offers: deque[Row] = deque(maxlen=KEEP)
        self.tasks: deque[Row] = deque(maxlen=KEEP)
        self.totals: Counter[str] = Counter()
        self.task_providers: Callable[[dict[str, Any]], list[str] | None] = lambda detail: None
        self._emails_seen = 0

    # -- the terminal ---
    def line(self, kind: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.now()))
        with self.lock:
            self.out.write(f"{stamp}  {kind:<10}{mask(text)}\n")
            self.out.flush()

    def closing_line(self) -> str:
        seconds = max(0.0, self.now() - self.started)
        took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
        t = self.totals
        return (f"pqlflow dev: stopped after {took} — {_n(t['events'], 'event')}, {_n(t['pqls'], 'PQL')}, "
                f"{_n(t['emails'], 'email')}, {_n(t['offers'], 'offer')}, {_n(t['tasks'], 'rep task')}\n")

    # -- pqlflow's events on the bus (the runtime's `observed` list calls `append`) ---
    def append(self, event: dict[str, Any]) -> None:
        kind = event.get("detail-type")
        detail = event.get("detail") or {}
        if not isinstance(detail, dict):
            return
        at = self.now()
        account = str(detail.get("account_id", ""))
        definition = detail.get("definition") or {}
        version = f"{definition.get('name')} v{definition.get('version')}" if isinstance(definition, dict) else ""
        reasons = [r for r in detail.get("reasons") or [] if isinstance(r, dict)]
        top = str(reasons[0].get("text") or reasons[0].get("label") or reasons[0].get("code")) if reasons else ""
        if kind in ("PQL Qualified", "PQL Disqualified", "Account Converted"):
            what = {"PQL Qualified": "qualified", "PQL Disqualified": "disqualified",
                    "Account Converted": "converted"}[kind]
            score = detail.get("score")
            self.transitions.append(Row(at, {"what": what, "account": account, "definition": version,
                                             "score": score, "reason": top, "touch": detail.get("touch")}))
            parts = [f"{account} {what}"]
            if version.strip():
                parts.append(version)
            if kind == "PQL Qualified":
                self.totals["pqls"] += 1
                parts.append(f"{detail.get('touch')} touch")
                if score is not None:
                    parts.append(f"score {score:g}" if isinstance(score, int | float) else f"score {score}")
            if top:
                parts.append(_clip(top, 60))
            self.line("PQL" if kind != "Account Converted" else "converted", " · ".join(parts))
        elif kind == "Nurture Action":
            self._action(at, account, detail)
        elif kind == "Rep Task Created":
            providers = self.task_providers(detail)
            via = "via " + ", ".join(providers) if providers else "no connector: kept in pqlflow"
            self.totals["tasks"] += 1
            self.tasks.append(Row(at, {"account": account, "owner": detail.get("owner"), "title": detail.get("title"),
                                       "due": detail.get("due_at"), "body": detail.get("body"), "via": via}))
            self.line("rep task", f"{account} · for {detail.get('owner')} · due {detail.get('due_at')} · {via}")

    def _action(self, at: float, account: str, detail: dict[str, Any]) -> None:
        channel, outcome = detail.get("channel"), detail.get("outcome", "send")
        what = detail.get("template") or detail.get("offer") or ""
        self.actions.append(Row(at, {"account": account, "channel": channel, "outcome": outcome, "what": what,
                                     "why": detail.get("why"), "send_after": detail.get("send_after")}))
        text = f"{account} → {channel}" + (f" {what}" if what else "")
        if outcome == "send":
            text += " (send)"
        elif outcome == "deferred":
            text += f" deferred to {detail.get('send_after')} ({detail.get('why')})"
        else:
            text += f" not sent: {outcome}" + (f" ({detail.get('why')})" if detail.get("why") else "")
        self.line("action", text)

    # -- each function invocation (the dev runtime calls this after it) ---
    def invoked(self, function: str, event: Any, result: Any, printed: str) -> None:
        if self.raw and printed:
            with self.lock:
                self.out.write(printed)
                self.out.flush()
        metrics = _emf_metrics(printed)
        if "MessagesCollected" in metrics:
            self._collected(event, result, metrics)
        if "EventsIngested" in metrics:
            self._ingested(event, metrics)
        if isinstance(result, dict) and result.get("offer_id") and result.get("outcome") == "created":
            detail = event.get("detail") if isinstance(event, dict) else None
            detail = detail if isinstance(detail, dict) else {}
            self.totals["offers"] += 1
            account, user = str(detail.get("account_id", "")), detail.get("recipient_user_id") or detail.get("user_id")
            self.offers.append(Row(self.now(), {"account": account, "offer": detail.get("offer"), "user": user,
                                                "offer_id": result["offer_id"]}))
            self.line("offer", f"{account} · {detail.get('offer')} for user {user}")
        self._new_emails()

    def _collected(self, event: Any, result: Any, metrics: dict[str, float]) -> None:
        path = event.get("rawPath", "") if isinstance(event, dict) else ""
        status = result.get("statusCode") if isinstance(result, dict) else None
        text = f"{_n(int(metrics['MessagesCollected']), 'message')} accepted on {path} ({status})"
        if metrics.get("MessagesRejected"):
            text += f" · {int(metrics['MessagesRejected'])} rejected"
        if isinstance(status, int) and status >= 400:  # the answer names the field, as the SDK got it
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                text += f": {_clip(json.loads(result.get('body') or '').get('message'), 100)}"
        self.line("collect", text)

    def _ingested(self, event: Any, metrics: dict[str, float]) -> None:
        names: Counter[str] = Counter()
        accounts: list[str] = []
        for body in _sqs_bodies(event):
            parsed = parse_body(body, self.now())
            if isinstance(parsed, Rejection):
                continue
            names[parsed.name or parsed.kind] += 1
            if parsed.account_id not in accounts:
                accounts.append(parsed.account_id)
        accepted = int(metrics.get("EventsIngested", 0))
        self.totals["events"] += accepted
        shown = ", ".join(accounts[:3]) + (f" and {len(accounts) - 3} more" if len(accounts) > 3 else "")
        text = f"{_n(accepted, 'event')}"
        if accounts:
            text += f" · {_n(len(accounts), 'account')} ({shown})"
        if names:
            text += " · " + ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in names.most_common(6))
        for metric, label in (("DuplicatesInBatch", "duplicate"), ("EventsQuarantined", "quarantined")):
            if metrics.get(metric):
                text += f" · {int(metrics[metric])} {label}"
        self.line("ingest", text)

    def _new_emails(self) -> None:
        from pqlflow.local.emulator import sent_emails_after  # moto's SES backend lives in this process

        self._emails_seen, new = sent_emails_after(self._emails_seen)
        for raw in new:
            self.totals["emails"] += 1
            sent = SentEmail.parse(self.totals["emails"], self.now(), raw)
            self.emails.append(sent)
            template = sent.header("X-Pqlflow-Template")
            # the subject stays on the inbox page: templates personalize it ("Ann, ..."), a name is personal data
            self.line("email", f"#{sent.number} to {sent.recipients()}" + (f" · {template}" if template else "")
                               + " · subject and body on the inbox page")

    def email(self, number: int) -> SentEmail | None:
        # a copy (one C call): the pump thread appends while the page's thread looks
        return next((e for e in list(self.emails) if e.number == number), None)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _emf_metrics(printed: str) -> dict[str, float]:
    """The metric values of the EMF documents among `printed`'s lines (summed when a metric repeats)."""
    values: dict[str, float] = {}
    for document in _emf_documents(printed):
        for directive in (document.get("_aws") or {}).get("CloudWatchMetrics") or []:
            for metric in directive.get("Metrics") or []:
                name = metric.get("Name")
                value = document.get(name)
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, int | float):
                        values[name] = values.get(name, 0) + v
    return values


def _emf_documents(printed: str) -> Iterator[dict[str, Any]]:
    for line in printed.splitlines():
        if line.startswith("{") and '"_aws"' in line:  # EMF documents only: no log line is parsed
            with contextlib.suppress(ValueError):
                document = json.loads(line)
                if isinstance(document, dict):
                    yield document


def _sqs_bodies(event: Any) -> Iterable[str]:
    records = event.get("Records") if isinstance(event, dict) else None
    for record in records or []:
        if isinstance(record, dict) and isinstance(record.get("body"), str):
            yield record["body"]


class CurrentStdout(io.TextIOBase):
    """A stream that is whatever `sys.stdout` is at each write: Powertools' logger handler holds the stream
    it was created with, so without this a function's log lines would escape the per-invocation capture."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextlib.contextmanager
def logs_follow_stdout() -> Iterator[None]:
    """pqlflow's Powertools logger writes to the current sys.stdout inside the block."""
    import logging

    from pqlflow.kernel.observability import logger

    handler = logger.registered_handler
    if not isinstance(handler, logging.StreamHandler):
        yield
        return
    previous = handler.setStream(CurrentStdout())
    try:
        yield
    finally:
        if previous is not None:
            handler.setStream(previous)


def dev_runtime_class(base: type, feed: DevFeed) -> type:
    """`base` (a LocalRuntime) whose invocations print into a buffer the feed reads, and whose observed
    pqlflow events go to the feed."""

    class DevRuntime(base):
        def _invoke(self, function: str, event: Any) -> Any:
            printed = io.StringIO()
            with self._invoking, contextlib.redirect_stdout(printed):
                outcome = super()._invoke(function, event)
            feed.invoked(function, event, outcome.result, printed.getvalue())
            return outcome

    return DevRuntime
