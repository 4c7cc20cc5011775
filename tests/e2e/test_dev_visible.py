"""`pqlflow dev` you can see: readable lines for what happened (no EMF JSON unless asked), the local inbox page
over real HTTP (the email as sent, escaped), and SIGTERM stopping a real `pqlflow dev` process cleanly."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_api._internal import moto_api_backend
from pqlflow.cli.dev import DevStack, serve
from pqlflow.collect.keys import DEV_WRITE_KEY

from tests.e2e.conftest import DEFINITION, REPO, TEMPLATE
from tests.e2e.test_collect_sdks import Printed
from tests.e2e.test_dev import wait_for

# No holdout, no quiet hours: the email goes out at once, whatever the hour the test runs.
POLICY = """\
name: dev-visible
version: 1
description: A rep for big accounts, an offer for plan "offer-me", else an email at once (tests of pqlflow dev).
holdout: {share: 0.0, salt: dev, touch: [low]}
quiet_hours: {enabled: false}
rules:
  - name: rep-follow-up
    when: {touch: high}
    then: {channel: rep_task}
  - name: in-app
    when: {trait: {name: plan, value: offer-me}}
    then: {channel: offer, offer: trial-extension-14}
  - name: personalized-email
    then: {channel: email, template: upgrade_nudge}
"""
HOSTILE = "<script>alert(1)</script>{{ 7*7 }}"


def text(printed: Printed) -> str:
    return "".join(list(printed.lines))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = Path(tmp_path_factory.mktemp("dev-visible"))
    (folder / "definition.yaml").write_text(DEFINITION)  # five sign-ins make a PQL
    (folder / "policy.yaml").write_text(POLICY)
    return folder / "definition.yaml", folder / "policy.yaml"


@pytest.fixture(scope="module")
def dev(files: tuple[Path, Path]) -> Iterator[tuple[DevStack, Printed]]:
    definition, policy = files
    moto_api_backend.reset()  # a dev stack run earlier in this process (test_dev's) may have left its resources
    stop, started, printed = threading.Event(), [], Printed()
    thread = threading.Thread(target=serve, args=(TEMPLATE,), daemon=True, kwargs={
        "port": 0, "http_port": 0, "definition": definition, "policy": policy, "stop": stop, "out": printed,
        "ready": started.append})
    thread.start()
    try:
        assert wait_for(lambda: bool(started)), "the dev stack did not start"
        yield started[0], printed
    finally:
        stop.set()
        thread.join(timeout=30)
        moto_api_backend.reset()  # moto's backends outlive its server in this process: none for the next stack
    assert not thread.is_alive()
    assert "pqlflow dev: stopped after" in text(printed)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cross_the_definition(endpoint: str, bus: str, account: str, user: str, address: str, company: str,
                         **traits: Any) -> None:
    """What a product's backend puts with boto3: who the user is, the account, five sign-ins."""
    events = boto3.client("events", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    messages: list[dict[str, Any]] = [
        {"type": "identify", "userId": user, "traits": {"email": address, "first_name": "Ann"},
         "context": {"groupId": account}},
        {"type": "group", "userId": user, "groupId": account, "traits": {"name": company, "employees": 12, **traits}},
    ] + [{"type": "track", "event": "Signed In", "userId": user, "context": {"groupId": account}}] * 5
    entries = [{"Source": "pqlflow.emitter", "DetailType": m["type"], "EventBusName": bus,
                "Detail": json.dumps({**m, "messageId": f"{account}-{i}", "timestamp": now()})}
               for i, m in enumerate(messages)]
    assert events.put_events(Entries=entries)["FailedEntryCount"] == 0


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the local dev stack
        return response.status, response.headers.get("content-type", ""), response.read()


@pytest.fixture(scope="module")
def crossed(dev: tuple[DevStack, Printed]) -> tuple[DevStack, Printed, str]:
    stack, printed = dev
    account = f"acct-{uuid.uuid4().hex[:8]}-{HOSTILE}"  # account ids are any printable text
    cross_the_definition(stack.endpoint, stack.usage_bus, account, "ann", "ann.lee@example.com", HOSTILE)
    assert wait_for(lambda: re.search(r"\bemail +#\d+ to ", text(printed)) is not None, 60), text(printed)
    return stack, printed, account


def test_the_terminal_shows_readable_lines_not_emf_json(crossed: tuple[DevStack, Printed, str]) -> None:
    stack, printed, account = crossed
    lines = text(printed).splitlines()
    # Then one line each: the batches ingested, the PQL, the action, the email (address masked)
    ingest = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ingest ", line)]
    assert ingest and sum(int(re.search(r"ingest +(\d+) event", line).group(1)) for line in ingest) == 7
    assert any("Signed In" in line for line in ingest)
    pql = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  PQL ", line)]
    assert len(pql) == 1 and f"{account} qualified" in pql[0] and "e2e-sign-ins v1" in pql[0]
    assert "5 sign-ins" in pql[0]
    assert any(re.match(rf"\d\d:\d\d:\d\d  action +{re.escape(account)} → email upgrade_nudge", line) for line in lines)
    sent = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  email ", line)]
    assert len(sent) == 1 and "to a***@example.com" in sent[0] and "upgrade_nudge" in sent[0]
    # And no JSON at all: neither EMF nor a log line, nor the address in clear
    assert '"_aws"' not in text(printed) and not any(line.lstrip().startswith("{") for line in lines)
    assert "ann.lee@example.com" not in text(printed)
    # nor the first name the email's subject greets the reader with (the subject is on the inbox page)
    assert stack.feed.emails[-1].header("Subject").startswith("Ann")
    assert not re.search(r"\bAnn\b", text(printed))


def test_the_inbox_page_lists_the_email_and_shows_it_as_sent(crossed: tuple[DevStack, Printed, str]) -> None:
    stack, _printed, account = crossed
    sent = stack.feed.emails[-1]
    subject = sent.header("Subject")
    assert subject
    # When the inbox page is fetched over HTTP
    status, kind, body = get(f"{stack.http_url}/_pqlflow/")
    page = body.decode()
    # Then it lists the email (its subject, linked), the transition and the action
    assert status == 200 and kind.startswith("text/html")
    assert f'href="/_pqlflow/emails/{sent.number}"' in page
    assert _escaped(subject) in page and _escaped(account) in page and "upgrade_nudge" in page
    assert 'http-equiv="refresh"' in page
    # And the email's view shows its headers (List-Unsubscribe too) and the HTML part in a sandboxed iframe
    status, kind, body = get(f"{stack.http_url}/_pqlflow/emails/{sent.number}")
    view = body.decode()
    assert status == 200 and "List-Unsubscribe" in view and "List-Unsubscribe-Post" in view
    assert re.search(r"<iframe sandbox [^>]*srcdoc=\"", view)
    # And the raw message is the one SES accepted: it parses, addressed to the user, with its one-click header
    status, kind, raw = get(f"{stack.http_url}/_pqlflow/emails/{sent.number}.eml")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert kind == "message/rfc822" and message["To"].addresses[0].addr_spec == "ann.lee@example.com"
    assert message["Subject"] == subject and message["List-Unsubscribe"].startswith("<http")
    assert message.get_body(preferencelist=("html",)) is not None


def test_the_pages_escape_a_hostile_account_id_and_name(crossed: tuple[DevStack, Printed, str]) -> None:
    stack, _printed, account = crossed
    number = stack.feed.emails[-1].number
    inbox = get(f"{stack.http_url}/_pqlflow/")[2].decode()
    view = get(f"{stack.http_url}/_pqlflow/emails/{number}")[2].decode()
    for page in (inbox, view):
        # The hostile string never becomes markup, and is never evaluated as a template ({{ 7*7 }} is not 49)
        assert "<script>" not in page and "alert(1)</script>" not in page
    assert _escaped(account) in inbox and "&lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }}" in inbox
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }} has been busy" in view  # the text part
    # The email's HTML part is inside srcdoc, escaped once more: no tag of it closes the attribute
    srcdoc = re.search(r'srcdoc="([^"]*)"', view)
    assert srcdoc is not None and "<" not in srcdoc.group(1) and "&lt;html" in srcdoc.group(1).lower()


