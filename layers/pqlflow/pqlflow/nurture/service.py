"""The route service: on `PQL Qualified`, decide the one nurture action and put it on the bus, exactly once.

Every trigger may be redelivered (EventBridge delivers at least once). The decision is the pure
`pqlflow.nurture.routing.route`; `RouteService` only reads its inputs (`pqlflow.nurture.store`),
stores the result and emits it:

1. One consistent BatchGetItem reads the stored action (`A#<account>` / `NURTURE#<transition_id>`),
   account suppression (`A#<account>` / `SUPPRESSED`), the frequency-cap items (`A#<account>` and
   `U#<user>` / `NURTURE#CAP`) and the candidate recipients' suppression entries (`SUP#<sha256>` /
   `EMAIL`). A stored action means this trigger is a redelivery: go to step 4.
2. `route(...)` decides, on `pqlflow.kernel.clock` time (replay runs on simulated time).
3. One TransactWriteItems stores the action item (condition: not there yet) and claims the cap slots
   (condition: no nudge within the cap). Either all of it happens or none: a lost race on the action
   item means another delivery stored it (go to 4); a lost race on a cap means a concurrent
   qualification nudged first, so the state is re-read and the decision made again (now `capped`).
4. If the stored action is not marked emitted: create the EventBridge Scheduler one-time schedules of
   deferred emails (idempotent: deterministic names, an existing one is fine), publish the actions as
   `Nurture Action`, then mark the item emitted. A crash anywhere before the mark is repaired by the
   redelivery; a crash between publish and mark publishes the same action again, with the same
   `action_id`, so consumers dedupe on `action_id` (they must anyway: EventBridge delivers at least once).

Deferral (quiet hours) uses EventBridge Scheduler one-time schedules, not an SQS delay queue: quiet-hour
waits last up to a weekend (`pqlflow.nurture.schedule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import NurtureAction, PqlQualified
from pqlflow.kernel import clock
from pqlflow.kernel.settings import SettingsError, from_environ
from pqlflow.nurture.policy import Policy, load_policy
from pqlflow.nurture.routing import lookups, route, scheduled_delivery
from pqlflow.nurture.schedule import Deferrer, SchedulerDeferrer
from pqlflow.nurture.store import ActionExists, CapTaken, DynamoNurtureStore, Snapshot, StoredAction

MAX_DECIDE_ATTEMPTS = 3
MIN_SCHEDULE_LEAD = timedelta(minutes=1)


class RouteSettings(BaseModel):
    """The route function's environment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    EVENT_BUS_ARN: str = Field(min_length=1, description="target of the deferral schedules")
    SCHEDULER_ROLE_ARN: str = Field(min_length=1, description="role Scheduler assumes to put on the bus")
    SCHEDULE_GROUP: str = "default"
    SCHEDULE_DLQ_ARN: str | None = Field(default=None, description="SQS queue: schedules that never deliver")
    POLICY_FILE: str = Field(default="policy.yaml", description="relative paths are next to the handler file")

    def policy_path(self, base_dir: Path | None = None) -> Path:
        """POLICY_FILE; a relative one is in `base_dir`, the handler's folder (the policy ships beside it)."""
        path = Path(self.POLICY_FILE)
        if path.is_absolute():
            return path
        if base_dir is None:
            raise SettingsError(f"POLICY_FILE {self.POLICY_FILE!r} is relative, but no folder was given for it")
        return base_dir / path


class Publisher(Protocol):
    def publish(self, details: Sequence[NurtureAction]) -> int: ...


@dataclass
class RouteService:
    policy: Policy
    store: DynamoNurtureStore
    publisher: Publisher
    deferrer: Deferrer

    def handle(self, q: PqlQualified) -> tuple[StoredAction, bool]:
        """Decide (or find) the qualification's actions and make sure they are on the bus.

        Returns the stored actions and whether they had been decided by an earlier delivery.
        """
        now = clock.now()
        look = lookups(q)
        snapshot = self.store.read(q, look)
        replayed = snapshot.stored is not None
        for _ in range(MAX_DECIDE_ATTEMPTS):
            if snapshot.stored is not None:
                break
            decision = route(q, self.policy, snapshot.state, now)
            try:
                snapshot = Snapshot(self.store.commit(q, decision, self.policy, now), snapshot.state)
            except ActionExists:
                replayed = True
                snapshot = self.store.read(q, look)
            except CapTaken:
                snapshot = self.store.read(q, look)  # a concurrent nudge won: decide again, now capped
        stored = snapshot.stored
        if stored is None:
            raise RuntimeError(f"transition {q.transition_id}: caps kept changing; the trigger will retry")
        if not stored.emitted:
            self.emit(q, stored, now)
        return stored, replayed

    def emit(self, q: PqlQualified, stored: StoredAction, now: float) -> None:
        earliest = datetime.fromtimestamp(now, UTC) + MIN_SCHEDULE_LEAD
        for action in stored.actions:
            if action.outcome == "deferred" and action.send_after:
                send_after = datetime.fromisoformat(action.send_after)
                self.deferrer.schedule(scheduled_delivery(action), max(send_after, earliest))
        self.publisher.publish(list(stored.actions))
        self.store.mark_emitted(q, now)


def build(settings: RouteSettings | None = None, *, base_dir: Path | None = None) -> RouteService:
    """The service with real adapters; built once per cold start, on the first invocation.

    `base_dir` is where a relative POLICY_FILE lives: the handler passes its own folder.
    """
    settings = settings or from_environ(RouteSettings)
    return RouteService(
        policy=load_policy(settings.policy_path(base_dir)),
        store=DynamoNurtureStore(settings.TABLE_NAME),
        publisher=EventPublisher(settings.EVENT_BUS_NAME),
        deferrer=SchedulerDeferrer(group=settings.SCHEDULE_GROUP, bus_arn=settings.EVENT_BUS_ARN,
                                   role_arn=settings.SCHEDULER_ROLE_ARN, dlq_arn=settings.SCHEDULE_DLQ_ARN),
    )
