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


def install_command(extra: str) -> str:
    """The pip line of an optional extra, spelled one way in every message (double quotes: bash, zsh and cmd take them)."""
    return f'pip install "image-toolkit[{extra}]"'


def missing_extra(what: str, packages: str, extra: str, *, error: type[ToolkitError] = DataError) -> ToolkitError:
    """The one-line error of a feature whose optional packages are not installed: what needs them, and the pip line."""
    return error(f"{what} needs {packages} (not installed): {install_command(extra)}")


def require_package(module: str, what: str, packages: str, extra: str) -> None:
    """Fail in one line before any work when `module` (of an optional extra) is not installed; it is not imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise missing_extra(what, packages, extra)
