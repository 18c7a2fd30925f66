"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback."""


class UserError(ValueError):
    """Bad input from the user (flag, YAML, device name, shape). The message says what to do."""
