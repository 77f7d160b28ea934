"""Errors a command reports in one line (`branet` prints them and exits with status 2)."""


class CommandError(Exception):
    """Bad arguments or settings, or nothing to work on: the message says what and how to fix it."""
