"""`pqlflow policy validate FILE...`: check nurture policy files; errors name the file, line and key.

Beyond the file itself, the templates and offers it names are checked against the email templates
(`--templates`, default `templates/email` when run from the repository) and the offer catalog
(`--catalog`, default `functions/offers/catalog.yaml`), so a typo fails here, not at send time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pqlflow.channels.offers.offer import load_catalog
from pqlflow.kernel.errors import UsageError
from pqlflow.nurture.policy import load_policy

DEFAULT_TEMPLATES = Path("templates/email")
DEFAULT_CATALOG = Path("functions/offers/catalog.yaml")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("policy", help="work with nurture policies (YAML)")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate",
        help="validate nurture policy files",
        description="Validate nurture policy files. Prints a one-line summary per valid file; any error "
        "names the file, line and key, and the exit status is 2.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="policy YAML file(s)")
    validate.add_argument("--templates", type=Path, metavar="DIR",
                          help=f"email templates, a folder per template (default: {DEFAULT_TEMPLATES}, "
                          "when it exists)")
    validate.add_argument("--catalog", type=Path, metavar="FILE",
                          help=f"the offer catalog (default: {DEFAULT_CATALOG}, when it exists)")
    validate.set_defaults(func=run_validate)


def _templates(folder: Path | None) -> set[str] | None:
    if folder is None:
        folder = DEFAULT_TEMPLATES
        if not folder.is_dir():
            return None
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such templates folder")
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")}


def _offers(catalog: Path | None) -> set[str] | None:
    if catalog is None:
        catalog = DEFAULT_CATALOG
        if not catalog.is_file():
            return None
    return set(load_catalog(catalog).offers)


def run_validate(args: argparse.Namespace) -> int:
    errors: list[str] = []
    templates, offers = _templates(args.templates), _offers(args.catalog)
    for path in args.files:
        try:
            policy = load_policy(path, templates=templates, offers=offers)
        except UsageError as exc:
            errors.append(str(exc))
            continue
        holdout = f"holdout {policy.holdout.share:.0%}" if policy.holdout.share else "no holdout"
        journeys = sum(1 for rule in policy.rules if len(rule.steps) > 1)
        steps = f", {journeys} with journeys" if journeys else ""
        print(f"{path}: ok: policy {policy.name!r} v{policy.version}, {len(policy.rules)} rules{steps}, "
              f"{holdout}, caps {policy.caps.account_days:g}d/account {policy.caps.user_days:g}d/user")
    if errors:
        raise UsageError("\n".join(errors))
    return 0
