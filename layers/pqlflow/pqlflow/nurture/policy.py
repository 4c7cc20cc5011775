"""The nurture policy: a YAML file that says how a qualified account is followed up, as typed models.

A policy has ordered `rules` (the first whose `when` matches decides the channel and the template or
offer), a `holdout` share kept from any nudge to measure lift, frequency `caps`, `quiet_hours` for
email, and what `consent` does when the chosen recipient's address is suppressed. See
`examples/policies/default.yaml` for every key, documented.

`load_policy(path)` / `parse_policy(text, source)` validate it. Every error names the file, the line
and the key at fault (`policy.yaml:14: rules[2].when.signal.op: ...`), so the YAML is read with
`yaml.compose` (nodes keep their marks) and the line of each key is kept beside the plain data. YAML
1.1 surprises are disarmed while reading: `18:00` stays the string "18:00" (not 1080) and `no`/`on`
stay strings (only true/false are booleans). Nothing is ever evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from pqlflow.contracts.emitted import ReasonKind
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.yamlfile import Loc, LocatedYaml, dotted

Channel = Literal["email", "offer", "rep_task", "none"]
Touch = Literal["high", "low"]
Operator = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists", "missing"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")]
"""Template, offer and rule names: letters, digits, `_ . -`; they end up in ids and file names."""

Scalar = float | bool | str | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Comparison(_Model):
    """`name` `op` `value` over one signal or trait, e.g. `{name: plan, op: "==", value: free}`."""

    name: str = Field(min_length=1)
    op: Operator = "=="
    value: Scalar | list[Scalar] = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Comparison:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs `value` to be a list")
        if self.op in ("<", "<=", ">", ">=") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"op {self.op!r} needs a number as `value`")
        if self.op in ("==", "!=") and isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} compares with one value; use `in` for a list")
        return self


class ScoreComparison(_Model):
    """`op` `value` over the qualification's score, e.g. `{op: ">=", value: 80}`."""

    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: float


class ReasonMatch(_Model):
    """Matches when any reason of the qualification has one of these kinds and one of these codes."""

    kind: ReasonKind | list[ReasonKind] | None = None
    code: str | list[str] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ReasonMatch:
        if self.kind is None and self.code is None:
            raise ValueError("a reason condition needs `kind`, `code` or both")
        return self


Engagement = Literal["email_delivered", "email_opened", "email_clicked", "offer_viewed", "offer_dismissed"]
"""What a recipient did with an earlier step, as the engagement events report it (`Email Opened`, ...)."""
ENGAGEMENT_CHANNEL: dict[str, Channel] = {
    "email_delivered": "email", "email_opened": "email", "email_clicked": "email",
    "offer_viewed": "offer", "offer_dismissed": "offer",
}


class Engaged(_Model):
    """Holds when the recipient did `event` (any of a list) with the journey's step `step` (index or name)."""

    step: int | Name
    event: Engagement | list[Engagement]

    @property
    def events(self) -> list[str]:
        return [str(e) for e in self.event] if isinstance(self.event, list) else [self.event]


_CONDITION_KEYS = ("all", "any", "not", "touch", "reason", "signal", "trait", "user_trait", "score", "engaged")


class Condition(_Model):
    """Exactly one of: all/any (lists of conditions), not (a condition), or one test."""

    all_: list[Condition] | None = Field(default=None, alias="all", min_length=1)
    any_: list[Condition] | None = Field(default=None, alias="any", min_length=1)
    not_: Condition | None = Field(default=None, alias="not")
    touch: Touch | list[Touch] | None = None
    reason: ReasonMatch | None = None
    signal: Comparison | None = None
    trait: Comparison | None = None
    user_trait: Comparison | None = None
    score: ScoreComparison | None = None
    engaged: Engaged | None = Field(default=None, description="journey steps only: engagement with an "
                                    "earlier step of the same journey")

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a condition is a mapping with one of: {', '.join(_CONDITION_KEYS)}")
        known = [k for k in data if k in _CONDITION_KEYS]
        if len(known) != 1 or len(data) != 1:
            got = ", ".join(map(str, data)) or "nothing"
            raise ValueError(f"a condition has exactly one of {', '.join(_CONDITION_KEYS)}; got {got}")
        return data


