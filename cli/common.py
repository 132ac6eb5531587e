"""Pieces shared by the subcommands: the command decorator and common options."""

from __future__ import annotations

import contextlib
import functools
import json
import sys

import click

from cli.main import CommandGroup, ToolkitCommand, configure_logging


def command(name: str | None = None, **settings):
    """`click.command` with one-line errors and `-h` for help."""
    settings.setdefault("context_settings", {"help_option_names": ["-h", "--help"], "max_content_width": 100})
    return click.command(name, cls=ToolkitCommand, **settings)


def group(name: str | None = None, **settings):
    """`click.group` for a nested command group, with one-line errors and `-h`."""
    settings.setdefault("context_settings", {"help_option_names": ["-h", "--help"], "max_content_width": 100})
    return click.group(name, cls=CommandGroup, **settings)


quiet_option = click.option("--quiet", is_flag=True, help="Only warnings and errors; no progress bar.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


def start(quiet: bool) -> None:
    """Set up logging for a command run."""
    configure_logging(quiet)


def option_group(*decorators):
    """Several Click options as one decorator, applied in the order given (for options commands share)."""

    def apply(function):
        return functools.reduce(lambda wrapped, decorator: decorator(wrapped), reversed(decorators), function)

    return apply


def progress_to_stderr(as_json: bool):
    """With --json, stdout carries the JSON alone, so Keras' progress bars go to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def echo_json(record: dict) -> None:
    """One JSON object per line on stdout, for scripts."""
    click.echo(json.dumps(record, default=str))
