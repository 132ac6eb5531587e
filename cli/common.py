"""Pieces shared by the subcommands: the command decorator and common options."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import click

from image_toolkit.data_tools.errors import DataError, ToolkitError
from image_toolkit.data_tools.names import FEATURE_FOLDER_SUFFIX, RUNTIMES, STRATEGIES, TENSORFLOW_PRECISIONS


def configure_logging(quiet: bool = False) -> None:
    """Send the toolkit's log records to stderr and keep TensorFlow's C++ logs quiet."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"Warning: {message}\n"
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "faiss", "tf2onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _one_line(message: str) -> str:
    """Click lists a missing choice's values a line each; the user gets them on the error's one line."""
    return re.sub(r"\s*\n\s*", " ", message.strip())


class OneLineErrors:
    """Show every expected error as one line on stderr, never a traceback.

    Click prints a usage error on three lines and knows nothing of the
    library's `ToolkitError`; this mixin runs Click in non-standalone mode and
    prints one `Error: ...` line with the right exit code (2 usage, 1 data).
    Unexpected exceptions are real bugs and propagate.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            click.echo(f"Error: {_one_line(error.format_message())}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"Error: {_one_line(error.format_message())}", err=True)
            sys.exit(error.exit_code)
        except ToolkitError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.Abort as error:
            # Click turns Ctrl-C into Abort; the shell's convention for SIGINT is 130.
            if isinstance(error.__context__, KeyboardInterrupt):
                _interrupted()
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            _interrupted()
        sys.exit(result if isinstance(result, int) else 0)


def _interrupted() -> None:
    click.echo("Interrupted: outputs already in place are complete; partial ones were not kept.", err=True)
    sys.exit(130)


# Old option names that mean the same option in every command that has the new one (one idea, one name).
COMMON_ALIASES = {"--n_threads": "--n-jobs"}


def _dashed(name: str) -> str:
    """The Click spelling of a long option: `--data_csv` -> `--data-csv`."""
    return name.replace("_", "-") if name.startswith("--") else name


def _takes_value(option: click.Option) -> bool:
    return not option.is_flag and not option.count and option.nargs > 0


def canonical_args(args: list[str], options: list[click.Option], aliases: dict[str, str]) -> list[str]:
    """Rewrite every accepted spelling of an option in `args` to its declared name, before Click parses.

    Options are declared with their dashed names only (what `--help` shows);
    the underscore spelling of the original scripts (`--data_csv`) and the
    old names in `aliases` (`{"--model_weights": "--model"}`, either
    spelling) are accepted here, `--opt=value` included. Values of options
    are passed through untouched, and so is everything after a bare `--`.
    Two different spellings of one option are a usage error (one spelling
    twice is left to Click: the last wins, or both count for `multiple`).
    """
    declared = {name: option for option in options for name in (*option.opts, *option.secondary_opts)}
    renamed = {_dashed(old): new for old, new in aliases.items() if new in declared}
    given: dict[int, tuple[str, str]] = {}
    result: list[str] = []
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            result.append(token)
            result.extend(tokens)
            break
        name, equals, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in declared:
            target = name
        elif name.startswith("--") and _dashed(name) in renamed:
            target = renamed[_dashed(name)]
        elif name.startswith("--") and _dashed(name) in declared:
            target = _dashed(name)
        else:
            result.append(token)  # an argument, or an unknown option that Click reports
            continue
        option = declared[target]
        first = given.setdefault(id(option), (name, _display_name(option)))
        if first[0] != name:
            raise click.UsageError(f"{first[1]} was given twice, as {first[0]} and {name}; give it once.")
        result.append(target + equals + value)
        if _takes_value(option) and not equals:
            result.extend(itertools.islice(tokens, option.nargs))
    return result


def _display_name(option: click.Option) -> str:
    return next((name for name in option.opts if name.startswith("--")), option.opts[0])


class ToolkitCommand(OneLineErrors, click.Command):
    """A command with one-line errors; used by every subcommand and by the entry scripts.

    `aliases` maps old option names to the declared ones (`{"--model_weights":
    "--model"}`); they work but are not shown by `--help`, and neither are the
    underscore spellings of the dashed names, which work everywhere
    (see `canonical_args`).
    """

    def __init__(self, *args, aliases: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.aliases = {**COMMON_ALIASES, **(aliases or {})}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        options = [param for param in self.get_params(ctx) if isinstance(param, click.Option)]
        try:
            args = canonical_args(args, options, self.aliases)
        except click.UsageError as error:
            if ctx.resilient_parsing:  # shell completion: let Click see the line as typed
                return super().parse_args(ctx, args)
            error.ctx = ctx
            raise
        return super().parse_args(ctx, args)


class CommandGroup(OneLineErrors, click.Group):
    """A nested group of subcommands (e.g. `toolkit index build`), with one-line errors."""

    command_class = ToolkitCommand


def command(name: str | None = None, *, aliases: dict[str, str] | None = None, **settings):
    """`click.command` with one-line errors, `-h` for help and the old option names as hidden `aliases`."""
    settings.setdefault("context_settings", {"help_option_names": ["-h", "--help"], "max_content_width": 100})
    return click.command(name, cls=ToolkitCommand, aliases=aliases, **settings)


def group(name: str | None = None, **settings):
    """`click.group` for a nested command group, with one-line errors and `-h`."""
    settings.setdefault("context_settings", {"help_option_names": ["-h", "--help"], "max_content_width": 100})
    return click.group(name, cls=CommandGroup, **settings)


# --quiet drops progress and the closing summary ("Wrote ...", "Best epoch ..."); what a command exists to print
# (predict's labels, search's results, index info, assess's scores, experiment's comparison) still goes to stdout.
quiet_option = click.option("--quiet", is_flag=True, help="No progress and no summary: silent on success but for the results it prints.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
class OutputFolder(click.Path):
    """An output folder: a file of that name, or a file on the way to it (FILE/sub), is a one-line usage error.

    Click checks only the path itself, so `FILE` was a usage error (exit 2)
    and `FILE/sub` a data error (exit 1) found when the first output was
    written; both are the same mistake. The folder itself is made with the
    first output (`image_toolkit.data_tools.atomic`).
    """

    def __init__(self, **kwargs):
        super().__init__(file_okay=False, **kwargs)

    def convert(self, value: str | os.PathLike, param: click.Parameter | None, ctx: click.Context | None):
        from image_toolkit.data_tools.atomic import missing_folders

        converted = super().convert(value, param, ctx)
        try:
            missing_folders(os.fsdecode(value))
        except DataError as error:
            self.fail(str(error), param, ctx)
        return converted


OUTPUT_DIR = OutputFolder()


# One option for every training command; the logs are Keras' (scalars per epoch, every metric of the progress bar).
tensorboard_option = click.option(
    "--tensorboard", default=None, metavar="DIR",
    help="Write TensorBoard logs here (needs the tensorboard extra); view with: tensorboard --logdir DIR",
)


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


class FeaturePath(click.Path):
    """A feature file, or a feature folder when the name ends in .feat: the wrong kind of path is a usage error.

    A folder given for a feature file (an image folder, an empty `X/`) is
    refused as Click refuses it for any file, so nothing but a .feat folder
    is ever read or replaced as features.
    """

    def __init__(self, **kwargs):
        super().__init__(path_type=Path, **kwargs)
        self.folder = click.Path(file_okay=False, path_type=Path, **kwargs)
        self.file = click.Path(dir_okay=False, path_type=Path, **kwargs)

    def convert(self, value: str | os.PathLike, param: click.Parameter | None, ctx: click.Context | None):
        is_folder = Path(os.fsdecode(value)).suffix.lower() == FEATURE_FOLDER_SUFFIX
        return (self.folder if is_folder else self.file).convert(value, param, ctx)


# One option for every training command (train, train-siamese, train-simclr).
strategy_option = click.option(
    "--strategy", type=click.Choice(STRATEGIES), default="default", show_default=True,
    help="mirrored: data-parallel over all GPUs; multiworker: over the machines listed in TF_CONFIG "
         "(run the same command on each; the chief writes --output-dir).",
)


def saved(summary: dict, what: str) -> str:
    """Where a training saved its model, as the worker that ran it may say it: only the chief of a cluster wrote it."""
    return f"{what} saved to {summary['model']}" if summary.get("chief", True) else f"the chief saves the {what} to {summary['model']}"


# Options of a run.json that `--config` leaves as typed (or defaulted): where this run writes, and how it runs here.
NOT_FROM_CONFIG = ("output_dir", "resume", "strategy", "tensorboard")


def config_option(name: str, *, recorded_only: tuple[str, ...] = ()):
    """`--config RUN_JSON`: the "options" of a run.json become the command's defaults, so options typed on the line win.

    Eager, so it runs before the other options are read (Click's
    `default_map`). `recorded_only` are the run.json's entries that are no
    option of the command (train-siamese's method, data, its argument, and SimCLR's options).
    """

    def read_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or ctx.resilient_parsing:
            return value
        from image_toolkit.data_tools.errors import DataError, OptionError
        from image_toolkit.data_tools.formats.json_files import read_json

        fix = f"Pass the run.json that 'toolkit {name}' or 'toolkit tune' wrote."
        options = read_json(value, dict, fix=fix).get("options")
        if not isinstance(options, dict):
            raise DataError(f"{value}: no \"options\" object; a run.json has one. {fix}")
        known = {other.name for other in ctx.command.params} - {"config", "quiet", "as_json"}
        unknown = sorted(set(options) - known - set(recorded_only))
        if unknown:
            raise OptionError(f"--config {value}: '{unknown[0]}' is not an option of 'toolkit {name}'; "
                              "remove it from \"options\" or fix its name.")
        ctx.default_map = {**(ctx.default_map or {}), **{option: setting for option, setting in options.items()
                                                         if option in known and option not in NOT_FROM_CONFIG
                                                         and setting is not None}}
        return value

    return click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None, is_eager=True,
                        expose_value=False, callback=read_config,
                        help=f"A run.json (of 'toolkit {name}', or the best of 'toolkit tune'): its options are the "
                             "defaults, options typed on the line win. Its output_dir, resume, strategy and "
                             "tensorboard are not taken.")


def _read_background(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from image_toolkit.data_tools.formats.background import background_name, parse_background

    return None if value is None else background_name(parse_background(value))


def background_option(default_help: str = "white", default: str | None = None):
    """`--background white|black|R,G,B`: the colour transparent images are composited onto, checked when parsed.

    Without a `default`, None when not given, so a command that reads a
    recorded background (a model's, a feature file's) can tell "not given"
    from "white".
    """
    return click.option("--background", default=default, callback=_read_background, metavar="white|black|R,G,B",
                        help=f"Colour that images with transparency (RGBA, LA, palette with a transparent colour) "
                             f"are composited onto before anything else (default: {default_help}).")


def runtime_options(precisions: tuple[str, ...], *, recorded: str | None = None):
    """`--runtime` and `--precision` of the commands that run a forward pass.

    `recorded` says what a command runs when `--runtime` is not given (search
    and serve: the runtime that made the index's features); without it the
    default is tensorflow. `precisions` are the ones the command accepts.
    """
    runtime = click.option(
        "--runtime", type=click.Choice(RUNTIMES), default=None if recorded else "tensorflow", show_default=not recorded,
        help='openvino: OpenVINO on the CPU, faster (pip install "image-toolkit[openvino]"); the converted model is cached'
             + (f" (default: {recorded})." if recorded else "."))
    tensorflow = " or ".join(precision for precision in TENSORFLOW_PRECISIONS if precision in precisions)
    precision = click.option(
        "--precision", type=click.Choice(precisions), default=None,
        help=f"tensorflow: {tensorflow}; openvino: fp32, bf16, or auto (default: bf16 where the CPU has it natively)"
             + (f"; default with neither option: {recorded}." if recorded else "."))

    def decorate(function):
        return runtime(precision(function))

    return decorate
