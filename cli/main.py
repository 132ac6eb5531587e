"""The root `toolkit` group.

Subcommands are loaded lazily (Click's documented `LazyGroup` pattern), and
every command module imports TensorFlow inside its body only, so that
`toolkit --help` and the commands that need no network start in well under a
second.
"""

from __future__ import annotations

import importlib

import click

from image_toolkit.cli.common import OneLineErrors

# Commands in the order `toolkit --help` lists them: name -> "module.attribute".
COMMANDS = {
    "demo-data": "image_toolkit.cli.demo.demo_data",
    "train": "image_toolkit.cli.train.train",
    "tune": "image_toolkit.cli.tune.tune",
    "predict": "image_toolkit.cli.predict.predict",
    "evaluate": "image_toolkit.cli.evaluate.evaluate",
    "export": "image_toolkit.cli.export.export",
    "probe": "image_toolkit.cli.probe.probe",
    "inspect": "image_toolkit.cli.inspect.inspect",
    "make-metadata": "image_toolkit.cli.similarity.make_metadata",
    "filter-images": "image_toolkit.cli.similarity.filter_images",
    "train-siamese": "image_toolkit.cli.similarity.train_siamese",
    "train-simclr": "image_toolkit.cli.similarity.train_simclr",
    "assess": "image_toolkit.cli.similarity.assess",
    "get-inception-output": "image_toolkit.cli.extract.get_inception_output",
    "get-transfer-layer": "image_toolkit.cli.extract.get_transfer_layer",
    "compute-distances": "image_toolkit.cli.neighbors.compute_distances",
    "merge-features": "image_toolkit.cli.features.merge_features",
    "index": "image_toolkit.cli.index.index",
    "search": "image_toolkit.cli.search.search",
    "feedback": "image_toolkit.cli.feedback.feedback",
    "suggest": "image_toolkit.cli.suggest.suggest",
    "resample": "image_toolkit.cli.resample.resample",
    "experiment": "image_toolkit.cli.experiment.experiment",
    "tsne": "image_toolkit.cli.tsne.tsne",
    "serve": "image_toolkit.cli.serve.serve",
}


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
      toolkit train --backbone small_cnn --weights none --image-size 64 --epochs 10
      toolkit predict images/0000.png --model best_model.h5
    """


if __name__ == "__main__":
    toolkit(prog_name="toolkit")
