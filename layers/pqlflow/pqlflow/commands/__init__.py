"""Subcommands of the `pqlflow` CLI, one module each (see `pqlflow.cli`)."""
