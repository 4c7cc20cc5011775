"""`pqlflow schemas`: write the JSON Schema and a sample EventBridge event of every event pqlflow emits.

Files go under events/pqlflow/ (and the usage-event contract's schemas under events/schemas/, from
`pqlflow.contracts.usage_events.write_schemas`). Run it (or `make schemas`) from the repository root
after changing `pqlflow.contracts.emitted`; `--check` exits 1 when the files on disk are stale. Samples
are built through the models too (the three qualification events by evaluating
`examples/definitions/scoring.yaml` on a small history), so they cannot drift from the code either.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pqlflow.contracts.emitted import (
    EMITTED,
    AccountChurned,
    EmailBounced,
    EmailClicked,
    EmailComplained,
    EmailDelivered,
    EmailOpened,
    JourneyStepDue,
    JourneyStopped,
    NurtureAction,
    OfferAccepted,
    OfferDismissed,
    OfferViewed,
    PqlQualified,
    RepTaskClosed,
    RepTaskCreated,
    _Detail,
)
from pqlflow.contracts.schemas import envelope, schema, slug
from pqlflow.contracts.usage_events import UsageEvent, parse_message, write_schemas
from pqlflow.ingest.usage import DAY_MS, AccountUsage
from pqlflow.qualify.definition import load_definition
from pqlflow.qualify.evaluation import decide, iso, transition_event


def _qualification_samples() -> list[_Detail]:
    """PQL Qualified, PQL Disqualified and Account Converted, from the scoring example on a short history."""
    root = Path(__file__).resolve().parents[4]
    defn = load_definition(root / "examples" / "definitions" / "scoring.yaml")
    spec = defn.tracking_spec()
    usage = AccountUsage("acct_42")
    start = 1_793_613_600_000  # 2026-11-02T10:00:00Z
    n = 0

    def send(kind: str, user: str, ms: int, **fields: Any) -> None:
        nonlocal n
        n += 1
        message = {"type": kind, "messageId": f"sample-{n}", "userId": user, "timestamp": iso(ms), **fields}
        if kind == "group":
            message["groupId"] = "acct_42"
        else:
            message["context"] = {"groupId": "acct_42"}
        event = parse_message(message, now_s=start / 1000 + 90 * 86400, retention_days=365)
        assert isinstance(event, UsageEvent), event
        usage.apply(event, spec)

    send("group", "usr_1", start, traits={"name": "Acme Robotics", "employees": 240, "plan": "free"})
    send(
        "identify",
        "usr_1",
        start + 1000,
        traits={"email": "dana@acme.example", "name": "Dana Reyes", "timezone": "Europe/Berlin"},
    )
    ms = start + 2000
    for i, (event, props) in enumerate(
        [("Signed In", {})] * 10
        + [("Feature Used", {"feature": "workflows"})] * 6
        + [("Invite Sent", {})] * 2
        + [("Page Viewed", None)]
    ):
        ms += 60_000
        user = f"usr_{1 + i % 3}"
        if props is None:
            send("page", user, ms, name="Pricing")
        else:
            send("track", user, ms, event=event, properties=props)
    details: list[_Detail] = []
    state = None
    for at in (ms, ms + 40 * DAY_MS):
        t = decide(defn, usage, state, at)
        assert t is not None
        details.append(transition_event(defn, usage, t))
        state = t.new_state
    send("track", "usr_1", ms + 41 * DAY_MS, event="Subscription Started", properties={"plan": "pro"})
    t = decide(defn, usage, state, usage.last_seen_ms or 0)
    assert t is not None
    details.append(transition_event(defn, usage, t))
    return details


def _engagement_samples(transition_id: str) -> list[_Detail]:
    email: dict[str, Any] = {"action_id": "act_5e0c7b2a9d41f3e86c1b0a7f4d2e9c35", "transition_id": transition_id,
             "account_id": "acct_42", "user_id": "usr_1", "template": "upgrade_nudge",
             "ses_message_id": "0100019a4e1b2c3d-5f6a7b8c-0000-4000-8000-000000000000-000000"}
    offer: dict[str, Any] = {"action_id": "act_9b3d61f0e2a84c7d5e1f0b9a8c7d6e5f", "transition_id": transition_id,
             "account_id": "acct_42", "user_id": "usr_1", "step": 1, "offer_id": "of_7d2c1e",
             "offer": "extended_trial_14d"}
    return [
        EmailDelivered(engagement_id="eng_delivered_1", occurred_at="2026-11-02T09:31:04Z", **email),
        EmailOpened(engagement_id="eng_opened_1", occurred_at="2026-11-02T10:12:40Z", **email),
        EmailClicked(engagement_id="eng_clicked_1", occurred_at="2026-11-02T10:13:02Z",
                     link="https://app.example.com/billing/upgrade", **email),
        EmailBounced(engagement_id="eng_bounced_1", occurred_at="2026-11-02T09:31:04Z", bounce_type="Permanent",
                     **email),
        EmailComplained(engagement_id="eng_complained_1", occurred_at="2026-11-02T11:40:00Z", **email),
        OfferViewed(engagement_id="eng_viewed_1", occurred_at="2026-11-05T09:41:00Z", **offer),
        OfferDismissed(engagement_id="eng_dismissed_1", occurred_at="2026-11-05T09:41:30Z", **offer),
        RepTaskClosed(engagement_id="eng_task_1", action_id="act_0c2b8f7e5d1a4c3b9e8f7a6b5c4d3e2f",
                      transition_id=transition_id, account_id="acct_42", step=2, task_id="task_5b1f",
                      outcome="completed", via="hubspot", occurred_at="2026-11-09T16:20:00Z"),
    ]


def samples() -> dict[str, _Detail]:
    qualified, disqualified, converted = _qualification_samples()
    assert isinstance(qualified, PqlQualified), qualified
    context = qualified.model_dump(mode="json")
    others: list[_Detail] = [
        NurtureAction(
            action_id="0c2b8f7e5d1a4c3b9e8f7a6b5c4d3e2f",
            transition_id=qualified.transition_id,
            account_id="acct_42",
            channel="rep_task",
            outcome="send",
            touch="high",
            reasons=qualified.reasons,
            context=context,
        ),
        OfferAccepted(
            offer_id="of_7d2c1e",
            account_id="acct_42",
            user_id="usr_1",
            offer="extended_trial_14d",
            accepted_at="2026-11-03T08:12:00Z",
        ),
        RepTaskCreated(
            task_id="task_5b1f",
            account_id="acct_42",
            owner="rep_jordan",
            due_at="2026-11-04T17:00:00Z",
            title="Acme Robotics is a PQL: a team adopting fast",
            body="Why now: 10 sign-ins, 2 invites, pricing "
            "page viewed. Suggested talk track: team workflows on the Pro plan.",
            transition_id=qualified.transition_id,
        ),
        AccountChurned(
            account_id="acct_42",
            churned_at="2027-03-01T10:00:00Z",
            converted_at="2026-12-14T10:21:00Z",
            reason="subscription_cancelled",
            mrr=49.0,
        ),
        JourneyStepDue(transition_id=qualified.transition_id, account_id="acct_42", rule="team_adopting_fast",
                       step=1, due_at="2026-11-05T09:30:00Z"),
        JourneyStopped(transition_id=qualified.transition_id, account_id="acct_42", rule="team_adopting_fast",
                       reason="converted", after_step=1, stopped_at="2026-11-06T14:02:00Z",
                       why="Account Converted at 2026-11-06T14:02:00Z"),
        *_engagement_samples(qualified.transition_id),
    ]
    by_type = {d.DETAIL_TYPE: d for d in [qualified, disqualified, converted, *others]}
    return {m.DETAIL_TYPE: by_type[m.DETAIL_TYPE] for m in EMITTED}


def files() -> dict[str, str]:
    """Relative path → content of every generated file."""
    out: dict[str, str] = {}
    by_type = samples()
    for model in EMITTED:
        out[f"events/pqlflow/{slug(model)}.schema.json"] = json.dumps(schema(model), indent=2) + "\n"
        out[f"events/pqlflow/{slug(model)}.json"] = (
            json.dumps(envelope(by_type[model.DETAIL_TYPE]), indent=2, ensure_ascii=False) + "\n"
        )
    return out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "schemas",
        help="write (or --check) the JSON Schemas and samples of the events in and out",
        description="Write the JSON Schema and a sample EventBridge event of every event pqlflow emits "
        "under events/pqlflow/, and the usage-event contract's schemas under events/schemas/.",
    )
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is missing or stale")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    stale = []
    for relative, content in files().items():
        path = root / relative
        if path.exists() and path.read_text(encoding="utf-8") == content:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
    if not args.check:
        write_schemas(str(root / "events" / "schemas"))  # the usage-event contract's own schemas
    if args.check and stale:
        print("stale (run `make schemas`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(f"{len(stale)} file(s) {'stale' if args.check else 'written'} under {root / 'events' / 'pqlflow'}")
    return 0

