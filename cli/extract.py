"""`toolkit get-inception-output` and `toolkit get-transfer-layer`: images to CNN features."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import (
    FeaturePath,
    background_option,
    command,
    echo_json,
    json_option,
    option_group,
    progress_to_stderr,
    quiet_option,
    runtime_options,
    start,
)
from image_toolkit.data_tools import names

# The options both extraction commands share.
extraction_options = option_group(
    click.argument("image_path", type=click.Path(exists=True)),
    click.argument("output_path", type=FeaturePath(writable=True)),
    click.option("--model", default="inceptionv3", show_default=True, help="inceptionv3, resnet50, pixels (the raw pixels at --image-size: the baseline), or the path of a toolkit model (best_model.h5, embedding_model.keras)."),
    click.option("--layer", default=None, help="Layer of a model file to read (default: its penultimate layer, or its output for get-inception-output)."),
    click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a local weights file."),
    click.option("--image-size", type=click.IntRange(min=8), default=None, help="Input size (default: the model's own, 299 for InceptionV3, 224 for ResNet50, 32 for pixels; CNNs need at least 32)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
    runtime_options(names.EXTRACT_PRECISIONS),
    click.option("--append", is_flag=True, help="Keep the rows already in OUTPUT_PATH and compute only the images not yet there."),
    click.option("--num-shards", type=click.IntRange(min=1), default=1, show_default=True, help="Split the images into this many shards (for a job array)..."),
    click.option("--shard-index", type=click.IntRange(min=0), default=0, show_default=True, help="...and compute shard number I (0-based); join with merge-features."),
    background_option("a model file's own, else white; recorded in the feature metadata"),
    quiet_option,
    json_option,
)


def run_extraction(output: str, image_path: str, output_path: str, model: str, layer: str | None, weights: str,
                   image_size: int | None, batch_size: int, precision: str, append: bool, num_shards: int,
                   shard_index: int, quiet: bool, as_json: bool, background: str | None = None,
                   runtime: str = "tensorflow") -> None:
    start(quiet)
    from image_toolkit.data_tools.atomic import writable_folder
    from image_toolkit.data_tools.formats.features import feature_format
    from image_toolkit.models.extraction import extract, feature_extractor
    from image_toolkit.models.runtime import progress_verbosity

    feature_format(output_path)  # An unknown suffix is refused before the model is built, not after the work.
    writable_folder(Path(output_path).absolute().parent)
    extractor = feature_extractor(model, output=output, layer=layer, weights=weights, image_size=image_size,
                                  precision=names.default_precision(runtime, precision),
                                  background=background, runtime=runtime)
    with progress_to_stderr(as_json):
        summary = extract(image_path, output_path, extractor, batch_size=batch_size, append=append,
                          num_shards=num_shards, shard_index=shard_index, verbose=progress_verbosity(quiet))
    if as_json:
        echo_json(summary)
    elif not quiet:
        click.echo(f"Wrote {summary['rows']} x {summary['dim']} features to {summary['path']} "
                   f"({summary['computed']} computed, {summary['skipped']} unreadable images skipped)")


@command("get-inception-output")
@extraction_options
def get_inception_output(**options) -> None:
    """InceptionV3's output layer (1000 ImageNet class scores) for every image.

    IMAGE_PATH is a folder (searched recursively), one image, or a CSV with
    an 'image' column; OUTPUT_PATH ends in .npz, .h5 or .pkl, or .feat for a
    feature folder (for large collections).

    \b
    Example:
      toolkit get-inception-output images/ scores.npz
    """
    run_extraction("scores", **options)


@command("get-transfer-layer")
@extraction_options
def get_transfer_layer(**options) -> None:
    """The pooled transfer layer (2048-d for InceptionV3 and ResNet50) for every image.

    IMAGE_PATH is a folder (searched recursively), one image, or a CSV with
    an 'image' column; OUTPUT_PATH ends in .npz, .h5 or .pkl, or .feat for a
    feature folder (for large collections).

    \b
    Example:
      toolkit get-transfer-layer images/ features.npz --model resnet50
      toolkit get-transfer-layer images/ features.npz --append        # only new images
      toolkit get-transfer-layer images/ part0.npz --num-shards 4 --shard-index 0
      toolkit get-transfer-layer images/ features.npz --model resnet50 --runtime openvino
    """
    run_extraction("pooled", **options)