class Then(_Model):
    """What a matching rule does: a channel and what to send on it."""

    channel: Channel
    template: Name | None = None
    offer: Name | None = None
    also_email: Name | None = Field(
        default=None, description="rep_task only: a low-key email template sent alongside the task"
    )
    why: str | None = Field(default=None, description="channel none: recorded as the action's why")

    @model_validator(mode="after")
    def _fits_channel(self) -> Then:
        if self.channel == "email" and not self.template:
            raise ValueError("channel email needs a `template`")
        if self.channel == "offer" and not self.offer:
            raise ValueError("channel offer needs an `offer` (an offer type of the catalog)")
        if self.channel != "offer" and self.offer:
            raise ValueError(f"`offer` is only for channel offer, not {self.channel}")
        if self.channel != "rep_task" and self.also_email:
            raise ValueError("`also_email` is only for channel rep_task")
        if self.channel in ("offer", "none") and self.template:
            raise ValueError(f"`template` is not used by channel {self.channel}")
        return self


MAX_JOURNEY_DAYS = 180
"""A journey's last step runs at most this long after the qualification (its items expire after 400 days)."""


class Step(Then):
    """One step of a journey: at `after_days` after the qualification, if `when` holds then, do `then`."""

    name: Name | None = None
    after_days: float = Field(default=0, ge=0, le=MAX_JOURNEY_DAYS, strict=True, allow_inf_nan=False,
                              description="days after the qualification (0: at once); a number, never "
                              "`true` or a quoted \"7\"")
    when: Condition | None = Field(default=None, description="checked when the step comes due")


class Rule(_Model):
    """The first rule whose `when` matches (a missing `when` always matches) decides.

    `then` is one action at qualification, or a journey: a list of steps, the first at `after_days: 0`.
    """

    name: Name
    when: Condition | None = None
    then: Annotated[
        Annotated[Then, Tag("action")] | Annotated[list[Step], Tag("journey")],
        Discriminator(lambda value: "journey" if isinstance(value, list) else "action"),
    ]

    @property
    def steps(self) -> tuple[Step, ...]:
        """The journey's steps; a single `then` is a one-step journey."""
        if isinstance(self.then, list):
            return tuple(self.then)
        return (Step(**self.then.model_dump(exclude_none=True)),)

    @property
    def first(self) -> Then:
        return self.steps[0]

    def step_index(self, ref: int | str) -> int | None:
        if isinstance(ref, int):
            return ref if 0 <= ref < len(self.steps) else None
        return next((i for i, step in enumerate(self.steps) if step.name == ref), None)


_BOTH_TOUCHES: list[Touch] = ["low", "high"]


class Holdout(_Model):
    share: float = Field(default=0.0, ge=0.0, le=0.5)
    salt: str = Field(default="pqlflow-holdout", min_length=1)
    touch: list[Touch] = Field(default_factory=lambda: _BOTH_TOUCHES.copy())


class Caps(_Model):
    account_days: float = Field(default=7, ge=0, description="0 disables the account cap")
    user_days: float = Field(default=14, ge=0, description="0 disables the user cap")


class QuietHours(_Model):
    """Email goes out only between `start` and `end` in the recipient's local time, on `days`."""

    enabled: bool = True
    default_timezone: str = "UTC"
    start: str = "09:00"
    end: str = "18:00"
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]), min_length=1)

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not valid_timezone(value):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. Europe/Berlin, America/New_York)")
        return value

    @field_validator("start", "end")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        parse_hhmm(value)
        return value

    @model_validator(mode="after")
    def _window(self) -> QuietHours:
        if parse_hhmm(self.start) >= parse_hhmm(self.end):
            raise ValueError(f"start {self.start} must be before end {self.end} (same day, local time)")
        return self

    @property
    def start_time(self) -> dtime:
        return parse_hhmm(self.start)

    @property
    def end_time(self) -> dtime:
        return parse_hhmm(self.end)


class Consent(_Model):
    """When the recipient's address is suppressed (or no user has one): an in-app offer, or nothing."""

    email_suppressed: Literal["offer", "suppress"] = "suppress"
    fallback_offer: Name | None = None

    @model_validator(mode="after")
    def _offer_named(self) -> Consent:
        if self.email_suppressed == "offer" and not self.fallback_offer:
            raise ValueError("email_suppressed: offer needs a `fallback_offer`")
        return self


class Policy(_Model):
    """A validated nurture policy."""

    name: Name
    version: int = Field(ge=1)
    description: str | None = None
    holdout: Holdout = Field(default_factory=Holdout)
    caps: Caps = Field(default_factory=Caps)
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    consent: Consent = Field(default_factory=Consent)
    rules: list[Rule] = Field(min_length=1)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: str) -> dtime:
    match = _HHMM.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a time of day as HH:MM (24-hour, e.g. \"09:00\")")
    return dtime(int(match.group(1)), int(match.group(2)))


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Reading YAML with line numbers

