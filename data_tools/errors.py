"""Errors a user can fix, raised by the library and turned into one line by the CLI.

The library never prints or exits: it raises one of these with a message that
names the file or option at fault and the fix. `image_toolkit.cli.common` shows the message on
one line and exits with `exit_code` (1 for data, 2 for usage, as Click does).
"""


class ToolkitError(Exception):
    """Base class of the errors a user can fix."""

    exit_code = 1


class DataError(ToolkitError):
    """A file, row or image is wrong: exit code 1."""

    exit_code = 1


class OptionError(ToolkitError):
    """An argument is impossible: exit code 2, as for a Click usage error."""

    exit_code = 2
