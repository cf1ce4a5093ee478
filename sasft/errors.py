"""The errors a user can fix. The command line prints their message alone, in one line, without a
traceback (`refuse`); any other exception is a bug and keeps its traceback."""

import sys
from typing import NoReturn


class SasftError(Exception):
    """A problem the user can fix, told in one line."""


class ConfigError(SasftError, ValueError):
    """A configuration value that cannot work; the message names the field."""


def refuse(error: SasftError) -> NoReturn:
    """End the command with the user's mistake in one line, `error: ...`, and exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