_CORE_SCALARS = ("str", "int", "float", "bool", "null")


class _Located(LocatedYaml):
    """A policy file's plain data and lines; only YAML's plain types are accepted."""

    empty_file = "the policy file is empty"
    complex_key = "keys must be plain words"
    merge_key = "merge keys (<<) are not supported"
    duplicate_key = "duplicate key (first on line {first})"

    def problem(self, line: int | None, path: Loc | None, message: str) -> UsageError:
        where = f"{self.source}:{line}"
        return UsageError(f"{where}: {message}" if path is None else f"{where}: {_dotted(path)}: {message}")

    def syntax_problem(self, exc: yaml.YAMLError) -> Exception:
        if not isinstance(exc, yaml.MarkedYAMLError):
            return exc
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        return self.problem(mark.line + 1 if mark else 1, None, f"YAML syntax: {problem}")

    def value(self, node: yaml.Node, path: Loc) -> Any:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in (
            "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
        ):
            raise self.problem(node.start_mark.line + 1, path, f"unsupported YAML value type {node.tag}")
        return super().value(node, path)

    def scalar(self, node: yaml.ScalarNode, path: Loc) -> Any:
        if node.tag.startswith("tag:yaml.org,2002:") and node.tag.rsplit(":", 1)[1] in _CORE_SCALARS:
            return self.construct(node)
        raise self.problem(node.start_mark.line + 1, path, f"unsupported YAML value type {node.tag}")


def _dotted(path: Sequence[str | int]) -> str:
    return dotted(path) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def _conditions(condition: Condition | None, loc: Loc) -> list[tuple[Loc, Condition]]:
    """Every condition in a tree, with its key path."""
    if condition is None:
        return []
    out = [(loc, condition)]
    for key, children in (("all", condition.all_), ("any", condition.any_)):
        for i, child in enumerate(children or []):
            out += _conditions(child, (*loc, key, i))
    if condition.not_ is not None:
        out += _conditions(condition.not_, (*loc, "not"))
    return out


def _reported(step: Step, policy: Policy) -> set[str]:
    """The channels whose engagement a step's actions can report, under the step's index.

    A rep task's `also_email` is an email of that step; an email step whose address is suppressed
    becomes the consent's fallback offer (`email_suppressed: offer`), an offer of that step.
    """
    channels: set[str] = {step.channel}
    if step.also_email:
        channels.add("email")
    if step.channel == "email" and policy.consent.email_suppressed == "offer":
        channels.add("offer")
    return channels


def _journey_problems(policy: Policy) -> list[tuple[Loc, str]]:
    """What the models alone cannot see: the order of a journey's steps and what their conditions name."""
    problems: list[tuple[Loc, str]] = []
    for r, rule in enumerate(policy.rules):
        for loc, condition in _conditions(rule.when, ("rules", r, "when")):
            if condition.engaged is not None:
                problems.append(((*loc, "engaged"), "`engaged` is for journey steps; a rule's `when` is "
                                 "checked at qualification, before any step ran"))
        if not isinstance(rule.then, list):
            continue
        steps, names = rule.steps, set()
        for i, step in enumerate(steps):
            at: Loc = ("rules", r, "then", i)
            if step.name and step.name in names:
                problems.append(((*at, "name"), f"step name {step.name!r} is used twice in this journey"))
            names.add(step.name)
            if i == 0 and (step.after_days or step.when is not None):
                key = "after_days" if step.after_days else "when"
                problems.append(((*at, key), "the first step runs at the qualification, under the rule's own "
                                 "`when`: it takes no `after_days` or `when`"))
            if i and step.after_days <= steps[i - 1].after_days:
                problems.append(((*at, "after_days"), f"step {i} runs at day {step.after_days:g}, not after "
                                 f"step {i - 1} (day {steps[i - 1].after_days:g}): steps run in order, each later "
                                 "than the one before"))
            if step.channel == "none" and i:
                problems.append(((*at, "channel"), "a later step with channel none does nothing; leave it out"))
            for loc, condition in _conditions(step.when, (*at, "when")):
                if (engaged := condition.engaged) is None:
                    continue
                target = rule.step_index(engaged.step)
                if target is None:
                    problems.append(((*loc, "engaged", "step"), f"no step {engaged.step!r} in this journey"))
                elif target >= i:
                    problems.append(((*loc, "engaged", "step"), f"step {i} waits on engagement with step "
                                     f"{target}, which runs {'at the same time' if target == i else 'after it'}: "
                                     "a loop that can never run"))
                elif wrong := [e for e in engaged.events
                               if ENGAGEMENT_CHANNEL[e] not in _reported(steps[target], policy)]:
                    problems.append(((*loc, "engaged", "event"), f"step {target} is on channel "
                                     f"{steps[target].channel}: it never reports {', '.join(wrong)}, so this "
                                     "condition can never be decided on it"))
    return problems


