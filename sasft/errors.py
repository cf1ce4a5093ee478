"""The errors a user can fix. The command line prints their message alone, in one line, without a
traceback (sasft/cli.py); any other exception is a bug and keeps its traceback."""


class SasftError(Exception):
    """A problem the user can fix, told in one line."""


class ConfigError(SasftError, ValueError):
    """A configuration value that cannot work; the message names the field."""
