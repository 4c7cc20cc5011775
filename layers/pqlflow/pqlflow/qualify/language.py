"""The PQL definition language: a YAML file validated into typed models, with the line of every error.

A definition names the signals it reads from usage state (`pqlflow.ingest.usage.AccountUsage`), the rules
and/or points model that qualify an account (or a user, `unit: user`), the exclusions that always
win, the re-qualification policy and the touch level. `docs/definitions.md` is the reference;
`examples/definitions/` has one file per system in the seeds.

`read_definition(text, source)` returns a `Definition` or raises
`DefinitionError` ("x.yaml:12: qualify.all[0].gte: expected a number, got 'abc'"). The YAML is read
with `yaml.compose`, so every value keeps its line; unknown keys are errors; nothing is evaluated.
YAML 1.1 surprises are disarmed: only `true`/`false` are booleans (`no`, `on` stay strings).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

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
from pydantic_core import ErrorDetails

from pqlflow.contracts.emitted import ReasonKind
from pqlflow.ingest.usage import FilterSpec, GaugeSpec, TrackingSpec
from pqlflow.kernel.errors import UsageError
from pqlflow.kernel.yamlfile import Loc, LocatedYaml, dotted
from pqlflow.qualify.words import event_words, singular_of
from pqlflow.qualify.words import is_one as _is_one

Scalar = str | int | float | bool

TRIAL_EVENTS = ("Signed Up", "Trial Started")
TEMPLATE_FIELDS = frozenset({"value", "threshold", "signal", "limit", "days", "percent", "points", "event"})
# A signal's talking point: its value, its label (agreeing with the value), the change over the last 7 days.
TALKING_POINT_FIELDS = frozenset({"value", "label", "change"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class DefinitionError(UsageError):
    """A definition file is wrong: names the file, the line and the key at fault."""

    def __init__(
        self, file: str, line: int | None, key: str, message: str, others: Sequence[DefinitionError] = ()
    ):
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.others = list(others)  # further errors in the same file, for `definition validate`
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    @property
    def all(self) -> list[DefinitionError]:
        return [self, *self.others]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- signals ------------------------------------------------------------------------------------

PropertyFilter = dict[str, Scalar | list[Scalar]]


Words = Annotated[str, Field(max_length=80)]


class _Signal(_Model):
    """What every signal may say about itself, in the author's words: plain text, never template code."""

    label: Words | None = Field(
        default=None, description="the signal in words after a number, e.g. 'messages sent' (2,000 messages sent)"
    )
    singular: Words | None = Field(
        default=None, description="the label after 1, e.g. 'message sent'; default: derived from the label"
    )
    kind: ReasonKind | None = Field(
        default=None, description="what the signal means to the customer; default: derived (see reason_kind)"
    )
    talking_point: str | None = Field(
        default=None, max_length=400, description="what the rep says about it; {value}, {label}, {change}"
    )

    @field_validator("label", "singular", "talking_point")
    @classmethod
    def _plain_words(cls, text: str | None) -> str | None:
        if text is not None and (not text.strip() or not text.isprintable()):
            raise ValueError(f"must be one line of visible text, got {_got(text)}")
        return text

    def words(self, value: Any) -> str | None:
        """The author's label agreeing in number with `value` (1 → the singular), or None without one."""
        if self.label is None:
            return None
        if _is_one(value):
            return self.singular or singular_of(self.label)
        return self.label

    @cached_property
    def reason_kind(self) -> ReasonKind:
        """The author's `kind`, else what the signal's shape says: see `derived_kind`."""
        return self.kind or derived_kind(self)


class CountSignal(_Signal):
    """Lifetime count of an event, or its count in the last `last_days` days; `where` filters properties."""

    count: str
    where: PropertyFilter | None = None
    last_days: int | None = Field(default=None, ge=1, le=365)

    @model_validator(mode="after")
    def _one_property(self) -> CountSignal:
        if self.where is not None and len(self.where) != 1:
            raise ValueError("`where` takes exactly one property (e.g. where: {tier: paid})")
        return self

    @property
    def filter(self) -> FilterSpec | None:
        if not self.where:
            return None
        ((prop, wanted),) = self.where.items()
        values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
        return FilterSpec(self.count, prop, values)

    @property
    def key(self) -> str:
        spec = self.filter
        return spec.key if spec else self.count

    def words(self, value: Any) -> str:
        """The label agreeing with `value`; without one, words from the event name, its filter and window:
        '1 report exported', '3 “Page Viewed” events with name = Pricing in the last 30 days'."""
        own = super().words(value)
        if own is not None:
            return own
        one, many = event_words(self.count)
        what = one if _is_one(value) else many
        if self.where:
            what += " with " + ", ".join(f"{k} = {_plain_value(v)}" for k, v in self.where.items())
        return what + (f" in the last {self.last_days} days" if self.last_days else "")


