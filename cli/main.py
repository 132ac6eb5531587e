"""The root `toolkit` group.

Subcommands are loaded lazily (Click's documented `LazyGroup` pattern), and
every command module imports TensorFlow inside its body only, so that
`toolkit --help` and the commands that need no network start in well under a
second.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from data_tools.errors import ToolkitError

# Commands in the order `toolkit --help` lists them: name -> "module.attribute".
COMMANDS = {
    "train": "cli.train.train",
    "predict": "cli.predict.predict",
    "make-metadata": "cli.similarity.make_metadata",
    "filter-images": "cli.similarity.filter_images",
    "train-siamese": "cli.similarity.train_siamese",
    "train-simclr": "cli.similarity.train_simclr",
    "assess": "cli.similarity.assess",
    "get-inception-output": "cli.extract.get_inception_output",
    "get-transfer-layer": "cli.extract.get_transfer_layer",
    "compute-distances": "cli.neighbors.compute_distances",
    "merge-features": "cli.features.merge_features",
    "index": "cli.index.index",
    "search": "cli.search.search",
    "feedback": "cli.feedback.feedback",
    "resample": "cli.resample.resample",
    "experiment": "cli.experiment.experiment",
    "tsne": "cli.tsne.tsne",
    "serve": "cli.serve.serve",
}


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
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "faiss"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


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
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except ToolkitError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted: outputs already in place are complete; partial ones were not kept.", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


class ToolkitCommand(OneLineErrors, click.Command):
    """A command with one-line errors; used by every subcommand and by the entry scripts."""


class CommandGroup(OneLineErrors, click.Group):
    """A nested group of subcommands (e.g. `toolkit index build`), with one-line errors."""


class ToolkitGroup(OneLineErrors, click.Group):
    """The root group: lazily loaded subcommands, one-line errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.rsplit(".", 1)
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=ToolkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="image-toolkit", prog_name="toolkit")
def toolkit() -> None:
    """Train image classifiers, extract CNN features and search images by similarity.

    \b
    Example, on the demo data shipped with the toolkit:
      toolkit train --backbone small_cnn --weights none --image_size 64 --epochs 10
      toolkit predict images/0000.png --model_weights best_model.h5
    """
