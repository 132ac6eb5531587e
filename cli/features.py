"""`toolkit merge-features`: join the shards of a split feature extraction into one file."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import command, echo_json, json_option, quiet_option, start


@command("merge-features")
@click.argument("output_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("input_paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@quiet_option
@json_option
def merge_features(output_path: Path, input_paths: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Merge feature files (shards) into OUTPUT_PATH, in the order given.

    The shards must come from one extraction run (same model, layer, image
    size and weights). A path found in several shards is kept once, from
    the first. The output format follows OUTPUT_PATH's suffix: .npz, .h5 or .pkl.

    \b
    Example, after a job array ran with --num-shards 4 --shard-index 0..3:
      toolkit merge-features features.npz features_shard*.npz
    """
    start(quiet)
    from image_toolkit.data_tools.atomic import refuse_inputs
    from image_toolkit.data_tools.formats.features import feature_format, write_features
    from image_toolkit.data_tools.formats.features import merge_features as merge

    feature_format(output_path)
    refuse_inputs(output_path, input_paths, option="OUTPUT_PATH")
    merged = merge(list(input_paths))
    write_features(output_path, merged)
    n_images, dim = merged.features.shape
    if as_json:
        echo_json({"output": str(output_path), "inputs": len(input_paths), "images": n_images, "features": dim})
    elif not quiet:
        click.echo(f"{n_images:,} images x {dim:,} features from {len(input_paths)} files: {output_path}")
