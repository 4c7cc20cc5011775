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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.contracts.bus import EventPublisher
from pqlflow.contracts.emitted import JourneyStepDue, JourneyStopped, PqlQualified, _Detail
from pqlflow.kernel import clock
from pqlflow.kernel.observability import log_id
from pqlflow.kernel.settings import SettingsError, from_environ
from pqlflow.nurture.journey import Journey, engagement_of, schedule_name, stop_for, subject_sk
from pqlflow.nurture.journey_store import JourneyStore, journey_key, parse, step_key
from pqlflow.nurture.policy import Policy, load_policy
from pqlflow.nurture.routing import (
    Decision,
    Engagement,
    lookups,
    route,
    route_step,
    scheduled_delivery,
    superseded,
)
from pqlflow.nurture.schedule import Deferrer, SchedulerDeferrer
from pqlflow.nurture.store import (
    ActionExists,
    CapTaken,
    DynamoNurtureStore,
    JourneyChanged,
    Snapshot,
    StoredAction,
    action_key,
)
from pqlflow.nurture.usage_now import UsageNow

MAX_DECIDE_ATTEMPTS = 3
MIN_SCHEDULE_LEAD = timedelta(minutes=1)
BATCH_GET_KEYS = 100  # BatchGetItem's limit


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
    def publish(self, details: Sequence[_Detail]) -> int: ...


@dataclass(frozen=True)
class StepResult:
    """What a `Journey Step Due` did: `ran` (its actions decided now or by an earlier delivery), or not and why."""

    ran: bool
    why: str
    stored: StoredAction | None = None
    replayed: bool = False