def _reference_problems(policy: Policy, templates: set[str] | None, offers: set[str] | None
                        ) -> list[tuple[Loc, str]]:
    """Templates and offers the policy names that are not shipped (each checked only when its set is given)."""
    problems: list[tuple[Loc, str]] = []
    for r, rule in enumerate(policy.rules):
        for i, step in enumerate(rule.steps):
            at: Loc = ("rules", r, "then", i) if isinstance(rule.then, list) else ("rules", r, "then")
            for key in ("template", "also_email"):
                name = getattr(step, key)
                if templates is not None and name and name not in templates:
                    problems.append(((*at, key), f"no email template {name!r} (have: "
                                     f"{', '.join(sorted(templates)) or 'none'})"))
            if offers is not None and step.offer and step.offer not in offers:
                problems.append(((*at, "offer"), f"no offer {step.offer!r} in the catalog (have: "
                                 f"{', '.join(sorted(offers)) or 'none'})"))
    fallback = policy.consent.fallback_offer
    if offers is not None and fallback and fallback not in offers:
        problems.append((("consent", "fallback_offer"), f"no offer {fallback!r} in the catalog"))
    return problems


def parse_policy(text: str, source: str = "<policy>", *, templates: set[str] | None = None,
                 offers: set[str] | None = None) -> Policy:
    """Validate policy YAML; raise `UsageError` naming `source`, line and key of every problem.

    `templates` (email template names) and `offers` (catalog keys), when given, are what the policy
    may name; the CLI passes the shipped ones.
    """
    located = _Located(source)
    data = located.build(text)
    if not isinstance(data, dict):
        raise UsageError(f"{source}:1: the policy must be a mapping with name, version and rules")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[int, str]] = []
        seen: set[tuple[str | int, ...]] = set()
        for error in exc.errors():
            loc = _file_loc(error["loc"], located)
            if loc in seen:
                continue  # a union reports once per member; the first says enough
            seen.add(loc)
            line, found = located.line_of(loc)
            key = _dotted(loc)
            if error.get("type") == "missing" and len(loc) > len(found):
                where = f"in {_dotted(found)}" if found else "at the top level"
                message = f"{key}: missing (required {where})"
            else:
                message = f"{key}: {_message(error)}"
            problems.append((line, f"{source}:{line}: {message}"))
        raise UsageError("\n".join(text for _, text in sorted(problems, key=lambda p: p[0]))) from None
    cross = _journey_problems(policy) + _reference_problems(policy, templates, offers)
    if cross:
        at = sorted((located.line_of(where)[0], f"{_dotted(where)}: {message}") for where, message in cross)
        raise UsageError("\n".join(f"{source}:{line}: {message}" for line, message in at))
    return policy


def load_policy(path: str | Path, *, templates: set[str] | None = None, offers: set[str] | None = None
                ) -> Policy:
    """Read and validate a policy file; a missing or unreadable file is a `UsageError` too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the policy file: {exc}") from None
    return parse_policy(text, str(path), templates=templates, offers=offers)


def _file_loc(loc: Sequence[str | int], located: _Located) -> Loc:
    """An error location as keys of the file: drops pydantic's union-member tags (`literal[...]`)."""
    path: Loc = ()
    for part in loc:
        candidate = (*path, part)
        if isinstance(part, int) or candidate in located.lines or part in _known_keys():
            path = candidate
    return path


_KNOWN_KEYS: frozenset[str] | None = None


def _known_keys() -> frozenset[str]:
    """Every key the policy models accept (by alias): what an error location may name."""
    global _KNOWN_KEYS
    if _KNOWN_KEYS is None:
        keys: set[str] = set()
        for model in (Policy, Holdout, Caps, QuietHours, Consent, Rule, Then, Step, Condition, Comparison,
                      ScoreComparison, ReasonMatch, Engaged):
            for name, info in model.model_fields.items():
                keys.add(info.alias or name)
        _KNOWN_KEYS = frozenset(keys)
    return _KNOWN_KEYS
