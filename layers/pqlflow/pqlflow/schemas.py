"""Write the JSON Schema and a sample EventBridge event of every event pqlflow emits, under events/pqlflow/.

`make schemas` runs this; it also rewrites the usage-event contract's schemas (events/schemas/, from
`pqlflow.events.write_schemas`).

Run `python -m pqlflow.schemas` (or `make schemas`) from the repository root after changing
`pqlflow.contracts`; `--check` exits 1 when the files on disk are stale. Schemas are generated from the
pydantic models; samples are built through the models too (the three qualification events by
evaluating `examples/definitions/scoring.yaml` on a small history), so neither can drift from the code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pqlflow.contracts import (
    EMITTED,
    SOURCE,
    NurtureAction,
    OfferAccepted,
    RepTaskCreated,
    _Detail,
)

SAMPLE_TIME = "2026-11-02T09:30:00Z"


def slug(model: type[_Detail]) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model.DETAIL_TYPE.lower()).strip("-")


def schema(model: type[_Detail]) -> dict[str, Any]:
    body = model.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://pqlflow.dev/events/{slug(model)}.schema.json",
        "description": (
            f"detail of the EventBridge event source '{SOURCE}', detail-type '{model.DETAIL_TYPE}'. "
            + (model.__doc__ or "").strip()
        ),
        **body,
    }


def envelope(detail: _Detail) -> dict[str, Any]:
    """A sample EventBridge event as a rule target receives it."""
    return {
        "version": "0",
        "id": "6f1c3b1e-0000-4000-8000-" + slug(type(detail)).encode().hex()[:12].ljust(12, "0"),
        "detail-type": detail.DETAIL_TYPE,
        "source": SOURCE,
        "account": "123456789012",
        "time": _event_time(detail),
        "region": "us-east-1",
        "resources": [],
        "detail": detail.model_dump(mode="json"),
    }


def _event_time(detail: _Detail) -> str:
    data = detail.model_dump()
    for name in ("qualified_at", "disqualified_at", "converted_at", "accepted_at"):
        if isinstance(data.get(name), str):
            return data[name][:19] + "Z"
    return SAMPLE_TIME


def _qualification_samples() -> list[_Detail]:
    """PQL Qualified, PQL Disqualified and Account Converted, from the scoring example on a short history."""
    from pqlflow.definition import load_definition
    from pqlflow.events import UsageEvent, parse_message
    from pqlflow.qualification import decide, transition_event
    from pqlflow.usage import DAY_MS, AccountUsage

    root = Path(__file__).resolve().parents[3]
    defn = load_definition(root / "examples" / "definitions" / "scoring.yaml")
    spec = defn.tracking_spec()
    usage = AccountUsage("acct_42")
    start = 1_793_613_600_000  # 2026-11-02T10:00:00Z
    n = 0

    def send(kind: str, user: str, ms: int, **fields: Any) -> None:
        nonlocal n
        n += 1
        message = {"type": kind, "messageId": f"sample-{n}", "userId": user, "timestamp": _iso(ms), **fields}
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


def _iso(ms: int) -> str:
    from pqlflow.qualification import iso

    return iso(ms)


def samples() -> dict[str, _Detail]:
    qualified, disqualified, converted = _qualification_samples()
    context = qualified.model_dump(mode="json")
    others: list[_Detail] = [
        NurtureAction(
            action_id="0c2b8f7e5d1a4c3b9e8f7a6b5c4d3e2f",
            transition_id=qualified.transition_id,  # type: ignore[attr-defined]
            account_id="acct_42",
            channel="rep_task",
            outcome="send",
            touch="high",
            reasons=qualified.reasons,
            context=context,  # type: ignore[attr-defined]
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
        ),  # type: ignore[attr-defined]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pqlflow.schemas", description=__doc__)
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is missing or stale")
    args = parser.parse_args(argv)
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
        from pqlflow.events import write_schemas

        write_schemas(str(root / "events" / "schemas"))  # the usage-event contract's own schemas
    if args.check and stale:
        print("stale (run `make schemas`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(f"{len(stale)} file(s) {'stale' if args.check else 'written'} under {root / 'events' / 'pqlflow'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