class ActiveUsersWindow(_Model):
    last_days: int | None = Field(default=None, ge=1, le=35)
    first_days: int | None = Field(default=None, ge=1, le=35)

    @model_validator(mode="after")
    def _exactly_one(self) -> ActiveUsersWindow:
        if (self.last_days is None) == (self.first_days is None):
            raise ValueError(
                "give exactly one of last_days (a rolling window) or first_days (from first_seen)"
            )
        return self


class ActiveUsersSignal(_Signal):
    """Distinct users active in the last N days, or in the first N days from the account's first_seen."""

    active_users: ActiveUsersWindow

    def words(self, value: Any) -> str:
        """Who is counted, agreeing with `value`: the label, else 'teammate' / 'teammates'."""
        return super().words(value) or ("teammate" if _is_one(value) else "teammates")

    def active_words(self, value: Any) -> str:
        """Who is counted and their window, as reasons say it: 'teammates active in the last 7 days'."""
        window = self.active_users
        when = (
            f"in the last {window.last_days} days" if window.last_days else f"in their first {window.first_days} days"
        )
        return f"{self.words(value)} active {when}"


class GaugeRef(_Model):
    event: str
    property: str


class GaugeSignal(_Signal):
    """The latest numeric value of an event property, e.g. `Contacts Updated` → `total`."""

    gauge: GaugeRef

    @property
    def spec(self) -> GaugeSpec:
        return GaugeSpec(self.gauge.event, self.gauge.property)


class RatioOf(_Model):
    of: str = Field(description="name of a numeric signal (a gauge or a count)")
    limit_trait: str | None = None
    limit: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_limit(self) -> RatioOf:
        if (self.limit_trait is None) == (self.limit is None):
            raise ValueError("give exactly one of limit_trait (an account trait) or limit (a constant)")
        return self


class RatioSignal(_Signal):
    """A signal divided by a limit: a trait (e.g. contacts_limit) or a constant. 0.8 means 80%."""

    ratio: RatioOf


class _MeasureOf(_Model):
    """One measure over time: an event's count (`where` filters one property) or distinct active users."""

    count: str | None = None
    where: PropertyFilter | None = None
    active_users: bool = False

    @model_validator(mode="after")
    def _one_measure(self) -> _MeasureOf:
        if (self.count is None) == (not self.active_users):
            raise ValueError("give exactly one of count: <event> or active_users: true")
        if self.where is not None and (self.count is None or len(self.where) != 1):
            raise ValueError("`where` takes exactly one property and needs count")
        return self

    @property
    def key(self) -> str | None:
        if self.count is None:
            return None
        return CountSignal(count=self.count, where=self.where).key


class VelocityOf(_MeasureOf):
    days: int = Field(ge=1, le=45)

    @model_validator(mode="after")
    def _short_enough(self) -> VelocityOf:
        if self.active_users and self.days > 17:
            raise ValueError(
                "active_users velocity compares two windows of at most 17 days (35 days are kept)"
            )
        return self


class VelocitySignal(_Signal):
    """Last `days` days against the `days` before: last ÷ previous (a previous of 0 counts as 1)."""

    velocity: VelocityOf


class DaysToOf(_MeasureOf):
    reach: int = Field(ge=1)


class DaysToSignal(_Signal):
    """Whole days from first_seen to the day a count (or distinct active users) reached `reach`."""

    days_to: DaysToOf


class TraitSignal(_Signal):
    """A trait value: the account's (`group` traits) or, for `unit: user`, the user's (`identify`)."""

    trait: str
    scope: Literal["account", "user"] = "account"


