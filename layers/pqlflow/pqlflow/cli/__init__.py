"""The `pqlflow` command line: one subcommand per module of this package.

Each module there exposes `register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed arguments and returning an exit code. Errors a user can fix are raised as
`pqlflow.kernel.errors.UsageError` and printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from pqlflow import __version__
from pqlflow.kernel.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqlflow", description="Product-qualified leads from usage events.")
    parser.add_argument("--version", action="version", version=f"pqlflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # __main__ (python -m pqlflow.cli) is not a command
            continue
        module = importlib.import_module(f"pqlflow.cli.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"pqlflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`pqlflow ... | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 141