@dataclass
class RouteService:
    policy: Policy
    store: DynamoNurtureStore
    publisher: Publisher
    deferrer: Deferrer
    usage_now: UsageNow | None = None
    """Reads the account as it is when a journey step comes due (None: steps read the qualification)."""

    @property
    def journeys(self) -> JourneyStore:
        return JourneyStore(self.store.table, client=self.store.client)

    def handle(self, q: PqlQualified) -> tuple[StoredAction, bool]:
        """Decide (or find) the qualification's actions and make sure they are on the bus.

        A rule with a journey starts it in the same transaction (replacing the subject's older journey,
        which stops: `requalified`). A qualification routed after a later one of its subject (EventBridge
        keeps no order) is recorded as `suppressed` and touches no journey. Returns the stored actions and
        whether they had been decided by an earlier delivery.
        """
        now = clock.now()
        look = lookups(q)
        journey_sk = subject_sk(q.user_id)
        snapshot = self.store.read(q, look, journey_sk=journey_sk)
        replayed = snapshot.stored is not None
        for _ in range(MAX_DECIDE_ATTEMPTS):
            if snapshot.stored is not None:
                break
            old = parse(snapshot.journey_item)
            if old is not None and old.transition_id != q.transition_id and old.qualified_after(q.qualified_at):
                decision = superseded(q, self.policy, now, f"a later qualification ({old.transition_id}) of "
                                      "the subject was routed first: this one is stale")
                later: dict[str, str] = {}
                journey_write = None
            else:
                decision = route(q, self.policy, snapshot.state, now)
                later, journey_write = self._journey_plan(q, decision, old, now)
            try:
                snapshot = Snapshot(self.store.commit(q, decision, self.policy, now, later=later,
                                                      journey_write=journey_write), snapshot.state)
            except ActionExists:
                replayed = True
                snapshot = self.store.read(q, look, journey_sk=journey_sk)
            except (CapTaken, JourneyChanged):
                # a concurrent nudge or journey change won: decide again on what is there now
                snapshot = self.store.read(q, look, journey_sk=journey_sk)
        found = snapshot.stored
        if found is None:
            raise RuntimeError(f"transition {q.transition_id}: caps kept changing; the trigger will retry")
        if not found.emitted:
            self.emit(q, found, now)
        return found, replayed

    def _journey_plan(self, q: PqlQualified, decision: Decision, old: Journey | None, now: float
                      ) -> tuple[dict[str, str], dict[str, Any] | None]:
        """What the qualification does to journeys: start the rule's, stop the subject's older one."""
        rule = self.policy.rule(decision.rule) if decision.rule else None
        later: dict[str, str] = {}
        replaced = None
        if old is not None and old.active and old.transition_id != q.transition_id:
            replaced = old.stopped("requalified", now, f"a newer qualification ({q.transition_id}) of the subject")
            later["journey_stop"] = replaced.model_dump_json()
        if rule is not None and len(rule.steps) > 1:
            # Whole seconds, not before `now`: step n is due `after_days` after, and its cap check (at
            # its due time) then sees at least the planned gap since step 0's cap claim (at `now`).
            started = float(math.ceil(now))
            journey = Journey(q.account_id, q.user_id, q.transition_id, rule.name, len(rule.steps), 1, "active",
                              started)
            later["journey_next"] = journey.step_due(rule, 1).model_dump_json()
            return later, self.journeys.start(account_id=q.account_id, user_id=q.user_id,
                                              transition_id=q.transition_id, qualified_at=q.qualified_at,
                                              rule=rule, policy=self.policy, now=started, old=old)
        if old is not None and replaced is not None:
            return later, self.journeys.end(old, replaced, published_elsewhere=True)
        return later, None

    def emit(self, q: PqlQualified, stored: StoredAction, now: float, *, key: dict[str, Any] | None = None) -> None:
        """Schedule what comes later (deferred emails, the journey's next step), publish, then mark emitted.

        A journey's schedules are made first, then the journey is read again: a stop (or a newer
        qualification) that landed since this step's transaction cancelled what existed then, so what was
        made after it is cancelled here. Either this read sees the stop, or the schedules were made before
        the stop's write and so before its cancels.
        """
        earliest = datetime.fromtimestamp(now, UTC) + MIN_SCHEDULE_LEAD
        for action in stored.actions:
            if action.outcome == "deferred" and action.send_after:
                send_after = datetime.fromisoformat(action.send_after)
                self.deferrer.schedule(scheduled_delivery(action), max(send_after, earliest))
        if "journey_next" in stored.later:
            due = JourneyStepDue.model_validate_json(stored.later["journey_next"])
            self.deferrer.put_later(schedule_name(due.transition_id, due.step), due,
                                    max(datetime.fromisoformat(due.due_at), earliest),
                                    f"pqlflow: journey step {due.step} of rule {due.rule}")
            self._recheck(due, stored)
        details: list[_Detail] = list(stored.actions)
        if "journey_stop" in stored.later:
            stop = JourneyStopped.model_validate_json(stored.later["journey_stop"])
            self._cancel_pending(stop)
            details.append(stop)
        self.publisher.publish(details)
        self.store.mark_emitted(q, now, key=key)

    def _recheck(self, due: JourneyStepDue, stored: StoredAction) -> None:
        """Cancel the schedules `emit` just made if the journey is no longer waiting for step `due.step`."""
        jkey = journey_key(due.account_id, due.user_id)
        journey = parse(self.store.get_items([jkey]).get(_at(jkey)))
        if journey is not None and journey.transition_id == due.transition_id and journey.active \
                and journey.next_step == due.step:
            return
        self.deferrer.cancel(schedule_name(due.transition_id, due.step))
        if journey is not None and journey.transition_id == due.transition_id and (
                journey.active or journey.stop is None or journey.stop.reason == "completed"):
            return  # it only moved on (a redelivery after the next step ran): the emails still go out
        for action in stored.actions:
            if action.outcome == "deferred":
                self.deferrer.unschedule(action)

    def _cancel_pending(self, stop: JourneyStopped) -> None:
        """What a stopped journey still has scheduled: its next step, and (unless it completed) its emails
        waiting for the sending window, of every step that ran."""
        self.deferrer.cancel(schedule_name(stop.transition_id, stop.after_step + 1))
        if stop.reason == "completed":
            return  # the last step's emails are what the journey decided: they still go out
        self._unschedule_waiting(stop.account_id, stop.transition_id, range(stop.after_step + 1))

    def _unschedule_waiting(self, account_id: str, transition_id: str, steps: range) -> None:
        """Delete the schedules of the steps' deferred emails (read from their records; fired ones are fine)."""
        keys = [action_key(account_id, transition_id) if n == 0 else step_key(account_id, transition_id, n)
                for n in steps]
        for start in range(0, len(keys), BATCH_GET_KEYS):
            for item in self.store.get_items(keys[start:start + BATCH_GET_KEYS]).values():
                for action in self.store.stored(item).actions:
                    if action.outcome == "deferred":
                        self.deferrer.unschedule(action)

    # --- journeys -----------------------------------------------------------------------------------

    def handle_step(self, due: JourneyStepDue) -> StepResult:
        """Run a journey's step `due.step` exactly once, unless the journey stopped or moved on.

        The step's record (`NURTURE#<transition>#S<step>`) and the journey's advance are one transaction,
        conditional on the journey being as read: a stop that lands first leaves the step undone, a stop
        that lands after finds the journey past the step. A redelivery finds the record and only
        finishes emitting it.
        """
        now = clock.now()
        # Decided as of its due time when it runs late, so the caps see the spacing the policy planned
        # (a step `caps.account_days` after the one before is not capped because its schedule fired late).
        planned = datetime.fromisoformat(due.due_at).timestamp()
        decide_at = min(planned, now)
        first_key = action_key(due.account_id, due.transition_id)
        record_key = step_key(due.account_id, due.transition_id, due.step)
        jkey = journey_key(due.account_id, due.user_id)
        for _ in range(MAX_DECIDE_ATTEMPTS):
            items = self.store.get_items([first_key, record_key, jkey])
            first = items.get(_at(first_key))
            if first is None:
                return StepResult(False, "the qualification's first action is not stored (expired?)")
            q = PqlQualified.model_validate(self.store.stored(first).actions[0].context)
            if (record := items.get(_at(record_key))) is not None:
                stored = self.store.stored(record)
                if not stored.emitted:
                    self.emit(q, stored, now, key=record_key)
                return StepResult(True, "decided by an earlier delivery", stored, replayed=True)
            journey = parse(items.get(_at(jkey)))
            if journey is None or journey.transition_id != due.transition_id:
                return StepResult(False, "a newer qualification replaced the journey")
            if not journey.active:
                self._finish_stop(journey)
                ended = journey.stop.reason if journey.stop else journey.status
                return StepResult(False, f"the journey ended ({ended})")
            if journey.next_step != due.step:
                return StepResult(False, f"the journey is at step {journey.next_step}, not {due.step}")
            rule = self.policy.rule(journey.rule)
            if rule is None or len(rule.steps) <= due.step:
                stop = journey.stopped("completed", now, f"the policy no longer has step {due.step} of rule "
                                       f"{journey.rule}", after_step=due.step - 1)
                if self.journeys.stop(journey, stop):
                    self._finish_stop(journey, stop)
                continue
            converted = None
            if self.usage_now is not None:
                # the step's conditions and message see today's usage
                q, converted = self.usage_now.read(q, decide_at)
            if converted is not None:
                stop = journey.stopped("converted", now, f"the account converted at {converted}",
                                       after_step=due.step - 1)
                if self.journeys.stop(journey, stop):
                    self._finish_stop(journey, stop)
                    return StepResult(False, f"stopped: the account converted at {converted}")
                continue
            look = lookups(q)
            found = self.store.read_state_items(q, look)
            # caps as of the planned time; quiet hours as of now, when an email would go out
            step = route_step(q, self.policy, rule, due.step, self.store.state_of(q, look, found),
                              Engagement(rule, journey.engagement), decide_at, send_now=now)
            if step.stop is not None:
                stop = journey.stopped(step.stop, now, step.why, after_step=due.step - 1)
                if self.journeys.stop(journey, stop):
                    self._finish_stop(journey, stop)
                    return StepResult(False, f"stopped: {step.why}")
                continue
            decision = step.decision or Decision((), (), rule.name)
            later: dict[str, str] = {}
            completion = None
            if due.step + 1 < len(rule.steps):
                later["journey_next"] = journey.step_due(rule, due.step + 1).model_dump_json()
            else:
                completion = journey.stopped("completed", now, "the journey's last step ran", after_step=due.step)
                later["journey_stop"] = completion.model_dump_json()
            try:
                stored = self.store.commit(q, decision, self.policy, decide_at, key=record_key, later=later,
                                           journey_write=self.journeys.advance(journey, completion))
            except (ActionExists, JourneyChanged, CapTaken):
                continue  # read again: an earlier delivery, a stop or a concurrent nudge got there first
            self.emit(q, stored, now, key=record_key)
            return StepResult(True, step.why, stored)
        raise RuntimeError(f"journey step {due.step} of {due.transition_id}: the journey kept changing; "
                           "the trigger will retry")

    def handle_stop(self, detail_type: str, detail: dict[str, Any]) -> list[JourneyStopped]:
        """Stop the journeys an event ends (`pqlflow.nurture.journey.stop_for`); returns the stops published."""
        stop = stop_for(detail_type, detail)
        if stop is None:
            return []
        now = clock.now()
        published: list[JourneyStopped] = []
        for _ in range(MAX_DECIDE_ATTEMPTS):
            pending = False
            for journey in self.journeys.of_account(stop.account_id):
                if not stop.applies_to(journey):
                    continue
                if not journey.active:
                    if self._finish_stop(journey):
                        published.append(journey.stop)  # type: ignore[arg-type]  # _finish_stop: it has one
                    elif journey.status == "completed" and journey.stop is not None:
                        # over already, but its last step's email may still wait for the sending window
                        self._unschedule_waiting(journey.account_id, journey.transition_id,
                                                 range(journey.stop.after_step, journey.stop.after_step + 1))
                    continue
                ended = journey.stopped(stop.reason, now, stop.why)
                if self.journeys.stop(journey, ended):
                    self._finish_stop(journey, ended)
                    published.append(ended)
                else:
                    pending = True  # it moved on (a step ran) or stopped meanwhile: read it again
            if not pending:
                return published
        raise RuntimeError(f"journeys of {log_id(stop.account_id)} kept changing ({stop.reason}); the trigger "
                           "will retry")

    def _finish_stop(self, journey: Journey, stop: JourneyStopped | None = None) -> bool:
        """Publish a journey's stored stop once (cancelling what it has pending); False if nothing to do."""
        stop = stop or journey.stop
        if stop is None or (journey.stop is not None and journey.stop_emitted and stop is journey.stop):
            return False
        self._cancel_pending(stop)
        self.publisher.publish([stop])
        self.journeys.mark_stop_emitted(journey)
        return True

    def record_engagement(self, detail_type: str, detail: dict[str, Any]) -> bool:
        """Record an engagement event on its journey, for later steps' `engaged` conditions."""
        found = engagement_of(detail_type, detail)
        if found is None:
            return False
        account, transition, step, kind = found
        recorded = False
        for journey in self.journeys.of_account(account):
            if journey.transition_id == transition:
                self.journeys.engaged(journey, step, kind)
                recorded = True
        return recorded


def _at(key: dict[str, Any]) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


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
        usage_now=UsageNow(settings.TABLE_NAME),
    )