def test_the_template_routes_keep_their_answers_beside_the_page(dev: tuple[DevStack, Printed]) -> None:
    stack, _printed = dev
    assert get(f"{stack.http_url}/")[0] == 200  # no template route takes /: the inbox does
    try:
        get(f"{stack.http_url}/offers")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    else:
        raise AssertionError("GET /offers without a token answered 2xx")
    try:
        get(f"{stack.http_url}/_pqlflow/emails/99999")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def test_offers_and_rep_tasks_get_their_lines_and_rows(dev: tuple[DevStack, Printed]) -> None:
    stack, printed = dev
    big, trial = f"big-{uuid.uuid4().hex[:6]}", f"trial-{uuid.uuid4().hex[:6]}"
    # When a 500-person account and a plan "offer-me" account cross the definition
    cross_the_definition(stack.endpoint, stack.usage_bus, big, "cy", "cy@example.com", "Big Co", employees=500)
    cross_the_definition(stack.endpoint, stack.usage_bus, trial, "di", "di@example.com", "Trial Co", plan="offer-me")
    # Then the rep task and the offer each get a line, saying where the task went and for whom the offer is
    assert wait_for(lambda: re.search(rf"  rep task +{big} · for ", text(printed)) is not None, 60), text(printed)
    assert wait_for(lambda: re.search(rf"  offer +{trial} · trial-extension-14 for user di", text(printed))
                    is not None, 60), text(printed)
    task_line = next(line for line in text(printed).splitlines() if f"rep task  {big}" in line)
    assert "no connector: kept in pqlflow" in task_line
    assert "@" not in task_line.replace("***@", "")  # an owner's address would be masked
    assert re.search(rf"  PQL +{big} qualified · e2e-sign-ins v1 · high touch", text(printed))
    # And the page lists them
    page = get(f"{stack.http_url}/_pqlflow/")[2].decode()
    tasks, offers = page[page.index('id="tasks"'):], page[page.index('id="offers"'):page.index('id="tasks"')]
    assert big in tasks and trial in offers and "trial-extension-14" in offers


