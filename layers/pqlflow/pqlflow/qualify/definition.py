"""A PQL definition file: validated by the language, then checked by evaluation for what is valid but unmeant.

`load_definition(path)` / `parse_definition(text, source)` return a `Definition` (see
`pqlflow.qualify.language`) with its warnings, or raise `DefinitionError` ("x.yaml:12:
qualify.all[0].gte: expected a number, got 'abc'"). The warnings need evaluation (can a trial start
alone qualify?), which is why they live here and not in the language: the language never imports
evaluation.
"""

from __future__ import annotations

from pathlib import Path

from pqlflow.kernel.yamlfile import Loc, dotted, read_text
from pqlflow.qualify.evaluation import fires_on_trial_alone
from pqlflow.qualify.language import TRIAL_EVENTS, CountSignal, Definition, DefinitionError, read_definition


def parse_definition(text: str, source: str = "<string>") -> Definition:
    """Validate a definition's YAML text; `source` names it in errors. Raises `DefinitionError`."""
    defn, located = read_definition(text, source)
    warnings = [f"{source}:{located.line_of(loc)[0]}: {dotted(loc)}: {msg}" for loc, msg in _lint(defn)]
    return defn.model_copy(update={"warnings": warnings})


def load_definition(path: str | Path) -> Definition:
    """Read and validate a definition file. Raises `DefinitionError` (a `UsageError`)."""
    text = read_text(path, lambda problem: DefinitionError(str(path), None, "", problem))
    return parse_definition(text, str(path))


def _lint(defn: Definition) -> list[tuple[Loc, str]]:
    """Warnings: valid, but probably not what the growth team means."""
    found: list[tuple[Loc, str]] = []
    example = fires_on_trial_alone(defn)
    if example:
        where = ("qualify",) if defn.qualify is not None else ("points",)
        found.append(
            (
                where,
                f"this definition can qualify an account on {' / '.join(TRIAL_EVENTS)} alone "
                f"({example}): signing up or starting a trial is not a PQL",
            )
        )
    if defn.points is not None and defn.points.half_life_days is not None:
        for i, rule in enumerate(defn.points.rules):
            if (
                rule.signal is not None
                and rule.decay
                and not isinstance(defn.signals.get(rule.signal), CountSignal)
            ):
                found.append(
                    (
                        ("points", "rules", i, "signal"),
                        "decay applies to per-unit points on event counts only; this rule does not decay",
                    )
                )
    return found