def _plain_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain_value(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# A property filter that marks a paid-tier feature (`where: {tier: paid}`), and words in an event or a
# page name that mean buying intent (`Page Viewed` where name is Pricing) or team growth (`Invite Sent`).
_PAID_PROPERTIES = frozenset({"tier", "plan", "edition", "package"})
_PAID_VALUES = frozenset({"paid", "premium", "pro", "business", "enterprise", "plus"})
_INTENT = re.compile(r"pricing|upgrade|billing|checkout|plans|contact sales|request demo|demo request", re.I)
_TEAM = re.compile(r"invit|member added|teammate added|user added|seat added", re.I)
_SIGNAL_KIND: dict[str, ReasonKind] = {
    "ratio": "limit",
    "active_users": "team",
    "velocity": "velocity",
    "days_to": "velocity",
    "trait": "trait",
    "gauge": "usage",
}


def derived_kind(signal: _Signal) -> ReasonKind:
    """What a signal's shape says it means when its author did not say: a ratio is usage against a limit,
    active users are the team, a count filtered to a paid tier is a paid feature, a pricing or upgrade page
    is buying intent, invites are team growth, any other count or gauge is usage."""
    if not isinstance(signal, CountSignal):
        return _SIGNAL_KIND.get(_signal_tag(signal) or "", "usage")
    wanted = list((signal.where or {}).values())
    values = [v for w in wanted for v in (w if isinstance(w, list) else [w])]
    props = {prop.lower() for prop in signal.where or {}}
    if props & _PAID_PROPERTIES and any(str(v).lower() in _PAID_VALUES for v in values):
        return "paid_feature"
    named = " ".join([signal.count, *map(str, values)])
    if _INTENT.search(named):
        return "intent"
    if _TEAM.search(signal.count):
        return "team"
    return "usage"


SIGNAL_TYPES = {
    "count": CountSignal,
    "active_users": ActiveUsersSignal,
    "gauge": GaugeSignal,
    "ratio": RatioSignal,
    "velocity": VelocitySignal,
    "days_to": DaysToSignal,
    "trait": TraitSignal,
}
_SIGNAL_HELP = "a signal needs exactly one of: " + ", ".join(SIGNAL_TYPES)


def _signal_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next(k for k, v in SIGNAL_TYPES.items() if isinstance(value, v))
    if not isinstance(value, dict):
        return None
    found = [k for k in SIGNAL_TYPES if k in value]
    return found[0] if len(found) == 1 else None


Signal = Annotated[
    Annotated[CountSignal, Tag("count")]
    | Annotated[ActiveUsersSignal, Tag("active_users")]
    | Annotated[GaugeSignal, Tag("gauge")]
    | Annotated[RatioSignal, Tag("ratio")]
    | Annotated[VelocitySignal, Tag("velocity")]
    | Annotated[DaysToSignal, Tag("days_to")]
    | Annotated[TraitSignal, Tag("trait")],
    Discriminator(_signal_tag, custom_error_type="signal_type", custom_error_message=_SIGNAL_HELP),
]


# ---- rules --------------------------------------------------------------------------------------

OPS = ("gte", "gt", "lte", "lt", "eq", "ne", "in", "not_in", "exists")
OP_SYMBOL = {
    "gte": "≥",
    "gt": ">",
    "lte": "≤",
    "lt": "<",
    "eq": "=",
    "ne": "≠",
    "in": "in",
    "not_in": "not in",
    "exists": "exists",
}


class Condition(_Model):
    """A threshold on one signal (or a trait, as a shorthand): exactly one operator."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    signal: str | None = None
    trait: str | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    exists: bool | None = None
    reason: str | None = Field(
        default=None, description="reason text; placeholders {value}, {threshold}, ..."
    )
    kind: ReasonKind | None = None
    code: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        if (self.signal is None) == (self.trait is None):
            raise ValueError("a condition needs exactly one of signal: <name> or trait: <name>")
        ops = [op for op in OPS if self.threshold_of(op) is not None]
        if len(ops) != 1:
            raise ValueError(
                f"a condition needs exactly one operator of {', '.join(OPS)}"
                + (f" (got {', '.join(ops)})" if ops else "")
            )
        return self

    def threshold_of(self, op: str) -> Any:
        return self.in_ if op == "in" else getattr(self, op)

    @cached_property
    def op(self) -> str:
        return next(op for op in OPS if self.threshold_of(op) is not None)

    @cached_property
    def threshold(self) -> Any:
        return self.threshold_of(self.op)

    @cached_property
    def signal_name(self) -> str:
        return self.signal if self.signal is not None else f"trait.{self.trait}"


class AllRule(_Model):
    all: list[Rule] = Field(min_length=1)


class AnyRule(_Model):
    any: list[Rule] = Field(min_length=1)


class NotRule(_Model):
    not_: Rule = Field(alias="not")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _rule_tag(value: Any) -> str:
    if isinstance(value, AllRule | AnyRule | NotRule | Condition):
        return {AllRule: "all", AnyRule: "any", NotRule: "not", Condition: "condition"}[type(value)]
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return key
    return "condition"


Rule = Annotated[
    Annotated[AllRule, Tag("all")]
    | Annotated[AnyRule, Tag("any")]
    | Annotated[NotRule, Tag("not")]
    | Annotated[Condition, Tag("condition")],
    Discriminator(_rule_tag),
]


# ---- points -------------------------------------------------------------------------------------


class PointsRule(_Model):
    """Points when a rule holds (`when` + `points`), or per unit of a signal (`signal` + `each`, `cap`)."""

    when: Rule | None = None
    points: float | None = None
    signal: str | None = None
    each: float | None = None
    cap: float | None = Field(
        default=None, gt=0, description="most points (in absolute value) this rule gives"
    )
    decay: bool = True
    reason: str | None = None
    kind: ReasonKind | None = None
    code: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> PointsRule:
        per_condition = self.when is not None or self.points is not None
        per_unit = self.signal is not None or self.each is not None
        if per_condition == per_unit:
            raise ValueError(
                "a points rule is either `when` + `points` or `signal` + `each` (with optional cap)"
            )
        if per_condition and (self.when is None or self.points is None):
            raise ValueError("`when` needs `points` (and `points` needs `when`)")
        if per_unit and (self.signal is None or self.each is None):
            raise ValueError("`signal` needs `each` (points per unit)")
        if per_condition and self.cap is not None:
            raise ValueError("`cap` applies to per-unit points only")
        return self


class PointsModel(_Model):
    threshold: float
    margin: float = Field(
        default=0, ge=0, description="hysteresis: stay qualified until score < threshold - margin"
    )
    half_life_days: float | None = Field(default=None, gt=0)
    rules: list[PointsRule] = Field(min_length=1)


# ---- exclusions, re-qualification, touch ---------------------------------------------------------


class Exclusions(_Model):
    """Accounts that are never PQLs, whatever their usage. They always win."""

    converted: bool = Field(default=True, description="an account ingest marked converted is paying")
    paying: dict[str, list[Scalar]] = Field(
        default_factory=dict, description="trait → values that mean paying"
    )
    internal_domains: list[str] = Field(default_factory=list)
    domain_traits: list[str] = Field(default_factory=lambda: ["domain", "website"])
    account_ids: list[str] = Field(default_factory=list)
    account_id_prefixes: list[str] = Field(default_factory=list)


class Requalify(_Model):
    cooldown_days: float = Field(
        default=0, ge=0, description="no new qualification within this long of the last"
    )
    again: bool = Field(default=True, description="may a disqualified account qualify again")
    disqualify: bool = Field(
        default=True, description="emit PQL Disqualified when the definition stops holding"
    )


class TouchRules(_Model):
    high: Rule | None = None
    default: Literal["high", "low"] = "low"


class Definition(_Model):
    """A validated PQL definition."""

    name: str = Field(min_length=1, max_length=100)
    version: int = Field(ge=1)
    description: str | None = None
    unit: Literal["account", "user"] = "account"
    signals: dict[str, Signal] = Field(default_factory=dict)
    qualify: Rule | None = None
    points: PointsModel | None = None
    exclusions: Exclusions = Field(default_factory=Exclusions)
    requalify: Requalify = Field(default_factory=Requalify)
    touch: TouchRules = Field(default_factory=TouchRules)
    warnings: list[str] = Field(default_factory=list, exclude=True)

    @model_validator(mode="after")
    def _something_qualifies(self) -> Definition:
        if self.qualify is None and self.points is None:
            raise ValueError("a definition needs `qualify` (rules), `points` (a points model), or both")
        return self

    def tracking_spec(self, base: TrackingSpec | None = None) -> TrackingSpec:
        """What ingest must keep for this definition: its gauges, property filters, names and unit."""
        base = base or TrackingSpec()
        gauges = list(base.gauges)
        filters = list(base.filters)
        names: set[str] = set(base.protected_names)
        for signal in self.signals.values():
            if isinstance(signal, GaugeSignal):
                gauges.append(signal.spec)
            elif isinstance(signal, CountSignal):
                names.add(signal.count)
                if signal.filter:
                    filters.append(signal.filter)
                    names.add(signal.filter.key)
            elif isinstance(signal, VelocitySignal | DaysToSignal):
                of = signal.velocity if isinstance(signal, VelocitySignal) else signal.days_to
                if of.count:
                    names.add(of.count)
                    if of.where:
                        spec = CountSignal(count=of.count, where=of.where).filter
                        assert spec is not None
                        filters.append(spec)
                        names.add(spec.key)
        return TrackingSpec(
            gauges=tuple(dict.fromkeys(gauges)),
            filters=tuple(dict.fromkeys(filters)),
            conversions=base.conversions,
            unit=self.unit,
            retention_days=base.retention_days,
            active_user_days=base.active_user_days,
            protected_names=frozenset(names),
        )


AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()
PointsRule.model_rebuild()
TouchRules.model_rebuild()
Definition.model_rebuild()


# ---- reading YAML with lines ---------------------------------------------------------------------


class _Located(LocatedYaml):
    """A definition file's plain data and lines; a problem is a `DefinitionError`."""

    def problem(self, line: int | None, path: Loc | None, message: str) -> DefinitionError:
        return DefinitionError(self.source, line, dotted(path or ()), message)

    def syntax_problem(self, exc: yaml.YAMLError) -> DefinitionError:
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            return self.problem(mark.line + 1 if mark else None, None, f"not valid YAML: {exc.problem or exc}")
        return self.problem(None, None, f"not valid YAML: {exc}")

    def scalar(self, node: yaml.ScalarNode, path: Loc) -> Any:
        if node.tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
            return node.value
        return self.construct(node)


def _data_loc(loc: Sequence[str | int], data: Any) -> Loc:
    """A pydantic error location mapped onto the data: union tags and aliases dropped."""
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        name = {"in_": "in", "not_": "not"}.get(part, part) if isinstance(part, str) else part
        if (
            isinstance(current, dict)
            and name in _KNOWN_TAGS
            and (name not in current or (i + 1 < len(loc) and loc[i + 1] in current))
        ):
            continue  # a union tag (pydantic puts it before the field), not a key
        in_dict = isinstance(current, dict) and name in current
        in_list = isinstance(current, list) and isinstance(name, int) and 0 <= name < len(current)
        if in_dict or in_list:
            path.append(name)
            current = current[name]
        else:
            path.append(name)
            current = None
    return tuple(path)


_KNOWN_TAGS = frozenset({*SIGNAL_TYPES, "all", "any", "not", "condition"})


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    if kind in ("float_parsing", "float_type", "int_from_float"):
        return f"expected a number, got {_got(value)}"
    if kind in ("int_parsing", "int_type"):
        return f"expected a whole number, got {_got(value)}"
    if kind in ("string_type",):
        return f"expected text, got {_got(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_got(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {_got(value)}"
    if kind == "list_type":
        return f"expected a list, got {_got(value)}"
    if kind == "literal_error":
        return f"{error['msg'].replace('Input should be', 'expected')}, got {_got(value)}"
    if kind == "value_error":
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than", "too_short"):
        said = error["msg"].replace("Input should be", "must be").replace("List should", "must")
        return f"{said}, got {_got(value)}"
    return f"{error['msg']} (got {_got(value)})"


def read_definition(text: str, source: str = "<string>") -> tuple[Definition, LocatedYaml]:
    """Validate a definition's YAML text against the language; `source` names it in errors.

    Returns the definition and its located YAML (the line of every key, for warnings). Raises
    `DefinitionError`. `pqlflow.qualify.definition.parse_definition` adds the warnings.
    """
    located = _Located(source)
    data = located.build(text)
    if not isinstance(data, dict):
        raise DefinitionError(
            source, 1, "", "a definition is a mapping of keys (name, version, signals, ...)"
        )
    try:
        defn = Definition.model_validate(data)
    except ValidationError as exc:
        errors = []
        seen: set[tuple[int | None, str]] = set()
        for error in exc.errors(include_url=False):
            loc = _data_loc(error["loc"], data)
            line, _ = located.line_of(loc)
            key = dotted(loc)
            if (line, key) in seen:
                continue
            seen.add((line, key))
            errors.append(DefinitionError(source, line, key, _message(error)))
        errors.sort(key=lambda e: (e.line or 0, e.key))
        raise DefinitionError(
            errors[0].file, errors[0].line, errors[0].key, errors[0].message, errors[1:]
        ) from None
    problems = _check_references(defn)
    if problems:
        errors = [
            DefinitionError(source, located.line_of(loc)[0], dotted(loc), msg) for loc, msg in problems
        ]
        raise DefinitionError(errors[0].file, errors[0].line, errors[0].key, errors[0].message, errors[1:])
    return defn, located


# ---- checks beyond the schema ----------------------------------------------------------------------

NUMERIC_OPS = ("gte", "gt", "lte", "lt")


def walk_rule(rule: Any, loc: Loc) -> list[tuple[Condition, Loc]]:
    """Every condition under a rule (all / any / not nest), with its location below `loc`."""
    if isinstance(rule, AllRule):
        return [c for i, r in enumerate(rule.all) for c in walk_rule(r, (*loc, "all", i))]
    if isinstance(rule, AnyRule):
        return [c for i, r in enumerate(rule.any) for c in walk_rule(r, (*loc, "any", i))]
    if isinstance(rule, NotRule):
        return walk_rule(rule.not_, (*loc, "not"))
    return [(rule, loc)]


def conditions(defn: Definition) -> list[tuple[Condition, Loc]]:
    """Every condition in the definition with its location (qualify, points `when`, touch)."""
    found: list[tuple[Condition, Loc]] = []
    if defn.qualify is not None:
        found += walk_rule(defn.qualify, ("qualify",))
    if defn.points is not None:
        for i, rule in enumerate(defn.points.rules):
            if rule.when is not None:
                found += walk_rule(rule.when, ("points", "rules", i, "when"))
    if defn.touch.high is not None:
        found += walk_rule(defn.touch.high, ("touch", "high"))
    return found


def _template_problem(template: str | None, known: frozenset[str] = TEMPLATE_FIELDS) -> str | None:
    if template is None:
        return None
    for name in _PLACEHOLDER.findall(template):
        if name not in known:
            return f"unknown placeholder {{{name}}} (known: {', '.join(sorted(known))})"
    return None


def _check_references(defn: Definition) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    names = set(defn.signals)
    numeric = {n for n, s in defn.signals.items() if not isinstance(s, TraitSignal)}
    for name, signal in defn.signals.items():
        if name.startswith("trait.") or name == "score":
            problems.append((("signals", name), "this name is reserved (score, trait.*)"))
        if isinstance(signal, RatioSignal):
            if signal.ratio.of not in names:
                problems.append((("signals", name, "ratio", "of"), f"unknown signal {signal.ratio.of!r}"))
            elif signal.ratio.of not in numeric or isinstance(defn.signals[signal.ratio.of], RatioSignal):
                problems.append(
                    (("signals", name, "ratio", "of"), "must name a count, gauge or active-users signal")
                )
        if isinstance(signal, TraitSignal) and signal.scope == "user" and defn.unit != "user":
            problems.append((("signals", name, "scope"), "scope: user needs unit: user"))
        if signal.singular is not None and signal.label is None:
            problems.append((("signals", name, "singular"), "needs `label` (the words after any other number)"))
        problem = _template_problem(signal.talking_point, TALKING_POINT_FIELDS)
        if problem:
            problems.append((("signals", name, "talking_point"), problem))
    for cond, loc in conditions(defn):
        if cond.signal is not None and cond.signal not in names and cond.signal != "score":
            known = ", ".join(sorted(names)) or "none defined"
            problems.append(((*loc, "signal"), f"unknown signal {cond.signal!r} (signals: {known})"))
        elif cond.signal == "score" and defn.points is None:
            problems.append(((*loc, "signal"), "`score` needs a points model"))
        elif (
            cond.op in NUMERIC_OPS
            and cond.signal in defn.signals
            and isinstance(defn.signals[cond.signal], TraitSignal)
        ):
            pass  # numeric traits (employees, seats) are compared as numbers when they are numbers
        problem = _template_problem(cond.reason)
        if problem:
            problems.append(((*loc, "reason"), problem))
    if defn.points is not None:
        for i, rule in enumerate(defn.points.rules):
            loc = ("points", "rules", i)
            if rule.signal is not None:
                if rule.signal not in names:
                    problems.append(((*loc, "signal"), f"unknown signal {rule.signal!r}"))
                elif isinstance(defn.signals[rule.signal], TraitSignal):
                    problems.append(((*loc, "signal"), "per-unit points need a numeric signal, not a trait"))
            problem = _template_problem(rule.reason)
            if problem:
                problems.append(((*loc, "reason"), problem))
    return problems
