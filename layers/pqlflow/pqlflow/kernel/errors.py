"""Errors a user can fix: each message names the file, line, field or value at fault."""


class UsageError(Exception):
    """Wrong input from the user (a bad file, field or value); the CLI prints it and exits 2."""