def test_a_collection_api_request_gets_a_line_naming_the_bad_field(dev: tuple[DevStack, Printed]) -> None:
    stack, printed = dev
    account = f"col-{uuid.uuid4().hex[:6]}"
    good = {"type": "track", "event": "Report Exported", "userId": "zed", "messageId": f"{account}-1",
            "timestamp": now(), "context": {"groupId": account}}
    bad = {"type": "track", "userId": "zed", "messageId": f"{account}-2", "timestamp": now()}  # no event name
    # When an SDK posts a batch with one good and one bad message over real HTTP
    request = urllib.request.Request(
        f"{stack.http_url}/v1/batch", data=json.dumps({"batch": [good, bad]}).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": "Basic " + base64.b64encode(
            f"{DEV_WRITE_KEY}:".encode()).decode()})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - the local dev stack
    assert answer.value.code == 400
    # Then the terminal says what the API answered, naming the bad message's field, and the good one is ingested
    assert wait_for(lambda: re.search(rf"  ingest +1 event · 1 account \({account}\) · Report Exported",
                                      text(printed)) is not None, 30), text(printed)
    collect = [line for line in text(printed).splitlines() if re.match(r"\d\d:\d\d:\d\d  collect ", line)]
    assert any("1 message accepted on /v1/batch (400) · 1 rejected" in line and "batch[1] event" in line
               for line in collect), collect


def test_a_b2c_account_named_by_an_address_is_masked_on_every_line(dev: tuple[DevStack, Printed]) -> None:
    stack, printed = dev
    address = f"eve.{uuid.uuid4().hex[:6]}@example.org"
    events = boto3.client("events", endpoint_url=stack.endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    # Given a B2C product whose user ids are email addresses: no group, so the account is `user:<address>`
    messages = [{"type": "identify", "userId": address, "traits": {"email": address}}] + [
        {"type": "track", "event": "Signed In", "userId": address}] * 5
    assert events.put_events(Entries=[
        {"Source": "pqlflow.emitter", "DetailType": m["type"], "EventBusName": stack.usage_bus,
         "Detail": json.dumps({**m, "messageId": f"{address}-{i}", "timestamp": now()})}
        for i, m in enumerate(messages)])["FailedEntryCount"] == 0
    masked = f"user:e***@{address.split('@')[1]}"
    # Then its PQL and its email get their lines, with the address masked wherever it appears
    assert wait_for(lambda: re.search(rf"  PQL +{re.escape(masked)} qualified", text(printed)) is not None, 60)
    assert wait_for(lambda: f"to e***@{address.split('@')[1]}" in text(printed), 60), text(printed)
    assert address not in text(printed)


def _escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_sigterm_stops_a_dev_process_with_a_closing_line_and_raw_logs_on_request(files: tuple[Path, Path]) -> None:
    definition, policy = files
    # Given `pqlflow dev --raw-logs` as a real process
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pqlflow.cli", "dev", "--port", "0", "--http-port", "0", "--raw-logs",
         "--definition", str(definition), "--policy", str(policy), "--template", str(TEMPLATE)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: any("usage bus" in line for line in out), 90), "".join(out)
        banner = "".join(out)
        endpoint = re.search(r"AWS endpoint +(\S+)", banner).group(1)
        bus = re.search(r"usage bus +(\S+)", banner).group(1)
        # When an account crosses the definition
        cross_the_definition(endpoint, bus, "acct-raw", "bo", "bo@example.com", "Bo & Co")
        assert wait_for(lambda: any(re.search(r"  PQL +acct-raw qualified", line) for line in out), 60), "".join(out)
        # Then with --raw-logs the functions' EMF JSON is printed too
        assert wait_for(lambda: any('"_aws"' in line for line in out), 10)
        # When it gets SIGTERM
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    # Then it exits 0 with its closing line, counting what it saw
    assert code == 0
    closing = [line for line in out if line.startswith("pqlflow dev: stopped after")]
    assert len(closing) == 1 and "7 events, 1 PQL, 1 email" in closing[0], "".join(out[-5:])
