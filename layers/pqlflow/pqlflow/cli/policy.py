"""`pqlflow policy validate FILE...`: check nurture policy files; errors name the file, line and key."""

from __future__ import annotations

import argparse

from pqlflow.kernel.errors import UsageError
from pqlflow.nurture.policy import load_policy


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
    validate.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    errors: list[str] = []
    for path in args.files:
        try:
            policy = load_policy(path)
        except UsageError as exc:
            errors.append(str(exc))
            continue
        holdout = f"holdout {policy.holdout.share:.0%}" if policy.holdout.share else "no holdout"
        print(f"{path}: ok: policy {policy.name!r} v{policy.version}, {len(policy.rules)} rules, {holdout}, "
              f"caps {policy.caps.account_days:g}d/account {policy.caps.user_days:g}d/user")
    if errors:
        raise UsageError("\n".join(errors))
    return 0
